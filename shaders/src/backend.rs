//! Running the kernels on burn tensors: the float primitive of a known CubeCL backend (burn-wgpu,
//! burn-cuda, with or without fusion) is taken out of its `Tensor`, the kernels are launched on
//! its buffers (inside burn's fusion stream as a custom operation when fusion is on), and the
//! results are put back into `Tensor`s of the same backend.

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::lamb::kernels::{
    lamb_apply, lamb_step_sizes, lamb_update, lay_out_chunks, sum_by_chunk, CUBE_UNITS,
    TENSOR_ENTRIES,
};
use crate::lamb::FlatLayout;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) enum FusedOp {
    /// `[one tensor per segment] -> [their flat buffer]` (the gaps between tensors unwritten).
    LayOut(FlatLayout),
    /// `[values] -> [sum(values^2)]`.
    SquaredNorm(FlatLayout),
    /// `[grad, value, exp_avg, exp_avg_sq, clip_divisor] -> [value, exp_avg, exp_avg_sq]`, with
    /// the coefficients of [`crate::lamb::LambCoefficients::as_f32`].
    LambStep(FlatLayout, [f32; 8]),
}

impl FusedOp {
    /// The most buffers one of the kernels binds (`lamb_update`'s 11), counting the one cubecl
    /// adds for lengths.
    const MAX_BINDINGS: u32 = 11 + 1;

    /// The most tensors one launch of `lay_out_chunks` copies: its unrolled code grows with
    /// them, and 32 already turn the 398 copies of a BERT-large layout into ~22 launches (one
    /// or two for each of its 11 buffers).
    const MAX_LAID_OUT_PER_LAUNCH: u32 = 32;

    /// The shapes of the outputs.
    fn output_shapes(&self) -> Vec<Shape> {
        match self {
            FusedOp::LayOut(layout) => vec![Shape::new([layout.len()])],
            FusedOp::SquaredNorm(_) => vec![Shape::new([1])],
            FusedOp::LambStep(layout, _) => vec![Shape::new([layout.len()]); 3],
        }
    }
}

/// The float primitives the kernels run on.
trait FusedTensor: Sized + 'static {
    /// The most buffers a kernel may bind on this tensor's device.
    fn max_bindings(&self) -> u32;
    /// Runs `op`, in order with the operations already queued on the inputs.
    fn execute(inputs: Vec<Self>, op: &FusedOp) -> Vec<Self>;
}

/// Something done with the float primitive type `T` of a backend the kernels know.
trait PrimitiveVisitor {
    type Output;
    fn visit<T: FusedTensor>(self) -> Self::Output;
}

/// `visitor` applied to `B`'s float primitive type; `None` when the kernels do not know `B`.
fn dispatch<B: Backend, V: PrimitiveVisitor>(visitor: V) -> Option<V::Output> {
    let primitive = TypeId::of::<B::FloatTensorPrimitive>();
    #[cfg(feature = "wgpu")]
    {
        use cubecl::wgpu::WgpuRuntime;
        if primitive == TypeId::of::<CubeTensor<WgpuRuntime>>() {
            return Some(visitor.visit::<CubeTensor<WgpuRuntime>>());
        }
        if primitive == TypeId::of::<fusion::Fused<WgpuRuntime>>() {
            return Some(visitor.visit::<fusion::Fused<WgpuRuntime>>());
        }
    }
    #[cfg(feature = "cuda")]
    {
        use cubecl::cuda::CudaRuntime;
        if primitive == TypeId::of::<CubeTensor<CudaRuntime>>() {
            return Some(visitor.visit::<CubeTensor<CudaRuntime>>());
        }
        if primitive == TypeId::of::<fusion::Fused<CudaRuntime>>() {
            return Some(visitor.visit::<fusion::Fused<CudaRuntime>>());
        }
    }
    let _ = primitive;
    None
}

/// The float primitive of `tensor` as `T` (`None` when it is another type).
fn primitive<B: Backend, T: 'static>(tensor: &Tensor<B, 1>) -> Option<T> {
    cast::<_, T>(tensor.clone().into_primitive().tensor())
}

