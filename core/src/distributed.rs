//! Data parallelism as the recipe runs it: every rank holds the same model, trains on its own
//! micro-batches, and after gradient accumulation the ranks average their gradients with one
//! all-reduce per optimizer step (`--allreduce_post_accumulation`), so all take the same step.
//! Parameters are broadcast from rank 0 before training.
//!
//! The ranks talk through a [`Collective`]: sums and broadcasts of float buffers. [`LocalGroup`]
//! connects ranks that are threads of one process; `bert-native` adds one over TCP for processes
//! and nodes, and NCCL on CUDA devices (a [`DeviceAllReduce`]: the gradients stay on the GPU).
//! The averaging, the half-precision option and the broadcast of a model live here, once.

use std::any::Any;
use std::fmt::Debug;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bert_shaders::lamb::FlatLayout;
use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use half::slice::HalfFloatSliceExt;

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
    /// [`Self::all_reduce_sum`] in float16, as NCCL's half all-reduce: every contribution and
    /// the sum are float16 values (held in `f32`s here). A collective that sends bytes sends half
    /// as many; the default rounds and sums through [`Self::all_reduce_sum`].
    fn all_reduce_sum_half(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        round_to_half(values);
        self.all_reduce_sum(values)?;
        round_to_half(values);
        Ok(())
    }
    /// Replaces `values` on every rank by rank 0's.
    fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError>;
    /// The all-reduce on device memory this collective has (NCCL on GPU buffers), if any; the
    /// gradients then never leave the device.
    fn device_all_reduce(&self) -> Option<&dyn DeviceAllReduce> {
        None
    }
}

/// An all-reduce that sums tensors where they live, without copies through the host.
pub trait DeviceAllReduce {
    /// Replaces `tensor`, a backend's float primitive holding one contiguous flat tensor, by its
    /// element-wise sum over the ranks. `Ok(false)` leaves it untouched: it is not on a device this
    /// all-reduce reaches (the caller then sums through the host).
    fn all_reduce_sum(&self, tensor: &mut dyn Any) -> Result<bool, CollectiveError>;
}

