//! The kernels on Flex tensors: their float32 values read in place (or laid out once when they
//! are views), the results wrapped as new tensors; under autodiff, each kernel is one node of
//! burn's graph whose backward pass is the kernel's own.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Shape, TensorMetadata};

use super::kernels::{
    self, AttentionInputs, AttentionShape, LayerNormSaved, LayerNormWeights, LinearShape, Weight,
};
use super::TrackedTensor;

/// A Flex tensor laid out row-major from the start of its own buffer (a cheap clone of one that
/// already is), so that its values can be read as a slice.
#[derive(Debug, Clone)]
struct Values(FlexTensor);

impl Values {
    fn of(tensor: &FlexTensor) -> Self {
        Self(tensor.to_contiguous())
    }

    fn get(&self) -> &[f32] {
        self.0
            .as_slice::<f32>()
            .expect("a contiguous float32 tensor")
    }

    fn shape(&self) -> Shape {
        self.0.shape()
    }
}

/// A Flex tensor of `shape` holding `values`.
pub(super) fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// Runs `forward` as an operation of burn's graph on the first `N` of `inputs`, whose backward
/// pass is `backward` with the state `forward` saves (asked for only when a gradient will flow).
fn record<Op, const N: usize>(
    backward: Op,
    inputs: &[TrackedTensor],
    forward: impl FnOnce(bool) -> (FlexTensor, Option<Op::State>),
) -> TrackedTensor
where
    Op: Backward<Flex, N>,
{
    let nodes = std::array::from_fn(|i| inputs[i].node.clone());
    // Compute-bound: burn keeps the output rather than recomputing it, so the checkpointing
    // strategy of the surrounding graph does not matter here.
    match backward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (output, state) = forward(true);
            prep.finish(state.expect("saved for the backward pass"), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(false).0),
    }
}

/// LayerNorm's tensors, `[..., gamma, beta]`, to its weights (the last two) and the values before them.
fn layer_norm_parts(values: &[Values], epsilon: f64) -> (&[Values], LayerNormWeights<'_>) {
    let (inputs, parameters) = values.split_at(values.len() - 2);
    let weights = LayerNormWeights {
        gamma: parameters[0].get(),
        beta: parameters[1].get(),
        epsilon: epsilon as f32,
    };
    (inputs, weights)
}

/// The values of `tensor` to write over in place: `None` when another tensor shares its buffer
/// or it is not laid out row-major.
fn values_mut(tensor: &mut FlexTensor) -> Option<&mut [f32]> {
    let (start, end) = tensor.layout().contiguous_offsets()?;
    tensor
        .try_storage_mut::<f32>()
        .map(|storage| &mut storage[start..end])
}

/// LayerNorm of `[input, residual?, gamma, beta]`, written over `input` when nothing else holds
/// it.
pub(super) fn layer_norm(mut tensors: Vec<FlexTensor>, epsilon: f64) -> FlexTensor {
    let mut input = tensors.remove(0);
    let values: Vec<Values> = tensors.iter().map(Values::of).collect();
    let (residual, weights) = layer_norm_parts(&values, epsilon);
    let residual = residual.first().map(Values::get);
    if let Some(in_place) = values_mut(&mut input) {
        kernels::layer_norm_in_place(in_place, residual, weights);
        return input;
    }
    let input = Values::of(&input);
    let (output, _) = kernels::layer_norm(input.get(), residual, weights, false);
    tensor(output, input.shape())
}

#[derive(Debug)]
struct LayerNormBackward;

#[derive(Debug, Clone)]
struct LayerNormState {
    gamma: Values,
    saved: Arc<LayerNormSaved>,
    shape: Shape,
}

impl<const N: usize> Backward<Flex, N> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(
        self,
        ops: Ops<LayerNormState, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = Values::of(&grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let (grad_input, grad_gamma, grad_beta) =
            kernels::layer_norm_backward(grad.get(), state.gamma.get(), &state.saved);
        let width = Shape::new([grad_gamma.len()]);
        // Parents: the input (and the residual, which gets the same gradient), gamma, beta.
        let mut parents = ops.parents.into_iter().rev();
        if let Some(beta) = parents.next().flatten() {
            grads.register::<Flex>(beta.id, tensor(grad_beta, width.clone()));
        }
        if let Some(gamma) = parents.next().flatten() {
            grads.register::<Flex>(gamma.id, tensor(grad_gamma, width));
        }
        let grad_input = tensor(grad_input, state.shape);
        for input in parents.flatten() {
            grads.register::<Flex>(input.id, grad_input.clone());
        }
    }
}