/// Whether the kernels run on float32 tensors of `B` on `tensor`'s device: `B` is a backend they
/// know and the device lets a kernel bind as many buffers as theirs do (some browsers' WebGPU
/// allows fewer).
pub(crate) fn runs_on<B: Backend>(tensor: &Tensor<B, 1>) -> bool {
    struct Check<'a, B: Backend>(&'a Tensor<B, 1>);
    impl<B: Backend> PrimitiveVisitor for Check<'_, B> {
        type Output = bool;
        fn visit<T: FusedTensor>(self) -> bool {
            primitive::<B, T>(self.0).is_some_and(|t| t.max_bindings() >= FusedOp::MAX_BINDINGS)
        }
    }
    dispatch::<B, _>(Check(tensor)).unwrap_or(false)
}

/// Runs `op` on float32 `inputs` of a backend the kernels know; `None` for other backends or
/// dtypes.
pub(crate) fn run<B: Backend>(inputs: &[&Tensor<B, 1>], op: FusedOp) -> Option<Vec<Tensor<B, 1>>> {
    struct Run<'a, B: Backend> {
        inputs: &'a [&'a Tensor<B, 1>],
        op: FusedOp,
    }
    impl<B: Backend> PrimitiveVisitor for Run<'_, B> {
        type Output = Option<Vec<Tensor<B, 1>>>;
        fn visit<T: FusedTensor>(self) -> Self::Output {
            let primitives = self
                .inputs
                .iter()
                .map(|tensor| primitive::<B, T>(tensor))
                .collect::<Option<Vec<T>>>()?;
            T::execute(primitives, &self.op)
                .into_iter()
                .map(|output| {
                    cast::<T, B::FloatTensorPrimitive>(output)
                        .map(|p| Tensor::from_primitive(TensorPrimitive::Float(p)))
                })
                .collect()
        }
    }
    if inputs.iter().any(|t| t.dtype() != DType::F32) || !runs_on(inputs.first()?) {
        return None;
    }
    dispatch::<B, _>(Run { inputs, op })?
}

/// `value` as `To` when it is one.
fn cast<From: 'static, To: 'static>(value: From) -> Option<To> {
    let boxed: Box<dyn Any> = Box::new(value);
    boxed.downcast::<To>().ok().map(|b| *b)
}

impl<R: CubeRuntime> FusedTensor for CubeTensor<R> {
    fn max_bindings(&self) -> u32 {
        self.client.properties().hardware.max_bindings
    }

    fn execute(inputs: Vec<Self>, op: &FusedOp) -> Vec<Self> {
        match op {
            FusedOp::LayOut(layout) => vec![lay_out(&inputs, layout)],
            FusedOp::SquaredNorm(layout) => vec![squared_norm(&inputs[0], layout)],
            FusedOp::LambStep(layout, coefficients) => {
                let [grad, value, exp_avg, exp_avg_sq, clip_divisor]: [Self; 5] =
                    inputs.try_into().expect("five inputs");
                lamb_step(
                    &grad,
                    &value,
                    &exp_avg,
                    &exp_avg_sq,
                    &clip_divisor,
                    layout,
                    coefficients,
                )
                .into()
            }
        }
    }
}

/// Cube counts for `cubes` cubes (a grid's x dimension is limited to 65535 on some APIs).
fn cube_count(cubes: usize) -> CubeCount {
    const MAX_X: usize = 65_535;
    let x = cubes.clamp(1, MAX_X);
    CubeCount::Static(x as u32, cubes.div_ceil(MAX_X).max(1) as u32, 1)
}

/// A contiguous float32 buffer of `tensor` (a copy when it is a strided view).
fn contiguous<R: CubeRuntime>(tensor: &CubeTensor<R>) -> CubeTensor<R> {
    burn_cubecl::kernel::into_contiguous(tensor.clone())
}

/// `values` uploaded once to a new device array, as a kernel argument for as many launches as
/// read it.
fn upload<R: CubeRuntime, E: CubeElement>(
    reference: &CubeTensor<R>,
    values: &[E],
) -> impl Fn() -> ArrayArg<R> {
    let handle = reference.client.create_from_slice(E::as_bytes(values));
    let len = values.len();
    // SAFETY: the handle holds exactly `len` elements of `E`.
    move || unsafe { ArrayArg::from_raw_parts(handle.clone(), len) }
}

