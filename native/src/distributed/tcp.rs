//! The ranks of a job connected over TCP: every rank keeps one connection to rank 0, which sums
//! the buffers in rank order and sends the result back (a star: simple, and exact to the bit on
//! every rank). It serves CPU ranks and, through the host, any backend; on GPUs it carries the
//! control traffic beside NCCL (`nccl.rs`). Float16 all-reduces send two bytes per value.
//!
//! A rank that dies closes its socket: rank 0 then fails its next exchange, exits, and with it
//! every other rank's connection, so the whole job stops instead of hanging. A link cut between
//! hosts closes nothing: the kernel notices it on a quiet link (keep-alive probes, [`LIVENESS`]),
//! and the launchers notice it on theirs (`node_watch.rs`), in seconds, while a peer that is only
//! slow (a long step, a checkpoint) still answers and is waited for up to the job's
//! [`Rendezvous::timeout`].

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bert_core::distributed::{round_to_half, Collective};
use bert_core::error::CollectiveError;
use half::f16;
use half::slice::HalfFloatSliceExt;

use super::rendezvous::{Rendezvous, TIMEOUT_VAR};

/// How a cut link is noticed: after `idle` without traffic the kernel probes the peer every
/// `interval`, and breaks the link after `probes` unanswered ones (about 11 s). A live peer's
/// kernel answers, however busy the process. (A limit on unacknowledged data, `TCP_USER_TIMEOUT`,
/// would also catch a cut mid-transfer, but it breaks links to peers that are only slow to read:
/// see the `a_slow_peer_is_waited_for_not_declared_lost` test. The launchers' quiet links catch
/// that case.)
pub(super) const LIVENESS: Liveness = Liveness {
    idle: Duration::from_secs(5),
    interval: Duration::from_secs(2),
    probes: 3,
};

/// See [`LIVENESS`].
pub(super) struct Liveness {
    idle: Duration,
    interval: Duration,
    probes: u32,
}

impl Liveness {
    /// Sets the socket options (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`)
    /// on `stream`.
    pub(super) fn apply(&self, stream: &TcpStream) -> std::io::Result<()> {
        let options = [
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
            (
                libc::IPPROTO_TCP,
                libc::TCP_KEEPIDLE,
                self.idle.as_secs() as libc::c_int,
            ),
            (
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                self.interval.as_secs() as libc::c_int,
            ),
            (
                libc::IPPROTO_TCP,
                libc::TCP_KEEPCNT,
                self.probes as libc::c_int,
            ),
        ];
        for (level, name, value) in options {
            // SAFETY: setsockopt(2) on a socket this stream owns, with a c_int value of the size
            // passed.
            let result = unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if result != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}
/// Greeting that opens each connection, so a stray client is refused.
const HELLO: &[u8; 8] = b"bert-rs1";

/// One connection, buffered both ways.
#[derive(Debug)]
struct Link {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Link {
    fn new(stream: TcpStream, timeout: Duration) -> Result<Self> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        LIVENESS
            .apply(&stream)
            .context("cannot set the link's keep-alive options")?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
        })
    }

    fn send(&mut self, values: &[f32], wire: Wire) -> std::io::Result<()> {
        self.writer
            .write_all(&wire.header(values.len()).to_le_bytes())?;
        self.writer.write_all(&wire.encode(values))?;
        self.writer.flush()
    }

    fn receive(&mut self, expected: usize, wire: Wire) -> Result<Vec<f32>, ReceiveError> {
        let mut header = [0u8; 8];
        self.reader.read_exact(&mut header)?;
        let header = u64::from_le_bytes(header);
        if header & 1 != wire.header(0) {
            return Err(ReceiveError::Wire);
        }
        let length = (header >> 1) as usize;
        if length != expected {
            return Err(ReceiveError::Length(length));
        }
        let mut bytes = vec![0u8; length * wire.bytes_per_value()];
        self.reader.read_exact(&mut bytes)?;
        Ok(wire.decode(&bytes))
    }
}

/// How the values of one exchange travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Float32,
    /// Half the bytes: the values are float16 (`all_reduce_sum_half`).
    Float16,
}