/// A trainer's link to the other ranks.
#[derive(Debug, Clone)]
pub struct DataParallel {
    /// The ranks' collective.
    pub collective: Arc<dyn Collective>,
    /// Reduce the gradients in float16, as the reference's `--allreduce_post_accumulation_fp16`
    /// (half the bytes on the wire, on the device and through the host).
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
        if world_size == 1 || (params.is_empty() && losses.is_empty()) {
            return Ok(());
        }
        let pieces: Vec<Tensor<B, 1>> = params
            .iter()
            .map(|p| p.grad.clone())
            .chain(losses.iter().cloned())
            .collect();
        let (flat, placements) = flatten(pieces);
        // As the reference: divide first, so a half-precision sum cannot overflow where the mean
        // would not.
        let averaged = self.all_reduce_sum(flat * (1.0 / world_size as f64))?;
        let mut slices = placements
            .into_iter()
            .map(|(offset, length)| averaged.clone().narrow(0, offset, length));
        for param in params.iter_mut() {
            param.grad = slices.next().expect("one slice per gradient");
        }
        for loss in losses.iter_mut() {
            *loss = slices.next().expect("one slice per loss");
        }
        Ok(())
    }

    /// The element-wise sum over the ranks of a flat float32 tensor (in float16 on the way when
    /// [`Self::reduce_in_half`]), where it lives when the collective reaches device memory
    /// ([`Collective::device_all_reduce`]), through host memory otherwise. Runs at world size 1
    /// too (the sum is then the tensor, through the same path). A device all-reduce writes the sum
    /// into `flat`'s buffer: pass a tensor of its own (a computed one), not a clone of one in use.
    pub fn all_reduce_sum<B: Backend>(
        &self,
        flat: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, CollectiveError> {
        let Some(device_all_reduce) = self.collective.device_all_reduce() else {
            return self.all_reduce_sum_on_host(flat);
        };
        let flat = if self.reduce_in_half {
            flat.cast(DType::F16)
        } else {
            flat
        };
        let mut primitive = flat.into_primitive().tensor();
        let summed_on_device = device_all_reduce.all_reduce_sum(&mut primitive)?;
        let flat = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(primitive));
        if summed_on_device {
            Ok(flat.cast(DType::F32))
        } else {
            self.all_reduce_sum_on_host(flat)
        }
    }

    fn all_reduce_sum_on_host<B: Backend>(
        &self,
        flat: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, CollectiveError> {
        let device = flat.device();
        let mut values = read_f32(flat)?;
        if self.reduce_in_half {
            self.collective.all_reduce_sum_half(&mut values)?;
        } else {
            self.collective.all_reduce_sum(&mut values)?;
        }
        let total = values.len();
        Ok(Tensor::from_data(TensorData::new(values, [total]), &device))
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

/// `pieces` in one flat tensor, and where each lies in it (offset, length). Where bert-shaders' kernels run (the
/// GPU backends), each piece starts at a 256-byte offset and a few launches copy them all, so the
/// pieces cut back out of the sum are views, not copies; the elements between pieces are left
/// unwritten, and whatever they hold is summed and ignored. Elsewhere the pieces are concatenated.
fn flatten<B: Backend>(pieces: Vec<Tensor<B, 1>>) -> (Tensor<B, 1>, Vec<(usize, usize)>) {
    let lengths: Vec<usize> = pieces.iter().map(|piece| piece.dims()[0]).collect();
    let laid_out = FlatLayout::of_lengths(lengths.iter().copied()).and_then(|layout| {
        let flat = bert_shaders::lamb::lay_out(&pieces, &layout)?;
        Some((flat, layout.offsets().to_vec()))
    });
    let (flat, offsets) = laid_out.unwrap_or_else(|| {
        let offsets = lengths
            .iter()
            .scan(0, |offset, &length| {
                let start = *offset;
                *offset += length;
                Some(start)
            })
            .collect();
        (Tensor::cat(pieces, 0), offsets)
    });
    (flat, offsets.into_iter().zip(lengths).collect())
}

/// Rounds every value to the nearest float16 (vectorised where the CPU converts in hardware).
pub fn round_to_half(values: &mut [f32]) {
    let mut halves = vec![half::f16::ZERO; values.len()];
    halves.convert_from_f32_slice(values);
    halves.convert_to_f32_slice(values);
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
/// per thread. A rank whose thread panics breaks the group: the others' exchanges then fail with
/// [`CollectiveError::PeerLost`] instead of waiting for it forever.
#[derive(Debug)]
pub struct LocalGroup {
    state: Mutex<GroupState>,
    arrivals: Condvar,
    world_size: usize,
}

/// What the ranks of a [`LocalGroup`] share.
#[derive(Debug)]
struct GroupState {
    /// Each rank's offered buffer.
    slots: Vec<Vec<f32>>,
    /// Ranks waiting at the current barrier.
    arrived: usize,
    /// Barriers passed so far.
    generation: u64,
    /// The rank whose thread panicked, if one did.
    lost: Option<usize>,
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
            state: Mutex::new(GroupState {
                slots: vec![Vec::new(); world_size],
                arrived: 0,
                generation: 0,
                lost: None,
            }),
            arrivals: Condvar::new(),
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
    fn state(&self) -> MutexGuard<'_, GroupState> {
        // A rank that panicked while holding the lock leaves the state as it was.
        self.group
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until every rank has arrived, or fails when one of them is lost.
    fn barrier<'a>(
        &'a self,
        mut state: MutexGuard<'a, GroupState>,
    ) -> Result<MutexGuard<'a, GroupState>, CollectiveError> {
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.group.world_size {
            state.arrived = 0;
            state.generation += 1;
            self.group.arrivals.notify_all();
        }
        while state.generation == generation && state.lost.is_none() {
            state = self
                .group
                .arrivals
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        match state.lost {
            Some(rank) if state.generation == generation => Err(CollectiveError::PeerLost {
                rank,
                message: "its thread panicked".into(),
            }),
            _ => Ok(state),
        }
    }
}

impl Drop for LocalRank {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.state();
            state.lost.get_or_insert(self.rank);
            self.group.arrivals.notify_all();
        }
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
        let mut state = self.state();
        state.slots[self.rank] = values.to_vec();
        let state = self.barrier(state)?;
        // Every rank reads the slots before any may offer its next buffer.
        let mismatch = state.slots.iter().find(|s| s.len() != values.len());
        let result = match mismatch {
            Some(other) => Err(CollectiveError::LengthMismatch {
                expected: values.len(),
                found: other.len(),
            }),
            None => {
                for (i, value) in values.iter_mut().enumerate() {
                    *value = state.slots.iter().map(|s| s[i]).sum();
                }
                Ok(())
            }
        };
        drop(self.barrier(state)?);
        result
    }

    fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        let mut state = self.state();
        if self.rank == 0 {
            state.slots[0] = values.to_vec();
        }
        let state = self.barrier(state)?;
        let root = state.slots[0].clone();
        drop(self.barrier(state)?);
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
    use burn::backend::NdArray;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_panicking_rank_fails_the_others_exchanges_instead_of_hanging_them() {
        let (sender, results) = std::sync::mpsc::channel();
        for rank in LocalGroup::ranks(3) {
            let sender = sender.clone();
            std::thread::spawn(move || {
                if rank.rank() == 2 {
                    panic!("rank 2 fails before its all-reduce (an expected panic)");
                }
                let mut values = vec![1.0];
                let first = rank.all_reduce_sum(&mut values);
                let second = rank.all_reduce_sum(&mut values);
                sender.send((rank.rank(), first, second)).unwrap();
            });
        }
        for _ in 0..2 {
            let (rank, first, second) = results
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("the surviving ranks return instead of waiting forever");
            let lost = Err(CollectiveError::PeerLost {
                rank: 2,
                message: "its thread panicked".into(),
            });
            assert_eq!(first, lost, "rank {rank}");
            assert_eq!(second, lost, "rank {rank}: the group stays broken");
        }
    }

    /// A stand-in for a device collective: sums NdArray tensors through a [`LocalRank`], counting
    /// the tensors it was handed.
    #[derive(Debug)]
    struct CountingDeviceRank {
        rank: LocalRank,
        device_sums: AtomicUsize,
    }

    impl Collective for CountingDeviceRank {
        fn rank(&self) -> usize {
            self.rank.rank()
        }
        fn world_size(&self) -> usize {
            self.rank.world_size()
        }
        fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
            self.rank.all_reduce_sum(values)
        }
        fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
            self.rank.broadcast_from_root(values)
        }
        fn device_all_reduce(&self) -> Option<&dyn DeviceAllReduce> {
            Some(self)
        }
    }

    impl DeviceAllReduce for CountingDeviceRank {
        fn all_reduce_sum(&self, tensor: &mut dyn Any) -> Result<bool, CollectiveError> {
            let Some(primitive) = tensor.downcast_mut::<burn::tensor::ops::FloatTensor<NdArray>>()
            else {
                return Ok(false);
            };
            let flat =
                Tensor::<NdArray, 1>::from_primitive(TensorPrimitive::Float(primitive.clone()));
            let mut values = read_f32(flat)?;
            self.rank.all_reduce_sum(&mut values)?;
            let total = values.len();
            *primitive = Tensor::<NdArray, 1>::from_data(
                TensorData::new(values, [total]),
                &Default::default(),
            )
            .into_primitive()
            .tensor();
            self.device_sums.fetch_add(1, Ordering::SeqCst);
            Ok(true)
        }
    }

    #[test]
    fn averaging_goes_through_the_device_all_reduce_when_the_collective_has_one() {
        let handles: Vec<_> = LocalGroup::ranks(2)
            .into_iter()
            .map(|rank| {
                std::thread::spawn(move || {
                    let collective = Arc::new(CountingDeviceRank {
                        rank,
                        device_sums: AtomicUsize::new(0),
                    });
                    let data_parallel = DataParallel {
                        collective: Arc::clone(&collective) as Arc<dyn Collective>,
                        reduce_in_half: false,
                    };
                    let r = collective.rank() as f32;
                    let device = Default::default();
                    let mut losses = vec![
                        Tensor::<NdArray, 1>::from_floats([r + 1.0], &device),
                        Tensor::<NdArray, 1>::from_floats([10.0 * (r + 1.0)], &device),
                    ];
                    data_parallel
                        .average::<NdArray>(&mut [], &mut losses)
                        .unwrap();
                    let means: Vec<f32> =
                        losses.into_iter().map(|loss| loss.into_scalar()).collect();
                    (means, collective.device_sums.load(Ordering::SeqCst))
                })
            })
            .collect();
        for handle in handles {
            let (means, device_sums) = handle.join().unwrap();
            assert_eq!(means, vec![1.5, 15.0]);
            assert_eq!(
                device_sums, 1,
                "one all-reduce per step, on the device path"
            );
        }
    }

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