/// An uninitialised float32 tensor of `len` elements beside `reference`.
fn empty<R: CubeRuntime>(reference: &CubeTensor<R>, len: usize) -> CubeTensor<R> {
    empty_device::<R, f32>(
        reference.client.clone(),
        reference.device.clone(),
        Shape::new([len]),
    )
}

/// `sources` (one per tensor of `layout`) copied into a new flat buffer, as many per launch as
/// the device lets a kernel bind.
fn lay_out<R: CubeRuntime>(sources: &[CubeTensor<R>], layout: &FlatLayout) -> CubeTensor<R> {
    let flat = empty(&sources[0], layout.len());
    let per_launch = sources[0]
        .max_bindings()
        .saturating_sub(4)
        .clamp(1, FusedOp::MAX_LAID_OUT_PER_LAUNCH) as usize;
    let chunk_table = upload(&flat, layout.chunk_table());
    let tensor_table = upload(&flat, layout.tensor_table());
    for (launch, batch) in sources.chunks(per_launch).enumerate() {
        let first_tensor = launch * per_launch;
        let first_chunk = layout.tensor_table()[first_tensor * TENSOR_ENTRIES];
        let end_chunk =
            layout.tensor_table()[(first_tensor + batch.len() - 1) * TENSOR_ENTRIES + 1];
        if first_chunk == end_chunk {
            continue;
        }
        let batch: Vec<CubeTensor<R>> = batch.iter().map(contiguous).collect();
        // Every launch binds `per_launch` sources (a short last batch repeats its first source
        // in the places no chunk reads), so one compiled kernel serves them all.
        let padding = std::iter::repeat_n(&batch[0], per_launch - batch.len());
        let sources: SequenceArg<R, Array<f32>> = batch
            .iter()
            .chain(padding)
            .map(|source| source.clone().into_array_arg())
            .collect();
        lay_out_chunks::launch::<R>(
            &flat.client,
            cube_count((end_chunk - first_chunk) as usize),
            CubeDim::new_1d(CUBE_UNITS),
            sources,
            chunk_table(),
            tensor_table(),
            flat.clone().into_array_arg(),
            first_tensor as u32,
            first_chunk,
            end_chunk,
        );
    }
    flat
}

fn squared_norm<R: CubeRuntime>(values: &CubeTensor<R>, layout: &FlatLayout) -> CubeTensor<R> {
    let values = contiguous(values);
    let partials = empty(&values, layout.chunks());
    let cube_dim = CubeDim::new_1d(CUBE_UNITS);
    sum_by_chunk::launch::<R>(
        &values.client,
        cube_count(layout.chunks()),
        cube_dim,
        values.clone().into_array_arg(),
        upload(&values, layout.chunk_table())(),
        partials.clone().into_array_arg(),
        true,
    );
    // One cube sums the chunks' sums.
    let total = empty(&values, 1);
    sum_by_chunk::launch::<R>(
        &values.client,
        cube_count(1),
        cube_dim,
        partials.into_array_arg(),
        upload(&values, &[0, 0, layout.chunks() as u32])(),
        total.clone().into_array_arg(),
        false,
    );
    total
}