impl Wire {
    /// The header of a message of `length` values: the length, and the wire in the low bit.
    fn header(self, length: usize) -> u64 {
        ((length as u64) << 1) | u64::from(self == Wire::Float16)
    }

    fn bytes_per_value(self) -> usize {
        match self {
            Wire::Float32 => 4,
            Wire::Float16 => 2,
        }
    }

    /// The values as bytes; float16 rounds them (in bulk, vectorised where the CPU can).
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Wire::Float32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Wire::Float16 => {
                let mut halves = vec![f16::ZERO; values.len()];
                halves.convert_from_f32_slice(values);
                halves.iter().flat_map(|h| h.to_le_bytes()).collect()
            }
        }
    }

    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Wire::Float32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Wire::Float16 => {
                let halves: Vec<f16> = bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                let mut values = vec![0.0; halves.len()];
                halves.convert_to_f32_slice(&mut values);
                values
            }
        }
    }
}

enum ReceiveError {
    Io(std::io::Error),
    Length(usize),
    /// The other rank sent float32 where float16 was expected, or the reverse.
    Wire,
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
    /// The job's collective timeout (for messages).
    timeout: Duration,
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
            timeout: job.timeout,
        })
    }

    /// Sums `values` over the ranks through rank 0, in rank order, sent as `wire`. In float16
    /// every rank ends with the same float16 sum of float16 contributions: the others' values are
    /// rounded on the wire, rank 0 rounds its own and the sum it keeps.
    fn all_reduce(&self, values: &mut [f32], wire: Wire) -> Result<(), CollectiveError> {
        let mut links = self.links();
        if self.rank == 0 {
            if wire == Wire::Float16 {
                round_to_half(values);
            }
            for (i, link) in links.iter_mut().enumerate() {
                let theirs = link
                    .receive(values.len(), wire)
                    .map_err(|e| self.lost(i + 1, values.len(), e))?;
                values.iter_mut().zip(theirs).for_each(|(v, t)| *v += t);
            }
            if wire == Wire::Float16 {
                round_to_half(values);
            }
            for (i, link) in links.iter_mut().enumerate() {
                link.send(values, wire)
                    .map_err(|e| self.lost_io(i + 1, e))?;
            }
        } else {
            let root = &mut links[0];
            root.send(values, wire).map_err(|e| self.lost_io(0, e))?;
            let sum = root
                .receive(values.len(), wire)
                .map_err(|e| self.lost(0, values.len(), e))?;
            values.copy_from_slice(&sum);
        }
        Ok(())
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lost(&self, rank: usize, expected: usize, error: ReceiveError) -> CollectiveError {
        match error {
            ReceiveError::Length(found) => CollectiveError::LengthMismatch { expected, found },
            ReceiveError::Wire => CollectiveError::PrecisionMismatch,
            ReceiveError::Io(error) => self.lost_io(rank, error),
        }
    }

    fn lost_io(&self, rank: usize, error: std::io::Error) -> CollectiveError {
        let what = match error.kind() {
            // The socket's own timeout: the peer is up but neither sent nor read.
            std::io::ErrorKind::WouldBlock => format!(
                "no exchange for {} s, the collective timeout (raise it with launch \
                 --collective-timeout or {TIMEOUT_VAR} for longer steps)",
                self.timeout.as_secs()
            ),
            // The kernel's probes went unanswered: the host or the link is gone.
            std::io::ErrorKind::TimedOut => {
                format!("its host stopped answering: the link is cut or the host is down ({error})")
            }
            _ => error.to_string(),
        };
        CollectiveError::PeerLost {
            rank,
            message: format!("{what} (seen by rank {} of {})", self.rank, self.world_size),
        }
    }
}