/// LayerNorm of `[input, residual?, gamma, beta]` in burn's graph.
pub(super) fn layer_norm_tracked(tensors: Vec<TrackedTensor>, epsilon: f64) -> TrackedTensor {
    let values: Vec<Values> = tensors.iter().map(|t| Values::of(&t.primitive)).collect();
    let (inputs, weights) = layer_norm_parts(&values, epsilon);
    let shape = inputs[0].shape();
    let forward = |for_backward| {
        let (output, saved) = kernels::layer_norm(
            inputs[0].get(),
            inputs.get(1).map(Values::get),
            weights,
            for_backward,
        );
        let state = saved.map(|saved| LayerNormState {
            gamma: values[values.len() - 2].clone(),
            saved: Arc::new(saved),
            shape: shape.clone(),
        });
        (tensor(output, shape.clone()), state)
    };
    match tensors.len() {
        3 => record::<_, 3>(LayerNormBackward, &tensors, forward),
        _ => record::<_, 4>(LayerNormBackward, &tensors, forward),
    }
}

/// GELU of every element, written over `input` when nothing else holds it.
pub(super) fn gelu(mut input: FlexTensor) -> FlexTensor {
    if let Some(in_place) = values_mut(&mut input) {
        kernels::gelu_in_place(in_place);
        return input;
    }
    let input = Values::of(&input);
    tensor(kernels::gelu(input.get()), input.shape())
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = Values;

    fn backward(
        self,
        ops: Ops<Values, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = Values::of(&grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let input = ops.state;
            let grad_input = kernels::gelu_backward(input.get(), grad.get());
            grads.register::<Flex>(parent.id, tensor(grad_input, input.shape()));
        }
    }
}

/// GELU of every element, in burn's graph.
pub(super) fn gelu_tracked(input: TrackedTensor) -> TrackedTensor {
    let values = Values::of(&input.primitive);
    record::<_, 1>(GeluBackward, &[input], |for_backward| {
        let output = tensor(kernels::gelu(values.get()), values.shape());
        (output, for_backward.then(|| values.clone()))
    })
}

/// `[query, key, value, key_bias, keep?]` as the attention kernels take them.
fn attention_inputs(
    values: &[Values],
    shape: AttentionShape,
    dropout_scale: Option<f32>,
) -> AttentionInputs<'_> {
    let inputs = AttentionInputs {
        query: values[0].get(),
        key: values[1].get(),
        value: values[2].get(),
        key_bias: values[3].get(),
        dropout: dropout_scale.map(|scale| (values[4].get(), scale)),
        shape,
    };
    let size = shape.batch * shape.seq * shape.heads * shape.head_size;
    assert!(
        [inputs.query, inputs.key, inputs.value]
            .iter()
            .all(|x| x.len() == size)
            && inputs.key_bias.len() == shape.batch * shape.seq
            && inputs.dropout.is_none_or(|(keep, _)| {
                keep.len() == shape.batch * shape.heads * shape.seq * shape.seq
            }),
        "attention inputs of the wrong sizes for {shape:?}"
    );
    inputs
}

/// Multi-head attention of `[query, key, value, key_bias, keep?]`.
pub(super) fn attention(
    tensors: &[FlexTensor],
    shape: AttentionShape,
    dropout_scale: Option<f32>,
) -> FlexTensor {
    let values: Vec<Values> = tensors.iter().map(Values::of).collect();
    let (context, _) = kernels::attention(attention_inputs(&values, shape, dropout_scale), false);
    tensor(context, values[0].shape())
}

#[derive(Debug)]
struct AttentionBackward;

#[derive(Debug, Clone)]
struct AttentionState {
    inputs: Arc<Vec<Values>>,
    probabilities: Arc<Vec<f32>>,
    shape: AttentionShape,
    dropout_scale: Option<f32>,
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(
        self,
        ops: Ops<AttentionState, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = Values::of(&grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let inputs = attention_inputs(&state.inputs, state.shape, state.dropout_scale);
        let input_grads = kernels::attention_backward(inputs, &state.probabilities, grad.get());
        let shape = state.inputs[0].shape();
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, tensor(grad, shape.clone()));
            }
        }
    }
}

