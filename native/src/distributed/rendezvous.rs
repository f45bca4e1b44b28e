//! Where this process sits in a data-parallel job, from the environment a launcher sets:
//! `torchrun`'s (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, which
//! `bert-native launch` sets too) or SLURM's (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the
//! first host of `SLURM_JOB_NODELIST` as the master), plus `BERT_COLLECTIVE_TIMEOUT` (seconds;
//! `bert-native launch --collective-timeout` sets it).

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The port rank 0 listens on when `MASTER_PORT` is not set (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// The variable that sets [`Rendezvous::timeout`], in seconds.
pub const TIMEOUT_VAR: &str = "BERT_COLLECTIVE_TIMEOUT";

/// How long ranks wait for each other unless [`TIMEOUT_VAR`] says otherwise: torch.distributed's
/// default of 30 minutes (a slow step or a checkpoint on another rank must fit in it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The longest collective timeout taken, in seconds (a year: a deadline this far stays
/// representable).
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Rank on this node: the GPU this process uses.
    pub local_rank: usize,
    /// Host of rank 0.
    pub master_addr: String,
    /// Port rank 0 listens on.
    pub master_port: u16,
    /// Longest a rank waits for the others: to connect, and for one exchange. (A cut link is
    /// noticed sooner: see `tcp.rs`.)
    pub timeout: Duration,
}

impl Rendezvous {
    /// Reads the job from `var` (the process environment in practice); `None` for a single
    /// process (no variables, or a world of 1).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|value| {
                    value
                        .trim()
                        .parse::<usize>()
                        .with_context(|| format!("{name}={value:?} is not a number"))
                })
                .transpose()
        };
        let (rank, world_size, local_rank, master_addr) =
            if let Some(world_size) = number("WORLD_SIZE")? {
                let rank = number("RANK")?.context("WORLD_SIZE is set but RANK is not")?;
                let local_rank = number("LOCAL_RANK")?.unwrap_or(0);
                let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
                (rank, world_size, local_rank, master_addr)
            } else if let Some(world_size) = number("SLURM_NTASKS")? {
                let rank = number("SLURM_PROCID")?
                    .context("SLURM_NTASKS is set but SLURM_PROCID is not")?;
                let local_rank = number("SLURM_LOCALID")?.unwrap_or(0);
                let master_addr = match var("MASTER_ADDR") {
                    Some(addr) => addr,
                    None => {
                        let nodes = var("SLURM_JOB_NODELIST")
                        .or_else(|| var("SLURM_NODELIST"))
                        .context(
                            "SLURM_NTASKS is set but neither MASTER_ADDR nor SLURM_JOB_NODELIST",
                        )?;
                        first_host(&nodes)?
                    }
                };
                (rank, world_size, local_rank, master_addr)
            } else {
                return Ok(None);
            };
        if world_size == 0 || rank >= world_size {
            bail!("rank {rank} is not within a world of {world_size} processes");
        }
        if world_size == 1 {
            return Ok(None);
        }
        let master_port = match var("MASTER_PORT") {
            Some(port) => port
                .trim()
                .parse()
                .with_context(|| format!("MASTER_PORT={port:?} is not a port number"))?,
            None => DEFAULT_MASTER_PORT,
        };
        let timeout = match number(TIMEOUT_VAR)? {
            Some(seconds) if seconds == 0 || seconds as u64 > MAX_TIMEOUT_SECS => bail!(
                "{TIMEOUT_VAR}={seconds}: the collective timeout must be 1 to {MAX_TIMEOUT_SECS} seconds"
            ),
            Some(seconds) => Duration::from_secs(seconds as u64),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            timeout,
        }))
    }

    /// [`Self::from_vars`] over the process environment.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }
}

/// The first host of a SLURM node list: `gpu-node[03-05,09],login1` gives `gpu-node03`.
pub fn first_host(nodes: &str) -> Result<String> {
    let nodes = nodes.trim();
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0i32;
    let end = nodes
        .char_indices()
        .find(|&(_, c)| {
            depth += match c {
                '[' => 1,
                ']' => -1,
                _ => 0,
            };
            c == ',' && depth == 0
        })
        .map_or(nodes.len(), |(i, _)| i);
    let first = &nodes[..end];
    let Some(open) = first.find('[') else {
        if first.is_empty() {
            bail!("empty SLURM node list");
        }
        return Ok(first.to_string());
    };
    let close = first[open..]
        .find(']')
        .map(|i| open + i)
        .with_context(|| format!("unbalanced brackets in SLURM node list {nodes:?}"))?;
    let first_range = first[open + 1..close].split(',').next().unwrap_or_default();
    let first_number = first_range.split('-').next().unwrap_or_default();
    if first_number.is_empty() {
        bail!("cannot read SLURM node list {nodes:?}");
    }
    Ok(format!(
        "{}{}{}",
        &first[..open],
        first_number,
        &first[close + 1..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn torchrun_variables() {
        let job = Rendezvous::from_vars(env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            job,
            Rendezvous {
                rank: 3,
                world_size: 8,
                local_rank: 1,
                master_addr: "10.0.0.2".into(),
                master_port: 1234,
                timeout: DEFAULT_TIMEOUT,
            }
        );
        let job = Rendezvous::from_vars(env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            (TIMEOUT_VAR, "90"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(job.timeout, Duration::from_secs(90));
        for bad in ["0", "soon", "99999999999999"] {
            let error = Rendezvous::from_vars(env(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                (TIMEOUT_VAR, bad),
            ]))
            .unwrap_err();
            assert!(error.to_string().contains(TIMEOUT_VAR), "{error}");
        }
    }

    #[test]
    fn slurm_variables_and_node_lists() {
        let job = Rendezvous::from_vars(env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "dgx[007-008]"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((job.rank, job.world_size, job.local_rank), (9, 16, 1));
        assert_eq!(job.master_addr, "dgx007");
        assert_eq!(job.master_port, DEFAULT_MASTER_PORT);
        assert_eq!(first_host("a1,b2").unwrap(), "a1");
        assert_eq!(first_host("gpu-[3,5-6],cpu1").unwrap(), "gpu-3");
        assert_eq!(first_host("rack2-[10-12]-ib").unwrap(), "rack2-10-ib");
    }

    #[test]
    fn single_process_and_bad_values() {
        assert_eq!(Rendezvous::from_vars(env(&[])).unwrap(), None);
        assert_eq!(
            Rendezvous::from_vars(env(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap(),
            None
        );
        let error = Rendezvous::from_vars(env(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(error.to_string().contains("rank 2"), "{error}");
        let error = Rendezvous::from_vars(env(&[("WORLD_SIZE", "two")])).unwrap_err();
        assert!(error.to_string().contains("WORLD_SIZE"), "{error}");
        assert!(first_host("n[1-2").is_err());
    }
}