fn accept_all(job: &Rendezvous) -> Result<Vec<Link>> {
    let listener = TcpListener::bind(("0.0.0.0", job.master_port))
        .with_context(|| format!("rank 0 cannot listen on port {}", job.master_port))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + job.timeout;
    let mut links: Vec<Option<Link>> = (1..job.world_size).map(|_| None).collect();
    while links.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false)?;
                let mut link = Link::new(stream, job.timeout)?;
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
    let deadline = Instant::now() + job.timeout;
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
    let mut link = Link::new(stream, job.timeout)?;
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
        self.all_reduce(values, Wire::Float32)
    }

    fn all_reduce_sum_half(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce(values, Wire::Float16)
    }

    fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let mut links = self.links();
        if self.rank == 0 {
            for (i, link) in links.iter_mut().enumerate() {
                link.send(values, Wire::Float32)
                    .map_err(|e| self.lost_io(i + 1, e))?;
            }
        } else {
            let root = links[0]
                .receive(values.len(), Wire::Float32)
                .map_err(|e| self.lost(0, values.len(), e))?;
            values.copy_from_slice(&root);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranks 0..world_size of a loopback job, each running `work` on its own thread.
    fn on_loopback<T: Send + 'static>(
        world_size: usize,
        work: impl Fn(TcpCollective) -> T + Send + Sync + Copy + 'static,
    ) -> Vec<T> {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let handles: Vec<_> = (0..world_size)
            .map(|rank| {
                std::thread::spawn(move || {
                    let job = Rendezvous {
                        rank,
                        world_size,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        timeout: crate::distributed::rendezvous::DEFAULT_TIMEOUT,
                    };
                    work(TcpCollective::connect(&job).unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn half_precision_sums_travel_as_float16() {
        let contributions = |rank: usize| vec![1.0001 + rank as f32, 1000.3 * (rank + 1) as f32];
        let results = on_loopback(3, move |collective| {
            let mut values = contributions(collective.rank());
            collective.all_reduce_sum_half(&mut values).unwrap();
            // A rank in float32 against the others in float16 is refused, not misread.
            let mut mixed = vec![1.0; 4];
            let mismatch = if collective.rank() == 1 {
                collective.all_reduce_sum(&mut mixed)
            } else {
                collective.all_reduce_sum_half(&mut mixed)
            };
            drop(collective);
            (values, mismatch)
        });
        let half = |v: f32| f16::from_f32(v).to_f32();
        let expected: Vec<f32> = (0..2)
            .map(|i| half((0..3).map(|rank| half(contributions(rank)[i])).sum()))
            .collect();
        for (values, mismatch) in &results {
            assert_eq!(values, &expected);
            assert!(mismatch.is_err());
        }
        assert_eq!(results[0].1, Err(CollectiveError::PrecisionMismatch));
        assert_eq!(
            Wire::Float16.encode(&[1.0; 8]).len(),
            16,
            "two bytes a value"
        );
    }

    /// The dead-link detection never fires on a live peer that is only slow: rank 1 sends
    /// 64 MB (more than the sockets buffer, so its send stalls on a full window) while rank 0
    /// takes 25 s to start reading (`TCP_USER_TIMEOUT` at 20 s broke this link).
    #[test]
    fn a_slow_peer_is_waited_for_not_declared_lost() {
        const VALUES: usize = 16 << 20;
        let results = on_loopback(2, |collective| {
            if collective.rank() == 0 {
                std::thread::sleep(Duration::from_secs(25));
            }
            let mut values = vec![1.0f32 + collective.rank() as f32; VALUES];
            collective.all_reduce_sum(&mut values).map(|()| values)
        });
        for result in results {
            let values = result.unwrap();
            assert!(values.iter().all(|&v| v == 3.0));
        }
    }

    #[test]
    fn three_processes_worth_of_ranks_on_loopback() {
        let results = on_loopback(3, |collective| {
            let rank = collective.rank();
            let mut values = vec![rank as f32, 1.0];
            collective.all_reduce_sum(&mut values).unwrap();
            let mut root = vec![rank as f32 + 5.0];
            collective.broadcast_from_root(&mut root).unwrap();
            // Ranks that disagree on the length all fail (rank 0 refuses, the others lose it).
            let mut wrong = vec![0.0; rank + 1];
            let mismatch = collective.all_reduce_sum(&mut wrong);
            drop(collective);
            (values, root, mismatch.is_err())
        });
        for (sum, root, failed) in results {
            assert_eq!(sum, vec![3.0, 3.0]);
            assert_eq!(root, vec![5.0]);
            assert!(failed);
        }
    }
}