/// Multi-head attention of `[query, key, value, key_bias, keep?]` in burn's graph (gradients
/// flow to the queries, keys and values).
pub(super) fn attention_tracked(
    tensors: Vec<TrackedTensor>,
    shape: AttentionShape,
    dropout_scale: Option<f32>,
) -> TrackedTensor {
    let values: Vec<Values> = tensors.iter().map(|t| Values::of(&t.primitive)).collect();
    let output_shape = values[0].shape();
    record::<_, 3>(AttentionBackward, &tensors, |for_backward| {
        let (context, probabilities) = kernels::attention(
            attention_inputs(&values, shape, dropout_scale),
            for_backward,
        );
        let state = probabilities.map(|probabilities| AttentionState {
            inputs: Arc::new(values.clone()),
            probabilities: Arc::new(probabilities),
            shape,
            dropout_scale,
        });
        (tensor(context, output_shape), state)
    })
}

/// `[x, weight, bias?]` as the linear kernels take them: `x`'s leading dimensions as rows.
fn linear_shape(values: &[Values]) -> LinearShape {
    let [inputs, outputs] = values[1].shape().dims::<2>();
    let shape = LinearShape {
        rows: values[0].get().len() / inputs.max(1),
        inputs,
        outputs,
    };
    assert!(
        values[0].get().len() == shape.rows * inputs
            && values.get(2).is_none_or(|bias| bias.get().len() == outputs),
        "linear inputs of the wrong sizes for {shape:?}"
    );
    shape
}

/// The shape of `x · weight`: `x`'s with its last dimension the weight's outputs.
fn linear_output_shape(x: &Values, outputs: usize) -> Shape {
    let mut shape = x.shape();
    *shape.as_mut_slice().last_mut().expect("x has dimensions") = outputs;
    shape
}

/// `x · weight + bias` of `[x, weight, bias?]`.
/// In inference: on x86-64 with AVX-512, from the weight packed once (`weight_cache`).
pub(super) fn linear(tensors: &[FlexTensor]) -> FlexTensor {
    let values: Vec<Values> = tensors.iter().map(Values::of).collect();
    let shape = linear_shape(&values);
    #[cfg(target_arch = "x86_64")]
    let packed = super::weight_cache::packed(&tensors[1], values[1].get(), shape);
    #[cfg(target_arch = "x86_64")]
    let weight = match &packed {
        Some(packed) => Weight::Packed(packed),
        None => Weight::RowMajor(values[1].get()),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let weight = Weight::RowMajor(values[1].get());
    let output = kernels::linear(
        values[0].get(),
        weight,
        values.get(2).map(Values::get),
        shape,
    );
    tensor(output, linear_output_shape(&values[0], shape.outputs))
}

#[derive(Debug)]
struct LinearBackward;

#[derive(Debug, Clone)]
struct LinearState {
    x: Values,
    weight: Values,
    shape: LinearShape,
}

impl<const N: usize> Backward<Flex, N> for LinearBackward {
    type State = LinearState;

    fn backward(
        self,
        ops: Ops<LinearState, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = Values::of(&grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let (grad_x, grad_weight, grad_bias) =
            kernels::linear_backward(state.x.get(), state.weight.get(), grad.get(), state.shape);
        let shapes = [
            state.x.shape(),
            state.weight.shape(),
            Shape::new([state.shape.outputs]),
        ];
        for ((parent, grad), shape) in ops
            .parents
            .into_iter()
            .zip([grad_x, grad_weight, grad_bias])
            .zip(shapes)
        {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, tensor(grad, shape));
            }
        }
    }
}

/// `x · weight + bias` of `[x, weight, bias?]` in burn's graph.
pub(super) fn linear_tracked(tensors: Vec<TrackedTensor>) -> TrackedTensor {
    let values: Vec<Values> = tensors.iter().map(|t| Values::of(&t.primitive)).collect();
    let shape = linear_shape(&values);
    let forward = |for_backward: bool| {
        let output = kernels::linear(
            values[0].get(),
            Weight::RowMajor(values[1].get()),
            values.get(2).map(Values::get),
            shape,
        );
        let state = for_backward.then(|| LinearState {
            x: values[0].clone(),
            weight: values[1].clone(),
            shape,
        });
        (
            tensor(output, linear_output_shape(&values[0], shape.outputs)),
            state,
        )
    };
    match tensors.len() {
        2 => record::<_, 2>(LinearBackward, &tensors, forward),
        _ => record::<_, 3>(LinearBackward, &tensors, forward),
    }
}
