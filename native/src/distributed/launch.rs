//! `bert-native launch`: starts one process per GPU on this node with the variables of
//! [`super::rendezvous`] (`torch.distributed.run`'s job), and stops them all when one fails.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::node_watch::NodeWatch;
use super::rendezvous::{DEFAULT_MASTER_PORT, DEFAULT_TIMEOUT, MAX_TIMEOUT_SECS, TIMEOUT_VAR};

/// Arguments of `launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Processes on this node (one per GPU).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index, `0..nnodes`.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Host of global rank 0 (reachable from every node).
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port rank 0 listens on (the launchers of a multi-node job meet on the next one).
    #[arg(long, default_value_t = DEFAULT_MASTER_PORT)]
    master_port: u16,
    /// Longest a rank waits for the others, in seconds: to connect, and in one exchange (a
    /// slower rank's step or checkpoint must fit; default 1800, as torch.distributed). A cut
    /// link or a lost host is noticed sooner, within about 11 s.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT_SECS))]
    collective_timeout: Option<u64>,
    /// What each process runs: a bert-native subcommand (`pretrain ...`) or any program.
    #[arg(last = true, required = true)]
    command: Vec<OsString>,
}

/// Runs `launch`.
pub fn run(args: LaunchArgs) -> Result<()> {
    if args.nproc_per_node == 0 || args.nnodes == 0 || args.node_rank >= args.nnodes {
        bail!("need --nproc-per-node >= 1, --nnodes >= 1 and --node-rank < --nnodes");
    }
    let world_size = args.nproc_per_node * args.nnodes;
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let own_subcommand = program.to_str().is_some_and(crate::cli::is_subcommand);
    // Each rank runs in its own process group, so stopping a rank stops whatever it started;
    // launch forwards Ctrl-C and SIGTERM to them.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("cannot install the signal handler")?;
    }
    let timeout = args
        .collective_timeout
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let watch = NodeWatch::start(
        args.node_rank,
        args.nnodes,
        &args.master_addr,
        args.master_port,
        timeout,
    )?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local_rank in 0..args.nproc_per_node {
        let rank = args.node_rank * args.nproc_per_node + local_rank;
        let mut command = if own_subcommand {
            let mut command =
                Command::new(std::env::current_exe().context("cannot find bert-native itself")?);
            command.arg(program);
            command
        } else {
            Command::new(program)
        };
        command
            .args(rest)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local_rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc_per_node.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", args.master_port.to_string())
            .process_group(0);
        if let Some(seconds) = args.collective_timeout {
            command.env(TIMEOUT_VAR, seconds.to_string());
        }
        match command.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(error) => {
                stop_all(&mut children);
                return Err(error)
                    .with_context(|| format!("cannot start {program:?} for rank {rank}"));
            }
        }
    }
    wait_all(children, &interrupted, &watch)
}

/// Waits for every rank; the first that fails, or the loss of another node, stops the others.
fn wait_all(
    mut children: Vec<(usize, Child)>,
    interrupted: &AtomicBool,
    watch: &NodeWatch,
) -> Result<()> {
    while !children.is_empty() {
        if interrupted.load(Ordering::Relaxed) {
            let running = children.len();
            stop_all(&mut children);
            bail!("interrupted: stopped the {running} rank(s) still running");
        }
        if let Some(lost) = watch.lost() {
            let running = children.len();
            stop_all(&mut children);
            bail!("{lost}; stopped the {running} rank(s) of this node still running");
        }
        let mut failed: Option<(usize, ExitStatus)> = None;
        let mut index = 0;
        while index < children.len() {
            let (rank, child) = &mut children[index];
            match child.try_wait().context("cannot wait for a rank")? {
                Some(status) if status.success() => {
                    children.remove(index);
                }
                Some(status) => {
                    failed = Some((*rank, status));
                    children.remove(index);
                    break;
                }
                None => index += 1,
            }
        }
        if let Some((rank, status)) = failed {
            let others = children.len();
            stop_all(&mut children);
            bail!(
                "rank {rank} failed ({status}); stopped the {others} other rank(s) still running"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Asks every child's process group to stop (SIGTERM: a training finishes its step and saves),
/// then kills those still running after a grace period.
fn stop_all(children: &mut [(usize, Child)]) {
    let signal_group = |child: &Child, signal| {
        // SAFETY: kill(2) on the process group of a child we spawned and have not reaped.
        unsafe { libc::kill(-(child.id() as libc::pid_t), signal) };
    };
    for (_, child) in children.iter() {
        signal_group(child, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for (_, child) in children.iter_mut() {
        while std::time::Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group(child, libc::SIGKILL);
        let _ = child.wait();
    }
}
