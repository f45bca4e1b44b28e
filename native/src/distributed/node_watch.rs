//! The launchers of a multi-node job watch each other: every other node's launcher keeps one
//! quiet TCP connection to node 0's, on `MASTER_PORT + 1`, probed by the kernel's keep-alive
//! ([`super::tcp::LIVENESS`]). Nothing is sent on it, so a slow node never trips it; a cut link
//! or a lost host breaks it within about 11 s, and the launcher that sees it stops its ranks,
//! naming the node, instead of leaving them blocked until the collective timeout (a rank sending
//! when the link went may not notice sooner by itself). A launcher that ends closes its
//! connection cleanly: that is not a loss (its ranks finished, or their failure reaches the
//! others through their own links).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::tcp::LIVENESS;

/// Greeting of a launcher's connection: this tag and the node's index.
const HELLO: &[u8; 8] = b"bert-nw1";

/// What this launcher knows of the other nodes.
#[derive(Clone, Default)]
pub struct NodeWatch {
    lost: Arc<Mutex<Option<String>>>,
}

impl NodeWatch {
    /// Starts watching in the background: node 0 waits for the `nodes - 1` others on
    /// `master_port + 1`, the others connect to it (retrying for up to `timeout`). With one node
    /// there is nothing to watch.
    pub fn start(
        node_rank: usize,
        nodes: usize,
        master_addr: &str,
        master_port: u16,
        timeout: Duration,
    ) -> Result<Self> {
        let watch = Self::default();
        if nodes < 2 {
            return Ok(watch);
        }
        let port = master_port
            .checked_add(1)
            .context("--master-port must leave room for the launchers' port above it")?;
        if node_rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", port))
                .with_context(|| format!("node 0's launcher cannot listen on port {port}"))?;
            let watch = watch.clone();
            std::thread::spawn(move || {
                // Followed until every other node has greeted; strays and failed accepts do not
                // use up a place.
                let (greeted, wanted) = (Arc::new(AtomicUsize::new(0)), nodes - 1);
                while greeted.load(Ordering::Relaxed) < wanted {
                    let Ok((stream, _)) = listener.accept() else {
                        continue;
                    };
                    let (watch, greeted) = (watch.clone(), Arc::clone(&greeted));
                    std::thread::spawn(move || watch.follow_node(stream, nodes, &greeted));
                }
            });
        } else {
            let address = (master_addr, port)
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve MASTER_ADDR {master_addr}"))?
                .next()
                .with_context(|| format!("MASTER_ADDR {master_addr} has no address"))?;
            let watch = watch.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + timeout;
                while Instant::now() < deadline {
                    if let Ok(mut stream) =
                        TcpStream::connect_timeout(&address, Duration::from_secs(5))
                    {
                        let mut hello = HELLO.to_vec();
                        hello.extend((node_rank as u32).to_le_bytes());
                        match stream.write_all(&hello) {
                            Ok(()) => watch.watch(stream, "node 0 (the master)".into()),
                            Err(error) => {
                                eprintln!(
                                    "WARNING: node {node_rank} is not watching node 0: {error}"
                                )
                            }
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                eprintln!(
                    "WARNING: node 0's launcher never answered on {address}: node {node_rank} is \
                     not watching it (a cut link is then noticed only by the collective)"
                );
            });
        }
        Ok(watch)
    }

    /// A node that could not be heard from, with what happened: `None` while all are there.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Node 0's side of one connection: a greeting naming one of the `nodes` (within 10 s,
    /// else the connection is a stray and dropped) counts in `greeted`, then it is watched.
    fn follow_node(&self, mut stream: TcpStream, nodes: usize, greeted: &AtomicUsize) {
        let mut hello = [0u8; 12];
        let greeting = stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .and_then(|()| stream.read_exact(&mut hello))
            .and_then(|()| stream.set_read_timeout(None));
        let node = u32::from_le_bytes(hello[8..].try_into().expect("4 bytes")) as usize;
        if greeting.is_err() || &hello[..8] != HELLO || node == 0 || node >= nodes {
            return;
        }
        greeted.fetch_add(1, Ordering::Relaxed);
        self.watch(stream, format!("node {node}"));
    }

    /// Blocks until the connection to `peer` ends: cleanly (its launcher finished; nothing to
    /// do) or broken (the link or the host is gone: recorded).
    fn watch(&self, mut stream: TcpStream, peer: String) {
        if let Err(error) = LIVENESS.apply(&stream) {
            eprintln!("WARNING: cannot watch {peer}: {error}");
            return;
        }
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                        "lost {peer}: its host stopped answering, the link is cut or the host \
                         is down ({error})"
                    ));
                    return;
                }
            }
        }
    }
}
