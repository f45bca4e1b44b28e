//! NCCL as the data-parallel engine on CUDA, one process per GPU as torchrun runs the reference:
//! every optimizer step's all-reduce sums the flat gradient buffer in place on the GPUs, in the
//! precision it is in (float32, or float16 with `--allreduce-post-accumulation-fp16`), across
//! GPUs and nodes alike. The TCP collective stays beside it for the control traffic: it carries
//! NCCL's unique id from rank 0 to the others, the start-up broadcast of the weights and the
//! ranks' stop vote.
//!
//! The buffers are burn-cuda's own: the flat tensor is resolved out of burn's fusion stream
//! (which waits for the kernels that produce it), its device pointer read from cubecl, and NCCL
//! runs on a stream of ours that is synchronised before the tensor is used again. cudarc loads
//! `libnccl` at run time, so building needs neither the CUDA toolkit nor NCCL.

use std::any::Any;
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

use bert_core::distributed::{Collective, DeviceAllReduce};
use bert_core::error::CollectiveError;
use burn::tensor::{DType, TensorMetadata};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::future::block_on;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use burn_fusion::{FusionBackend, FusionTensor};
use cudarc::driver::{result as driver, sys as driver_sys};
use cudarc::nccl::{result as nccl, sys as nccl_sys};

use super::tcp::TcpCollective;

/// burn-cuda's backend under its fusion layer (`burn::backend::Cuda`).
type CudaCube = CubeBackend<CudaRuntime, f32, i32, u8>;
/// The float tensors `burn::backend::Cuda` hands out.
type FusedCudaTensor = FusionTensor<<CudaCube as FusionBackend>::FusionRuntime>;

/// A rank of a job whose gradients are summed by NCCL.
#[derive(Debug)]
pub struct NcclCollective {
    host: TcpCollective,
    /// Created at the first all-reduce, on the GPU of the tensor it is given.
    communicator: Mutex<Option<Communicator>>,
}

/// Whether `libnccl` can be loaded.
pub fn library_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { nccl_sys::is_culib_present() }
}

impl NcclCollective {
    /// This rank over the job's TCP links; every rank must be able to load `libnccl`
    /// ([`library_present`]).
    pub fn new(host: TcpCollective) -> Self {
        Self {
            host,
            communicator: Mutex::new(None),
        }
    }

    /// The communicator, created on `device_index` the first time (every rank gets here in the
    /// same step, so the creation is collective as NCCL requires).
    fn communicator(
        &self,
        device_index: usize,
    ) -> Result<MutexGuard<'_, Option<Communicator>>, CollectiveError> {
        let mut communicator = self
            .communicator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if communicator.is_none() {
            *communicator = Some(Communicator::new(&self.host, device_index)?);
        }
        Ok(communicator)
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.host.rank()
    }

    fn world_size(&self) -> usize {
        self.host.world_size()
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.host.all_reduce_sum(values)
    }

    fn broadcast_from_root(&self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.host.broadcast_from_root(values)
    }

    fn device_all_reduce(&self) -> Option<&dyn DeviceAllReduce> {
        Some(self)
    }
}

impl DeviceAllReduce for NcclCollective {
    fn all_reduce_sum(&self, tensor: &mut dyn Any) -> Result<bool, CollectiveError> {
        let Some(fused) = tensor.downcast_mut::<FusedCudaTensor>() else {
            return Ok(false);
        };
        // Resolving a clone leaves `fused` holding the same buffer, which NCCL then overwrites.
        let buffer: CubeTensor<CudaRuntime> =
            fused.client.resolve_tensor_float::<CudaCube>(fused.clone());
        let data_type = match buffer.dtype() {
            DType::F32 => nccl_sys::ncclDataType_t::ncclFloat32,
            DType::F16 => nccl_sys::ncclDataType_t::ncclFloat16,
            DType::BF16 => nccl_sys::ncclDataType_t::ncclBfloat16,
            other => {
                return Err(device_error(format!(
                    "NCCL sums float tensors, not {other:?}"
                )))
            }
        };
        if !buffer.is_contiguous() {
            return Err(device_error("the flat gradient buffer is not contiguous"));
        }
        let count = buffer.shape().num_elements();
        let communicator = self.communicator(buffer.device.index)?;
        let communicator = communicator.as_ref().expect("created above");
        // Taking the resource orders this thread's cubecl stream after the kernels that wrote the
        // buffer (on whichever stream); synchronising that stream then waits for them.
        let resource = buffer
            .client
            .get_resource(buffer.handle.clone())
            .map_err(|e| device_error(format!("the gradient buffer: {e:?}")))?;
        block_on(buffer.client.sync())
            .map_err(|e| device_error(format!("waiting for the gradients: {e:?}")))?;
        let pointer = resource.resource().ptr;
        let bytes = count * buffer.dtype().size();
        if (resource.resource().size as usize) < bytes {
            return Err(device_error(format!(
                "the gradient buffer holds {} bytes, not {bytes}",
                resource.resource().size
            )));
        }
        communicator.all_reduce_sum_in_place(pointer, count, data_type)?;
        Ok(true)
    }
}