#[allow(clippy::too_many_arguments)]
fn lamb_step<R: CubeRuntime>(
    grad: &CubeTensor<R>,
    value: &CubeTensor<R>,
    exp_avg: &CubeTensor<R>,
    exp_avg_sq: &CubeTensor<R>,
    clip_divisor: &CubeTensor<R>,
    layout: &FlatLayout,
    coefficients: &[f32; 8],
) -> [CubeTensor<R>; 3] {
    let [grad, value, exp_avg, exp_avg_sq, clip_divisor] =
        [grad, value, exp_avg, exp_avg_sq, clip_divisor].map(contiguous);
    let client = value.client.clone();
    let cube_dim = CubeDim::new_1d(CUBE_UNITS);
    let chunks = layout.chunks();
    let new_exp_avg = empty(&value, layout.len());
    let new_exp_avg_sq = empty(&value, layout.len());
    let update = empty(&value, layout.len());
    let partials = empty(&value, 2 * chunks);
    let step_sizes = empty(&value, layout.tensors());
    let new_value = empty(&value, layout.len());
    // The step's constants, then one weight decay per tensor.
    let coefficients: Vec<f32> = coefficients
        .iter()
        .chain(layout.weight_decays())
        .copied()
        .collect();
    let coefficients_arg = upload(&value, &coefficients);
    let chunk_table_arg = upload(&value, layout.chunk_table());
    lamb_update::launch::<R>(
        &client,
        cube_count(chunks),
        cube_dim,
        grad.into_array_arg(),
        value.clone().into_array_arg(),
        exp_avg.into_array_arg(),
        exp_avg_sq.into_array_arg(),
        clip_divisor.into_array_arg(),
        chunk_table_arg(),
        coefficients_arg(),
        new_exp_avg.clone().into_array_arg(),
        new_exp_avg_sq.clone().into_array_arg(),
        update.clone().into_array_arg(),
        partials.clone().into_array_arg(),
    );
    lamb_step_sizes::launch::<R>(
        &client,
        cube_count(layout.tensors()),
        cube_dim,
        partials.into_array_arg(),
        upload(&value, layout.tensor_table())(),
        coefficients_arg(),
        step_sizes.clone().into_array_arg(),
    );
    lamb_apply::launch::<R>(
        &client,
        cube_count(chunks),
        cube_dim,
        value.into_array_arg(),
        update.into_array_arg(),
        chunk_table_arg(),
        step_sizes.into_array_arg(),
        new_value.clone().into_array_arg(),
    );
    [new_value, new_exp_avg, new_exp_avg_sq]
}

mod fusion {
    //! The kernels as one custom operation in burn's fusion stream: its inputs are resolved to
    //! cube tensors when the stream runs it, and its outputs registered back.

    use std::marker::PhantomData;

    use burn::tensor::DType;
    use burn_cubecl::fusion::FusionCubeRuntime;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::{CubeBackend, CubeRuntime};
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{FusionRuntime, FusionTensor};
    use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

    use super::{FusedOp, FusedTensor};

    /// The float primitive of a CubeCL backend behind fusion.
    pub(super) type Fused<R> = FusionTensor<FusionCubeRuntime<R>>;

    #[derive(Debug)]
    struct FusedCustomOp<R: CubeRuntime> {
        description: CustomOpIr,
        op: FusedOp,
        runtime: PhantomData<R>,
    }

    impl<R: CubeRuntime> Operation<FusionCubeRuntime<R>> for FusedCustomOp<R> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
        ) {
            // Float handles turn into cube tensors the same way whatever the element types.
            type Cube<R> = CubeBackend<R, f32, i32, u32>;
            let inputs = self
                .description
                .inputs
                .iter()
                .map(|input| handles.get_float_tensor::<Cube<R>>(input))
                .collect();
            let outputs = CubeTensor::<R>::execute(inputs, &self.op);
            for (description, output) in self.description.outputs.iter().zip(outputs) {
                handles.register_float_tensor::<Cube<R>>(&description.id, output);
            }
        }
    }

    impl<R: CubeRuntime> FusedTensor for Fused<R> {
        fn max_bindings(&self) -> u32 {
            R::client(self.client.device())
                .properties()
                .hardware
                .max_bindings
        }

        fn execute(inputs: Vec<Self>, op: &FusedOp) -> Vec<Self> {
            let client = inputs[0].client.clone();
            let streams = OperationStreams::with_inputs(inputs.iter());
            let outputs: Vec<TensorIr> = op
                .output_shapes()
                .into_iter()
                .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, DType::F32))
                .collect();
            let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
            let description = CustomOpIr {
                id: "bert-shaders".to_string(),
                inputs,
                outputs,
            };
            client.register(
                streams,
                OperationIr::Custom(description.clone()),
                FusedCustomOp::<R> {
                    description,
                    op: op.clone(),
                    runtime: PhantomData,
                },
            )
        }
    }
}
