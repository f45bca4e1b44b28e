//! Data-parallel jobs: where a process sits ([`rendezvous`]), how its rank talks to the others
//! ([`tcp`], and [`nccl`] on GPUs with feature `cuda`), and starting one process per GPU
//! ([`launch`]). The averaging itself is
//! `bert_core::distributed`.

pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
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
    /// NCCL on the CUDA backend, TCP otherwise.
    Auto,
    /// Through host memory over TCP (any backend; not GPU-fast).
    Tcp,
    /// NCCL on the GPU buffers (CUDA backend; `libnccl` at run time).
    Nccl,
}

/// This process's link to the rest of `job`.
pub fn connect(
    job: &Rendezvous,
    kind: CollectiveKind,
    backend: BackendKind,
) -> Result<Arc<dyn Collective>> {
    let nccl = match (kind, backend) {
        (CollectiveKind::Tcp, _) => false,
        (CollectiveKind::Auto, backend) => backend == BackendKind::Cuda,
        (CollectiveKind::Nccl, BackendKind::Cuda) => true,
        (CollectiveKind::Nccl, other) => {
            bail!("--collective nccl needs --backend cuda (this job runs on {other})")
        }
    };
    let host = tcp::TcpCollective::connect(job)?;
    if nccl {
        return connect_nccl(host);
    }
    Ok(Arc::new(host))
}

#[cfg(feature = "cuda")]
fn connect_nccl(host: tcp::TcpCollective) -> Result<Arc<dyn Collective>> {
    Ok(Arc::new(nccl::NcclCollective::new(host)?))
}

#[cfg(not(feature = "cuda"))]
fn connect_nccl(_host: tcp::TcpCollective) -> Result<Arc<dyn Collective>> {
    bail!("this bert-native was built without the `cuda` feature (NCCL comes with it)")
}
