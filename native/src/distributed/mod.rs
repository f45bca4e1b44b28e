//! Data-parallel jobs: where a process sits ([`rendezvous`]), how its rank talks to the others
//! ([`tcp`]), and starting one process per GPU ([`launch`]). The averaging itself is
//! `bert_core::distributed`.

pub mod launch;
pub mod rendezvous;
pub mod tcp;
