//! Data parallelism as the recipe runs it: every rank holds the same model, trains on its own
//! micro-batches, and after gradient accumulation the ranks average their gradients with one
//! all-reduce per optimizer step (`--allreduce_post_accumulation`), so all take the same step.
//! Parameters are broadcast from rank 0 before training.
//!
//! The ranks talk through a [`Collective`]: sums and broadcasts of float buffers. [`LocalGroup`]
//! connects ranks that are threads of one process; `bert-native` adds one over TCP for processes
//! and nodes. The averaging, the half-precision option and the broadcast of a model live here, once.

use std::fmt::Debug;
use std::sync::{Arc, Barrier, Mutex};

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::error::CollectiveError;
use crate::optim::params::with_value;
use crate::optim::NamedParam;

/// Sums and broadcasts of equal-length buffers among the ranks of a job.
pub trait Collective: Send + Sync + Debug {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn world_size(&self) -> usize;
    /// Replaces `values` on every rank by the element-wise sum over ranks, summed in rank order
    /// (so every rank gets bit-identical results).
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError>;
    /// Replaces `values` on every rank by rank 0's.
    fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError>;
}

/// A trainer's link to the other ranks.
#[derive(Debug, Clone)]
pub struct DataParallel {
    /// The ranks' collective.
    pub collective: Arc<dyn Collective>,
    /// Round gradients to float16 before the all-reduce, as the reference's
    /// `--allreduce_post_accumulation_fp16` does (its numerics: the host collectives here still
    /// send float32).
    pub reduce_in_half: bool,
}

impl DataParallel {
    /// Averages the gradients of `params` and the `losses` over the ranks, in one all-reduce.
    pub fn average<B: Backend>(
        &self,
        params: &mut [NamedParam<B>],
        losses: &mut [Tensor<B, 1>],
    ) -> Result<(), CollectiveError> {
        let world_size = self.collective.world_size();
        if world_size == 1 {
            return Ok(());
        }
        let Some(device) = params
            .first()
            .map(|p| p.grad.device())
            .or_else(|| losses.first().map(|l| l.device()))
        else {
            return Ok(());
        };
        let lengths: Vec<usize> = params
            .iter()
            .map(|p| p.grad.dims()[0])
            .chain(losses.iter().map(|_| 1))
            .collect();
        let pieces: Vec<Tensor<B, 1>> = params
            .iter()
            .map(|p| p.grad.clone())
            .chain(losses.iter().cloned())
            .collect();
        let mut values = read_f32(Tensor::cat(pieces, 0))?;
        if self.reduce_in_half {
            values
                .iter_mut()
                .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
        }
        self.collective.all_reduce_sum(&mut values)?;
        let scale = 1.0 / world_size as f32;
        values.iter_mut().for_each(|v| *v *= scale);
        let total = values.len();
        let averaged = Tensor::<B, 1>::from_data(TensorData::new(values, [total]), &device);
        let mut offset = 0;
        let mut slices = lengths.into_iter().map(|length| {
            let slice = averaged.clone().narrow(0, offset, length);
            offset += length;
            slice
        });
        for param in params.iter_mut() {
            param.grad = slices.next().expect("one slice per gradient");
        }
        for loss in losses.iter_mut() {
            *loss = slices.next().expect("one slice per loss");
        }
        Ok(())
    }

    /// `module` with every float parameter replaced by rank 0's.
    pub fn broadcast_module<AB: AutodiffBackend, M: AutodiffModule<AB>>(
        &self,
        module: M,
    ) -> Result<M, CollectiveError> {
        if self.collective.world_size() == 1 {
            return Ok(module);
        }
        let mut broadcast = Broadcast::<AB> {
            collective: self.collective.as_ref(),
            error: None,
            _backend: std::marker::PhantomData,
        };
        let module = module.map(&mut broadcast);
        match broadcast.error {
            Some(error) => Err(error),
            None => Ok(module),
        }
    }
}

/// Reads a float tensor back as `f32`s.
fn read_f32<B: Backend>(tensor: Tensor<B, 1>) -> Result<Vec<f32>, CollectiveError> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| CollectiveError::Device(format!("{e:?}")))
}

struct Broadcast<'a, AB: AutodiffBackend> {
    collective: &'a dyn Collective,
    error: Option<CollectiveError>,
    _backend: std::marker::PhantomData<AB>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Broadcast<'_, AB> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        if self.error.is_some() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let shape = tensor.dims();
        let device = tensor.device();
        let numel: usize = shape.iter().product();
        let result = read_f32(tensor.clone().inner().reshape([numel])).and_then(|mut values| {
            self.collective.broadcast_from_root(&mut values)?;
            Ok(values)
        });
        let tensor = match result {
            Ok(values) => {
                let inner = Tensor::<AB::InnerBackend, 1>::from_data(
                    TensorData::new(values, [numel]),
                    &device,
                );
                with_value(&tensor, inner.reshape(shape))
            }
            Err(error) => {
                self.error = Some(error);
                tensor
            }
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Ranks that are threads of one process: [`LocalGroup::ranks`] hands out one [`Collective`]
/// per thread.
#[derive(Debug)]
pub struct LocalGroup {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
    world_size: usize,
}

/// One thread's end of a [`LocalGroup`].
#[derive(Debug, Clone)]
pub struct LocalRank {
    group: Arc<LocalGroup>,
    rank: usize,
}

impl LocalGroup {
    /// `world_size` connected ranks.
    pub fn ranks(world_size: usize) -> Vec<LocalRank> {
        let group = Arc::new(LocalGroup {
            slots: Mutex::new(vec![Vec::new(); world_size]),
            barrier: Barrier::new(world_size),
            world_size,
        });
        (0..world_size)
            .map(|rank| LocalRank {
                group: Arc::clone(&group),
                rank,
            })
            .collect()
    }
}

impl LocalRank {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        // A rank that panicked while holding the lock leaves the buffers as they were.
        self.group
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collective for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.group.world_size
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.slots()[self.rank] = values.to_vec();
        self.group.barrier.wait();
        {
            let slots = self.slots();
            if let Some(other) = slots.iter().find(|s| s.len() != values.len()) {
                let found = other.len();
                drop(slots);
                self.group.barrier.wait();
                return Err(CollectiveError::LengthMismatch {
                    expected: values.len(),
                    found,
                });
            }
            for (i, value) in values.iter_mut().enumerate() {
                *value = slots.iter().map(|s| s[i]).sum();
            }
        }
        self.group.barrier.wait();
        Ok(())
    }

    fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        if self.rank == 0 {
            self.slots()[0] = values.to_vec();
        }
        self.group.barrier.wait();
        let root = self.slots()[0].clone();
        self.group.barrier.wait();
        if root.len() != values.len() {
            return Err(CollectiveError::LengthMismatch {
                expected: values.len(),
                found: root.len(),
            });
        }
        values.copy_from_slice(&root);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ranks_sum_in_rank_order_and_broadcast_rank_zero() {
        let handles: Vec<_> = LocalGroup::ranks(3)
            .into_iter()
            .map(|rank| {
                std::thread::spawn(move || {
                    let r = rank.rank() as f32;
                    let mut values = vec![r, 10.0 * r];
                    rank.all_reduce_sum(&mut values).unwrap();
                    let mut root = vec![r + 1.0; 2];
                    rank.broadcast_from_root(&mut root).unwrap();
                    (values, root)
                })
            })
            .collect();
        for handle in handles {
            let (sum, root) = handle.join().unwrap();
            assert_eq!(sum, vec![3.0, 30.0]);
            assert_eq!(root, vec![1.0, 1.0]);
        }
    }
}
