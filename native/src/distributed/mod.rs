//! Data-parallel jobs: where a process sits ([`rendezvous`]), how its rank talks to the others
//! ([`tcp`], and [`nccl`] on GPUs with feature `cuda`), and starting one process per GPU
//! ([`launch`]), whose launchers watch each other across nodes ([`node_watch`]). The averaging itself is `bert_core::distributed`.

pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod node_watch;
pub mod rendezvous;
pub mod tcp;

use std::sync::Arc;

use anyhow::{bail, Result};
use bert_core::distributed::Collective;
use clap::ValueEnum;

use crate::backend::BackendKind;
use rendezvous::Rendezvous;

/// What carries a data-parallel job's gradient all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CollectiveKind {
    /// NCCL on the CUDA backend when every rank can load it, TCP otherwise.
    Auto,
    /// Through host memory over TCP (any backend; not GPU-fast).
    Tcp,
    /// NCCL on the GPU buffers (CUDA backend; `libnccl` at run time).
    Nccl,
}

/// This process's link to the rest of `job`. The ranks agree on NCCL (a vote over the TCP link)
/// so that they never speak different collectives.
pub fn connect(
    job: &Rendezvous,
    kind: CollectiveKind,
    backend: BackendKind,
) -> Result<Arc<dyn Collective>> {
    let wants_nccl = match (kind, backend) {
        (CollectiveKind::Tcp, _) => false,
        (CollectiveKind::Auto, backend) => backend == BackendKind::Cuda,
        (CollectiveKind::Nccl, BackendKind::Cuda) => true,
        (CollectiveKind::Nccl, other) => {
            bail!("--collective nccl needs --backend cuda (this job runs on {other})")
        }
    };
    let host = tcp::TcpCollective::connect(job)?;
    if !wants_nccl {
        return Ok(Arc::new(host));
    }
    let present = nccl_present();
    let mut ready = [f32::from(u8::from(present))];
    host.all_reduce_sum(&mut ready)?;
    let missing = job.world_size - ready[0] as usize;
    match (missing, kind) {
        (0, _) => connect_nccl(host),
        (_, CollectiveKind::Nccl) => bail!(
            "{missing} of the {} ranks cannot load NCCL{}",
            job.world_size,
            if present {
                String::new()
            } else {
                format!(", this one among them: {NCCL_MISSING}")
            }
        ),
        _ => {
            if job.rank == 0 {
                eprintln!(
                    "WARNING: {missing} of the {} ranks cannot load NCCL ({NCCL_MISSING}); \
                     the gradients are summed over TCP through the host, which is slow on GPUs",
                    job.world_size
                );
            }
            Ok(Arc::new(host))
        }
    }
}

/// What to do when `libnccl` cannot be loaded.
const NCCL_MISSING: &str = "cudarc looks for libnccl.so on the library path; a PyTorch wheel \
     has it as site-packages/nvidia/nccl/lib/libnccl.so.2: link it as libnccl.so into a folder \
     on LD_LIBRARY_PATH, or choose --collective tcp";

#[cfg(feature = "cuda")]
fn nccl_present() -> bool {
    nccl::library_present()
}

#[cfg(not(feature = "cuda"))]
fn nccl_present() -> bool {
    false
}

#[cfg(feature = "cuda")]
fn connect_nccl(host: tcp::TcpCollective) -> Result<Arc<dyn Collective>> {
    Ok(Arc::new(nccl::NcclCollective::new(host)))
}

#[cfg(not(feature = "cuda"))]
fn connect_nccl(_host: tcp::TcpCollective) -> Result<Arc<dyn Collective>> {
    bail!("this bert-native was built without the `cuda` feature (NCCL comes with it)")
}