/// An NCCL communicator of this rank, with the GPU context and stream it runs on.
#[derive(Debug)]
struct Communicator {
    comm: nccl_sys::ncclComm_t,
    context: driver_sys::CUcontext,
    stream: driver_sys::CUstream,
}

// SAFETY: the handles are plain CUDA/NCCL handles, used under the collective's mutex only.
unsafe impl Send for Communicator {}

impl Communicator {
    /// Joins the job's communicator on GPU `device_index`: rank 0 makes the unique id, `host`
    /// carries it to the others.
    fn new(host: &TcpCollective, device_index: usize) -> Result<Self, CollectiveError> {
        let context = current_context(device_index)?;
        let mut unique_id = if host.rank() == 0 {
            nccl::get_uniqueid().map_err(|e| device_error(format!("ncclGetUniqueId: {e:?}")))?
        } else {
            nccl_sys::ncclUniqueId { internal: [0; 128] }
        };
        let mut words = unique_id_to_words(&unique_id);
        host.broadcast_from_root(&mut words)?;
        words_to_unique_id(&words, &mut unique_id);
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the new communicator; every rank passes the same id and world
        // size and its own rank, with this rank's GPU context current.
        unsafe {
            nccl::comm_init_rank(
                &mut comm,
                host.world_size() as i32,
                unique_id,
                host.rank() as i32,
            )
        }
        .map_err(|e| device_error(format!("ncclCommInitRank: {e:?}")))?;
        let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
            .map_err(|e| device_error(format!("creating NCCL's stream: {e:?}")))?;
        Ok(Self {
            comm,
            context,
            stream,
        })
    }

    /// Sums `count` elements at device address `pointer` over the ranks, in place, and waits.
    fn all_reduce_sum_in_place(
        &self,
        pointer: u64,
        count: usize,
        data_type: nccl_sys::ncclDataType_t,
    ) -> Result<(), CollectiveError> {
        // SAFETY: the context was retained in `new`; `pointer` addresses `count` elements of
        // `data_type` that stay allocated until the caller's resource is dropped, after the
        // stream synchronisation below.
        unsafe {
            driver::ctx::set_current(self.context)
                .map_err(|e| device_error(format!("the GPU context: {e:?}")))?;
            nccl::all_reduce(
                pointer as *const c_void,
                pointer as *mut c_void,
                count,
                data_type,
                nccl_sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream as nccl_sys::cudaStream_t,
            )
            .map_err(|e| device_error(format!("ncclAllReduce: {e:?}")))?;
            driver::stream::synchronize(self.stream)
                .map_err(|e| device_error(format!("waiting for ncclAllReduce: {e:?}")))?;
        }
        Ok(())
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // SAFETY: both handles were created in `new` and are released once, here.
        unsafe {
            let _ = nccl::comm_destroy(self.comm);
            let _ = driver::stream::destroy(self.stream);
        }
    }
}

/// Makes GPU `device_index`'s primary context (the one cubecl uses) current on this thread.
fn current_context(device_index: usize) -> Result<driver_sys::CUcontext, CollectiveError> {
    let error = |e: driver::DriverError| device_error(format!("GPU {device_index}: {e:?}"));
    driver::init().map_err(error)?;
    let device = driver::device::get(device_index as i32).map_err(error)?;
    // SAFETY: `device` is a valid ordinal from cuDeviceGet; the retained context lives as long
    // as the process (cubecl holds it too).
    unsafe {
        let context = driver::primary_ctx::retain(device).map_err(error)?;
        driver::ctx::set_current(context).map_err(error)?;
        Ok(context)
    }
}

/// NCCL's 128-byte unique id as 32 floats with the same bits, for the float collective.
fn unique_id_to_words(id: &nccl_sys::ncclUniqueId) -> Vec<f32> {
    id.internal
        .chunks_exact(4)
        .map(|b| {
            f32::from_bits(u32::from_le_bytes([
                b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8,
            ]))
        })
        .collect()
}

/// The inverse of [`unique_id_to_words`].
fn words_to_unique_id(words: &[f32], id: &mut nccl_sys::ncclUniqueId) {
    for (chunk, word) in id.internal.chunks_exact_mut(4).zip(words) {
        for (byte, value) in chunk.iter_mut().zip(word.to_bits().to_le_bytes()) {
            *byte = value as std::ffi::c_char;
        }
    }
}

fn device_error(message: impl Into<String>) -> CollectiveError {
    CollectiveError::Device(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_cross_the_float_collective_bit_for_bit() {
        let mut id = nccl_sys::ncclUniqueId { internal: [0; 128] };
        for (i, byte) in id.internal.iter_mut().enumerate() {
            // Every byte value, NaN bit patterns included once packed.
            *byte = (i as u8).wrapping_mul(37).wrapping_add(0xF0) as std::ffi::c_char;
        }
        let words = unique_id_to_words(&id);
        assert_eq!(words.len(), 32);
        let mut back = nccl_sys::ncclUniqueId { internal: [0; 128] };
        words_to_unique_id(&words, &mut back);
        assert_eq!(back.internal, id.internal);
    }
}
