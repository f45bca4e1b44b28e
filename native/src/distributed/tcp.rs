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

/// How long a new connection has to greet rank 0 before it is dropped as a stranger.
const GREETING_TIMEOUT: Duration = Duration::from_secs(5);

/// What a connection to rank 0 says first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// A bert-native rank: which one, of how many.
    Rank {
        /// The rank it says it is.
        rank: usize,
        /// The job's size as it sees it.
        world_size: usize,
    },
    /// Anything else: a stray client, a port scanner.
    Stranger,
}

/// Reads the 16-byte greeting that opens a connection: [`HELLO`], then the rank and the world
/// size as little-endian `u32`s.
pub fn read_greeting(reader: &mut impl Read) -> std::io::Result<Greeting> {
    let mut hello = [0u8; 16];
    reader.read_exact(&mut hello)?;
    if &hello[..8] != HELLO {
        return Ok(Greeting::Stranger);
    }
    let word =
        |at: usize| u32::from_le_bytes(hello[at..at + 4].try_into().expect("4 bytes")) as usize;
    Ok(Greeting::Rank {
        rank: word(8),
        world_size: word(12),
    })
}

/// Reads one message of `expected` values sent as `wire`: an 8-byte header (the length, and the
/// wire in the low bit), then the values. The header is checked against `expected` and `wire`
/// before anything is sized by it.
pub fn read_message(
    reader: &mut impl Read,
    expected: usize,
    wire: Wire,
) -> Result<Vec<f32>, ReceiveError> {
    let mut header = [0u8; 8];
    reader.read_exact(&mut header)?;
    let header = u64::from_le_bytes(header);
    if header & 1 != wire.header(0) {
        return Err(ReceiveError::Wire);
    }
    let length = usize::try_from(header >> 1).unwrap_or(usize::MAX);
    if length != expected {
        return Err(ReceiveError::Length(length));
    }
    let mut bytes = vec![0u8; length * wire.bytes_per_value()];
    reader.read_exact(&mut bytes)?;
    Ok(wire.decode(&bytes))
}

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
        read_message(&mut self.reader, expected, wire)
    }
}

/// How the values of one exchange travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Four bytes a value.
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

/// Why a message could not be read.
#[derive(Debug)]
pub enum ReceiveError {
    /// The connection failed or closed.
    Io(std::io::Error),
    /// The message holds this many values, not the number expected.
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
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let missing: Vec<String> = links
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_none())
                .map(|(i, _)| (i + 1).to_string())
                .collect();
            bail!("ranks {} never connected to rank 0", missing.join(", "));
        }
        match listener.accept() {
            Ok((mut stream, peer)) => {
                // A stranger (a port scanner, a client that never speaks) is dropped, not fatal:
                // it has a few seconds to greet, and the job goes on waiting for its ranks.
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(GREETING_TIMEOUT.min(left)))?;
                let (rank, world) = match read_greeting(&mut stream) {
                    Ok(Greeting::Rank { rank, world_size }) => (rank, world_size),
                    Ok(Greeting::Stranger) => {
                        eprintln!(
                            "rank 0: ignoring a connection from {peer} that is not a bert-native rank"
                        );
                        continue;
                    }
                    Err(e) => {
                        eprintln!(
                            "rank 0: ignoring a connection from {peer} that sent no greeting ({e})"
                        );
                        continue;
                    }
                };
                let link = Link::new(stream, job.timeout)?;
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

    /// Connections that are not ranks (one that closes at once, one that speaks HTTP, one that
    /// never speaks) are dropped while rank 0 waits for its ranks; the job still connects.
    #[test]
    fn strangers_on_the_master_port_are_ignored() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let job = move |rank| Rendezvous {
            rank,
            world_size: 2,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            timeout: Duration::from_secs(60),
        };
        let root = std::thread::spawn(move || TcpCollective::connect(&job(0)));
        let connect = || loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
                break stream;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(connect());
        connect().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let _silent = connect();
        let rank_1 = TcpCollective::connect(&job(1)).unwrap();
        let root = root.join().unwrap().unwrap();
        let sums = std::thread::spawn(move || {
            let mut values = vec![2.0];
            rank_1.all_reduce_sum(&mut values).map(|()| values)
        });
        let mut values = vec![1.0];
        root.all_reduce_sum(&mut values).unwrap();
        assert_eq!(values, vec![3.0]);
        assert_eq!(sums.join().unwrap().unwrap(), vec![3.0]);
    }

    #[test]
    fn messages_are_checked_before_they_size_a_buffer() {
        let header = |length: u64, wire: Wire| wire.header(0) | (length << 1);
        let mut huge = header(u64::MAX >> 1, Wire::Float32).to_le_bytes().to_vec();
        huge.extend([0; 16]);
        assert!(matches!(
            read_message(&mut &huge[..], 4, Wire::Float32),
            Err(ReceiveError::Length(_))
        ));
        let mut half = header(2, Wire::Float16).to_le_bytes().to_vec();
        half.extend(Wire::Float16.encode(&[1.5, -2.0]));
        assert!(matches!(
            read_message(&mut &half[..], 2, Wire::Float32),
            Err(ReceiveError::Wire)
        ));
        assert_eq!(
            read_message(&mut &half[..], 2, Wire::Float16).unwrap(),
            vec![1.5, -2.0]
        );
        assert!(matches!(
            read_message(&mut &half[..half.len() - 1], 2, Wire::Float16),
            Err(ReceiveError::Io(_))
        ));
        let mut hello = HELLO.to_vec();
        hello.extend(3u32.to_le_bytes());
        hello.extend(4u32.to_le_bytes());
        assert_eq!(
            read_greeting(&mut &hello[..]).unwrap(),
            Greeting::Rank {
                rank: 3,
                world_size: 4
            }
        );
        assert_eq!(
            read_greeting(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).unwrap(),
            Greeting::Stranger
        );
        assert!(read_greeting(&mut &hello[..15]).is_err());
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
