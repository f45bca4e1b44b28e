//! The ranks of a job connected over TCP: every rank keeps one connection to rank 0, which sums
//! the buffers in rank order and sends the result back (a star: simple, and exact to the bit on
//! every rank). It serves CPU ranks and, through the host, any backend; an NCCL collective for
//! GPUs would implement the same [`Collective`] on device buffers.
//!
//! A rank that dies closes its socket: rank 0 then fails its next exchange, exits, and with it
//! every other rank's connection, so the whole job stops instead of hanging.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bert_core::distributed::Collective;
use bert_core::error::CollectiveError;

use super::rendezvous::Rendezvous;

/// How long ranks wait for each other: to connect, and in one exchange (a slow step on another
/// rank included).
const WAIT: Duration = Duration::from_secs(1800);
/// Greeting that opens each connection, so a stray client is refused.
const HELLO: &[u8; 8] = b"bert-rs1";

/// One connection, buffered both ways.
#[derive(Debug)]
struct Link {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Link {
    fn new(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(WAIT))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
        })
    }

    fn send(&mut self, values: &[f32]) -> std::io::Result<()> {
        self.writer
            .write_all(&(values.len() as u64).to_le_bytes())?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.writer.write_all(&bytes)?;
        self.writer.flush()
    }

    fn receive(&mut self, expected: usize) -> Result<Vec<f32>, ReceiveError> {
        let mut length = [0u8; 8];
        self.reader.read_exact(&mut length)?;
        let length = u64::from_le_bytes(length) as usize;
        if length != expected {
            return Err(ReceiveError::Length(length));
        }
        let mut bytes = vec![0u8; length * 4];
        self.reader.read_exact(&mut bytes)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

enum ReceiveError {
    Io(std::io::Error),
    Length(usize),
}

impl From<std::io::Error> for ReceiveError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// This rank's end of the job's connections.
#[derive(Debug)]
pub struct TcpCollective {
    rank: usize,
    world_size: usize,
    /// Rank 0: links to ranks 1..world_size, in rank order. Other ranks: the link to rank 0.
    links: Mutex<Vec<Link>>,
}

impl TcpCollective {
    /// Connects the job: rank 0 listens on the master port, the others connect to it (retrying
    /// until it is up).
    pub fn connect(job: &Rendezvous) -> Result<Self> {
        let links = if job.rank == 0 {
            accept_all(job)?
        } else {
            vec![connect_to_root(job)?]
        };
        Ok(Self {
            rank: job.rank,
            world_size: job.world_size,
            links: Mutex::new(links),
        })
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lost(&self, rank: usize, expected: usize, error: ReceiveError) -> CollectiveError {
        match error {
            ReceiveError::Length(found) => CollectiveError::LengthMismatch { expected, found },
            ReceiveError::Io(error) => self.lost_io(rank, error),
        }
    }

    fn lost_io(&self, rank: usize, error: std::io::Error) -> CollectiveError {
        CollectiveError::PeerLost {
            rank,
            message: format!("{error} (rank {} of {})", self.rank, self.world_size),
        }
    }
}

fn accept_all(job: &Rendezvous) -> Result<Vec<Link>> {
    let listener = TcpListener::bind(("0.0.0.0", job.master_port))
        .with_context(|| format!("rank 0 cannot listen on port {}", job.master_port))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + WAIT;
    let mut links: Vec<Option<Link>> = (1..job.world_size).map(|_| None).collect();
    while links.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false)?;
                let mut link = Link::new(stream)?;
                let mut hello = [0u8; 16];
                link.reader
                    .read_exact(&mut hello)
                    .with_context(|| format!("{peer} sent no greeting"))?;
                if &hello[..8] != HELLO {
                    eprintln!(
                        "rank 0: ignoring a connection from {peer} that is not a bert-native rank"
                    );
                    continue;
                }
                let rank = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
                let world = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
                if world != job.world_size || rank == 0 || rank >= job.world_size {
                    bail!(
                        "{peer} says it is rank {rank} of {world}, but this job has {} ranks",
                        job.world_size
                    );
                }
                if links[rank - 1].replace(link).is_some() {
                    bail!("two processes claim rank {rank}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = links
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    bail!("ranks {} never connected to rank 0", missing.join(", "));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rank 0 cannot accept connections"),
        }
    }
    Ok(links.into_iter().map(|l| l.expect("all present")).collect())
}

fn connect_to_root(job: &Rendezvous) -> Result<Link> {
    let address = (job.master_addr.as_str(), job.master_port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve MASTER_ADDR {}", job.master_addr))?
        .next()
        .with_context(|| format!("MASTER_ADDR {} has no address", job.master_addr))?;
    let deadline = Instant::now() + WAIT;
    let stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("rank {} cannot reach rank 0 at {address}", job.rank))
            }
        }
    };
    let mut link = Link::new(stream)?;
    let mut hello = HELLO.to_vec();
    hello.extend((job.rank as u32).to_le_bytes());
    hello.extend((job.world_size as u32).to_le_bytes());
    link.writer.write_all(&hello)?;
    link.writer.flush()?;
    Ok(link)
}

impl Collective for TcpCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let mut links = self.links();
        if self.rank == 0 {
            for (i, link) in links.iter_mut().enumerate() {
                let theirs = link
                    .receive(values.len())
                    .map_err(|e| self.lost(i + 1, values.len(), e))?;
                values.iter_mut().zip(theirs).for_each(|(v, t)| *v += t);
            }
            for (i, link) in links.iter_mut().enumerate() {
                link.send(values).map_err(|e| self.lost_io(i + 1, e))?;
            }
        } else {
            let root = &mut links[0];
            root.send(values).map_err(|e| self.lost_io(0, e))?;
            let sum = root
                .receive(values.len())
                .map_err(|e| self.lost(0, values.len(), e))?;
            values.copy_from_slice(&sum);
        }
        Ok(())
    }

    fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let mut links = self.links();
        if self.rank == 0 {
            for (i, link) in links.iter_mut().enumerate() {
                link.send(values).map_err(|e| self.lost_io(i + 1, e))?;
            }
        } else {
            let root = links[0]
                .receive(values.len())
                .map_err(|e| self.lost(0, values.len(), e))?;
            values.copy_from_slice(&root);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_processes_worth_of_ranks_on_loopback() {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let handles: Vec<_> = (0..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let job = Rendezvous {
                        rank,
                        world_size: 3,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                    };
                    let collective = TcpCollective::connect(&job).unwrap();
                    let mut values = vec![rank as f32, 1.0];
                    collective.all_reduce_sum(&mut values).unwrap();
                    let mut root = vec![rank as f32 + 5.0];
                    collective.broadcast_from_root(&mut root).unwrap();
                    // Ranks that disagree on the length all fail (rank 0 refuses, the others lose it).
                    let mut wrong = vec![0.0; rank + 1];
                    let mismatch = collective.all_reduce_sum(&mut wrong);
                    drop(collective);
                    (values, root, mismatch.is_err())
                })
            })
            .collect();
        for handle in handles {
            let (sum, root, failed) = handle.join().unwrap();
            assert_eq!(sum, vec![3.0, 3.0]);
            assert_eq!(root, vec![5.0]);
            assert!(failed);
        }
    }
}
