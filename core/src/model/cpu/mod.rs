//! Fused CPU kernels for burn's Flex backend: fully connected layers (product and bias in one
//! pass), LayerNorm with its residual sum, GELU, and multi-head attention as one operation, each
//! threaded and vectorised, in inference (`Flex`) and in training (`Autodiff<Flex>`, with
//! hand-written backward passes registered in burn's graph); and dropout keep masks drawn in
//! parallel. [`FlatValues`] hands a parameter's buffer to the optimizer's CPU step
//! (`optim/lamb/cpu.rs`).
//!
//! burn 0.21's Flex computes these as many separate passes (attention, and a product then its
//! bias, each product's result copied once more into a freshly aligned buffer) or on one thread
//! with a scalar `erf` (GELU), and its LayerNorm takes the variance as `E[x²] - mean²`; under
//! autodiff it breaks softmax and LayerNorm into a dozen basic operations. [`super::ops`] and
//! [`super::precision::linear`] call these kernels when the tensors are Flex's (found by the type
//! of burn's float primitive) and the plain composition of burn operations otherwise; tests hold
//! the two to the same results.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod flex;
mod kernels;
pub(crate) mod math;
#[cfg(any(target_arch = "wasm32", test))]
mod simd128;
#[cfg(target_arch = "x86_64")]
mod weight_cache;

use std::any::{Any, TypeId};

use burn::backend::autodiff::Autodiff;
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Distribution, Tensor, TensorData, TensorPrimitive};

use kernels::AttentionShape;

/// The float primitive of Flex's autodiff backend.
type TrackedTensor = FloatTensor<Autodiff<Flex>>;

/// Float tensors of one Flex backend, as the kernels take them.
enum Primitives {
    /// `Flex`: no gradient is recorded.
    Plain(Vec<FlexTensor>),
    /// `Autodiff<Flex>` (any checkpointing strategy): the operation joins burn's graph.
    Tracked(Vec<TrackedTensor>),
}

/// The float32 primitive of `tensor`; `None` for other dtypes.
fn float32<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<B::FloatTensorPrimitive> {
    (tensor.dtype() == DType::F32).then(|| tensor.clone().into_primitive().tensor())
}

/// The float primitive of `tensor`, moved out of it (a kernel may then write over its buffer).
fn owned_float32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> B::FloatTensorPrimitive {
    tensor.into_primitive().tensor()
}

/// [`on_flex`] where [`runs_on`] has already said yes for `B`.
fn flex_primitives<B: Backend>(primitives: Vec<B::FloatTensorPrimitive>) -> Primitives {
    on_flex::<B>(primitives).expect("runs_on: the primitives are Flex's or its autodiff's")
}

/// `primitives` when they are all Flex's or all Flex's autodiff backend's; `None` otherwise.
fn on_flex<B: Backend>(primitives: Vec<B::FloatTensorPrimitive>) -> Option<Primitives> {
    let plain: Option<Vec<FlexTensor>> = primitives.iter().map(downcast_ref).collect();
    if let Some(plain) = plain {
        return Some(Primitives::Plain(plain));
    }
    let tracked: Option<Vec<TrackedTensor>> = primitives.iter().map(downcast_ref).collect();
    tracked.map(Primitives::Tracked)
}

/// A clone of `value` as a `U` when it is one.
fn downcast_ref<T: 'static, U: Clone + 'static>(value: &T) -> Option<U> {
    (value as &dyn Any).downcast_ref::<U>().cloned()
}

/// The result of a kernel back in backend `B`, the one its inputs came from.
fn into_tensor<B: Backend, const D: usize, T: 'static>(primitive: T) -> Tensor<B, D> {
    let mut slot = Some(primitive);
    let primitive = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B::FloatTensorPrimitive>>()
        .and_then(Option::take)
        .expect("a kernel's result has its inputs' backend");
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// Whether the kernels take `tensor`: float32 on Flex, with or without autodiff.
pub(crate) fn runs_on<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    tensor.dtype() == DType::F32 && is_flex::<B>()
}

/// Runs `f` on a thread of rayon's global pool when `B` is Flex and the caller is on no pool
/// already; elsewhere (other backends, WebAssembly, a pool's own thread) where it is called.
/// The kernels split each operation over the pool: started from a thread outside it, every
/// operation hands its work over and sleeps until the pool is done, which costs two context
/// switches per operation (on a MiniLM pass, 2 threads: 7% of the time).
pub(crate) fn on_pool<B: Backend, R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // A WebAssembly page has no other thread.
    let moves =
        !cfg!(target_arch = "wasm32") && is_flex::<B>() && rayon::current_thread_index().is_none();
    if moves {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// Whether `B` is Flex, with or without autodiff.
fn is_flex<B: Backend>() -> bool {
    let primitive = TypeId::of::<B::FloatTensorPrimitive>();
    primitive == TypeId::of::<FlexTensor>() || primitive == TypeId::of::<TrackedTensor>()
}

/// A dropout keep mask of `shape` (1 kept, with probability `keep`, else 0), float32 on Flex, with
/// or without autodiff, drawn by a counter-based hash whose key comes from the backend's seeded
/// generator: the same seed gives the same masks, on any number of threads, at a fraction of the
/// cost of burn's per-element Bernoulli draws. `None` on other backends.
pub(crate) fn keep_mask<B: Backend, const D: usize>(
    shape: [usize; D],
    keep: f64,
    device: &B::Device,
) -> Option<Tensor<B, D>> {
    if !is_flex::<B>() {
        return None;
    }
    // Four uniform float32 draws: 23 random bits each (burn's uniform float32 has 23; scaled by
    // 2^24 the lowest bit is 0), 92 for the key.
    let draws: Vec<f32> = Tensor::<B, 1>::random([4], Distribution::Uniform(0.0, 1.0), device)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .ok()?;
    let bits = draws
        .iter()
        .map(|&u| u64::from((u * (1u32 << 24) as f32) as u32));
    let [a, b, c, d]: [u64; 4] = bits.collect::<Vec<_>>().try_into().ok()?;
    let key = [a << 40 | b << 16 | c >> 8, c << 56 | d];
    let keep_threshold = (keep.clamp(0.0, 1.0) * f64::from(1u32 << 24)).round() as u32;
    let len = shape.iter().product();
    let mask = kernels::keep_mask(len, key, keep_threshold);
    Some(Tensor::from_data(TensorData::new(mask, shape), device))
}

/// A one-dimensional float32 tensor of plain Flex (no autodiff) as its values, laid out from
/// the start of its own buffer: read in place, and written over in place when no other tensor
/// shares the buffer (else the first write copies it).
pub(crate) struct FlatValues(FlexTensor);

impl FlatValues {
    /// Whether [`Self::of`] takes `tensor`: float32 on plain Flex.
    pub(crate) fn takes<B: Backend>(tensor: &Tensor<B, 1>) -> bool {
        tensor.dtype() == DType::F32
            && TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<FlexTensor>()
    }

    /// The values of `tensor`, when [`Self::takes`] it.
    pub(crate) fn of<B: Backend>(tensor: Tensor<B, 1>) -> Option<Self> {
        if !Self::takes(&tensor) {
            return None;
        }
        let mut slot = Some(owned_float32(tensor));
        let flex = (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<FlexTensor>>()
            .and_then(Option::take)?;
        Some(Self(flex.to_contiguous()))
    }

    /// `len` zeros.
    pub(crate) fn zeros(len: usize) -> Self {
        Self(flex::tensor(
            vec![0.0; len],
            burn::tensor::Shape::new([len]),
        ))
    }

    /// The values.
    pub(crate) fn get(&self) -> &[f32] {
        self.0.storage::<f32>()
    }

    /// The values to write over: this tensor's own buffer, copied first if it is shared (or
    /// moved, if inference packed it: the packed copy is then dropped).
    pub(crate) fn get_mut(&mut self) -> &mut [f32] {
        let values = self.0.storage_mut::<f32>();
        #[cfg(target_arch = "x86_64")]
        weight_cache::forget_replaced();
        values
    }

    /// The values as a tensor of backend `B`, the one [`Self::of`] took them from.
    pub(crate) fn into_tensor<B: Backend>(self) -> Tensor<B, 1> {
        into_tensor(self.0)
    }
}

/// `LayerNorm(input + residual)`, or of `input` alone, over the last dimension, on Flex (written
/// over `input`'s buffer in inference when no other tensor shares it); `input` back on other
/// backends.
pub(crate) fn layer_norm<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    residual: Option<&Tensor<B, D>>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    epsilon: f64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let width = input.dims()[D - 1];
    let same_shape = residual.is_none_or(|residual| residual.dims() == input.dims());
    if !runs_on(&input) || !same_shape || gamma.dims() != [width] || beta.dims() != [width] {
        return Err(input);
    }
    let mut others = Vec::new();
    if let Some(residual) = residual {
        others.push(float32(residual));
    }
    others.extend([float32(gamma), float32(beta)]);
    let Some(others) = others.into_iter().collect::<Option<Vec<_>>>() else {
        return Err(input);
    };
    let primitives = [vec![owned_float32(input)], others].concat();
    Ok(match flex_primitives::<B>(primitives) {
        Primitives::Plain(tensors) => into_tensor(flex::layer_norm(tensors, epsilon)),
        Primitives::Tracked(tensors) => into_tensor(flex::layer_norm_tracked(tensors, epsilon)),
    })
}

/// `x · weight + bias` (burn's `Linear`: `weight` `[inputs, outputs]`) over `x`'s last
/// dimension, on Flex; `None` on other backends.
pub(crate) fn linear<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    weight: &Tensor<B, 2>,
    bias: Option<&Tensor<B, 1>>,
) -> Option<Tensor<B, D>> {
    let [inputs, outputs] = weight.dims();
    let bias_fits = bias.is_none_or(|bias| bias.dims() == [outputs]);
    if x.dims()[D - 1] != inputs || !bias_fits {
        return None;
    }
    let mut primitives = vec![float32(x)?, float32(weight)?];
    if let Some(bias) = bias {
        primitives.push(float32(bias)?);
    }
    Some(match on_flex::<B>(primitives)? {
        Primitives::Plain(tensors) => into_tensor(flex::linear(&tensors)),
        Primitives::Tracked(tensors) => into_tensor(flex::linear_tracked(tensors)),
    })
}

/// GELU (exact error function) of every element, on Flex (written over `input`'s buffer in
/// inference when no other tensor shares it); `input` back on other backends.
pub(crate) fn gelu<B: Backend, const D: usize>(
    input: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !runs_on(&input) {
        return Err(input);
    }
    Ok(match flex_primitives::<B>(vec![owned_float32(input)]) {
        Primitives::Plain(mut tensors) => into_tensor(flex::gelu(tensors.remove(0))),
        Primitives::Tracked(mut tensors) => into_tensor(flex::gelu_tracked(tensors.remove(0))),
    })
}

/// Multi-head attention on Flex: `softmax(Q·Kᵀ / sqrt(head_size) + bias) · V` per head, with the
/// probabilities dropped out where `dropout` gives the keep mask `[B, heads, S, S]` (0 or 1) and
/// the probability; queries, keys, values and the result `[B, S, H]`, the additive key bias
/// `[B, S]`. `None` on other backends.
pub(crate) fn attention<B: Backend>(
    [query, key, value]: [&Tensor<B, 3>; 3],
    key_bias: &Tensor<B, 2>,
    heads: usize,
    dropout: Option<(&Tensor<B, 4>, f64)>,
) -> Option<Tensor<B, 3>> {
    let [batch, seq, hidden] = query.dims();
    let shapes_fit = key.dims() == query.dims()
        && value.dims() == query.dims()
        && key_bias.dims() == [batch, seq]
        && dropout.is_none_or(|(keep, _)| keep.dims() == [batch, heads, seq, seq]);
    if batch * seq * hidden == 0 || hidden % heads != 0 || !shapes_fit {
        return None;
    }
    let shape = AttentionShape {
        batch,
        seq,
        heads,
        head_size: hidden / heads,
    };
    let mut primitives = vec![
        float32(query)?,
        float32(key)?,
        float32(value)?,
        float32(key_bias)?,
    ];
    if let Some((keep, _)) = dropout {
        primitives.push(float32(keep)?);
    }
    let dropout_scale = dropout.map(|(_, probability)| (1.0 / (1.0 - probability)) as f32);
    Some(match on_flex::<B>(primitives)? {
        Primitives::Plain(tensors) => into_tensor(flex::attention(&tensors, shape, dropout_scale)),
        Primitives::Tracked(tensors) => {
            into_tensor(flex::attention_tracked(tensors, shape, dropout_scale))
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    //! Each kernel against the plain composition of burn operations it replaces, forward and
    //! backward, on random shapes and values, masks and dropout included: the kernels on Flex
    //! (under autodiff) in float32, the plain form on ndarray in float64 (the exact figure, which
    //! the kernels must approach as closely as float32 allows). The float64 tensors are made so
    //! explicitly: ndarray's default float type is process-wide, set by whichever test runs first.

    use burn::backend::autodiff::Autodiff;
    use burn::backend::flex::Flex;
    use burn::backend::NdArray;
    use burn::tensor::activation::softmax;
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use burn::tensor::{DType, Tensor, TensorData};

    type Fused = Autodiff<Flex>;
    type Plain = Autodiff<NdArray>;

    /// What a case gives: the output's values, then each input's gradient.
    type Outcome = (Vec<f32>, Vec<Vec<f32>>);

    /// Deterministic values in [-scale, scale).
    pub(crate) fn random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    /// The precision each side computes in: the kernels' float32, the reference's float64.
    fn precision<B: Backend>() -> DType {
        if std::any::TypeId::of::<B>() == std::any::TypeId::of::<Plain>() {
            DType::F64
        } else {
            DType::F32
        }
    }

    fn tensor<B: Backend, const D: usize>(values: &[f32], shape: [usize; D]) -> Tensor<B, D> {
        let data = TensorData::new(values.to_vec(), shape).convert_dtype(precision::<B>());
        let tensor = Tensor::from_data(data, (&Default::default(), precision::<B>()));
        assert_eq!(tensor.dtype(), precision::<B>());
        tensor
    }

    fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
        tensor.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn gradient<B: AutodiffBackend, const D: usize>(
        input: &Tensor<B, D>,
        grads: &B::Gradients,
    ) -> Vec<f32> {
        values(input.grad(grads).expect("a gradient"))
    }

    /// `Σ output · weights`'s gradients, with random weights, and the output's values.
    fn backward<B: AutodiffBackend, const D: usize>(
        output: Tensor<B, D>,
        seed: u64,
    ) -> (Vec<f32>, B::Gradients) {
        let weights = random(output.shape().num_elements(), seed, 1.0);
        let weights = tensor::<B, D>(&weights, output.dims());
        let grads = (output.clone() * weights).sum().backward();
        (values(output), grads)
    }

    #[track_caller]
    fn assert_close(what: &str, fused: &[f32], plain: &[f32], tolerance: f32) {
        assert_eq!(fused.len(), plain.len(), "{what}: lengths");
        let scale = plain.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        for (i, (f, p)) in fused.iter().zip(plain).enumerate() {
            assert!(
                (f - p).abs() <= tolerance * scale,
                "{what}[{i}]: fused {f}, plain {p} (tolerance {tolerance} x {scale})"
            );
        }
    }

    #[track_caller]
    fn compare(what: &str, fused: Outcome, plain: Outcome) {
        assert_close(&format!("{what}: output"), &fused.0, &plain.0, 2e-6);
        assert_eq!(fused.1.len(), plain.1.len());
        for (i, (f, p)) in fused.1.iter().zip(&plain.1).enumerate() {
            assert_close(&format!("{what}: gradient {i}"), f, p, 1e-5);
        }
    }

    fn layer_norm_case<B: AutodiffBackend>(
        shape: [usize; 3],
        with_residual: bool,
        seed: u64,
    ) -> Outcome {
        let width = shape[2];
        let len = shape.iter().product();
        // A large mean on the first row: the variance must still be computed centred (as
        // E[x²] - mean², it would lose digits here).
        let mut input = random(len, seed, 2.0);
        input.iter_mut().take(width).for_each(|x| *x += 30.0);
        let input = tensor::<B, 3>(&input, shape).require_grad();
        let residual = tensor::<B, 3>(&random(len, seed + 1, 1.0), shape).require_grad();
        let gamma = tensor::<B, 1>(&random(width, seed + 2, 1.5), [width]).require_grad();
        let beta = tensor::<B, 1>(&random(width, seed + 3, 0.5), [width]).require_grad();
        let epsilon = 1e-12;
        let residual_used = with_residual.then_some(&residual);
        let output = super::layer_norm(input.clone(), residual_used, &gamma, &beta, epsilon)
            .unwrap_or_else(|input| {
                let sum = match residual_used {
                    Some(residual) => input.clone() + residual.clone(),
                    None => input.clone(),
                };
                let centred = sum.clone() - sum.mean_dim(2);
                let variance = centred.clone().powi_scalar(2).mean_dim(2);
                centred / (variance + epsilon).sqrt() * gamma.clone().unsqueeze()
                    + beta.clone().unsqueeze()
            });
        let (output, grads) = backward(output, seed + 4);
        let mut gradients = vec![gradient(&input, &grads)];
        if with_residual {
            gradients.push(gradient(&residual, &grads));
        }
        gradients.extend([gradient(&gamma, &grads), gradient(&beta, &grads)]);
        (output, gradients)
    }

    #[test]
    fn layer_norm_equals_the_plain_form() {
        for (seed, shape) in [[1, 1, 1], [2, 3, 7], [3, 17, 32], [2, 9, 384]]
            .into_iter()
            .enumerate()
        {
            for with_residual in [false, true] {
                let seed = seed as u64 * 10;
                compare(
                    &format!("LayerNorm {shape:?} residual {with_residual}"),
                    layer_norm_case::<Fused>(shape, with_residual, seed),
                    layer_norm_case::<Plain>(shape, with_residual, seed),
                );
            }
        }
    }

    /// A fully connected layer's sizes: batch, sequence, inputs, outputs.
    type LinearCase = [usize; 4];

    fn linear_case<B: AutodiffBackend>(
        [batch, seq, inputs, outputs]: LinearCase,
        with_bias: bool,
        seed: u64,
    ) -> Outcome {
        let x = tensor::<B, 3>(
            &random(batch * seq * inputs, seed, 1.5),
            [batch, seq, inputs],
        )
        .require_grad();
        let weight = tensor::<B, 2>(&random(inputs * outputs, seed + 1, 0.5), [inputs, outputs])
            .require_grad();
        let bias = tensor::<B, 1>(&random(outputs, seed + 2, 1.0), [outputs]).require_grad();
        let bias_used = with_bias.then_some(&bias);
        let output = super::linear(&x, &weight, bias_used).unwrap_or_else(|| {
            let product = x.clone().matmul(weight.clone().unsqueeze());
            match bias_used {
                Some(bias) => product + bias.clone().unsqueeze(),
                None => product,
            }
        });
        let (output, grads) = backward(output, seed + 3);
        let mut gradients = vec![gradient(&x, &grads), gradient(&weight, &grads)];
        if with_bias {
            gradients.push(gradient(&bias, &grads));
        }
        (output, gradients)
    }

    /// In inference a weight is packed at its second use (on x86-64 with AVX-512): the layer's
    /// results keep their bits.
    #[test]
    fn a_layer_gives_the_same_bits_once_its_weight_is_packed() {
        let [rows, inputs, outputs] = [130, 384, 96];
        let x = tensor::<Flex, 2>(&random(rows * inputs, 1, 1.5), [rows, inputs]);
        let weight = tensor::<Flex, 2>(&random(inputs * outputs, 2, 0.5), [inputs, outputs]);
        let bias = tensor::<Flex, 1>(&random(outputs, 3, 1.0), [outputs]);
        let runs: Vec<Vec<u32>> = (0..3)
            .map(|_| {
                let output = super::linear(&x, &weight, Some(&bias)).expect("on Flex");
                let values = output.into_data().to_vec::<f32>().expect("float32");
                values.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert!(runs[1] == runs[0] && runs[2] == runs[0]);
    }

    #[test]
    fn linear_equals_the_plain_form() {
        let shapes: [LinearCase; 5] = [
            [1, 1, 1, 1],
            [1, 3, 5, 7],
            [2, 17, 32, 48],
            [3, 40, 64, 256],
            [1, 130, 384, 96],
        ];
        for (seed, shape) in shapes.into_iter().enumerate() {
            for with_bias in [true, false] {
                let seed = seed as u64 * 10;
                compare(
                    &format!("linear {shape:?} bias {with_bias}"),
                    linear_case::<Fused>(shape, with_bias, seed),
                    linear_case::<Plain>(shape, with_bias, seed),
                );
            }
        }
    }

    fn gelu_case<B: AutodiffBackend>(len: usize, seed: u64) -> Outcome {
        // Across the error function's ranges, its tails and exact zeros.
        let mut x = random(len, seed, 8.0);
        x.iter_mut().step_by(7).for_each(|x| *x = 0.0);
        let input = tensor::<B, 2>(&x, [1, len]).require_grad();
        let output = super::gelu(input.clone()).unwrap_or_else(|input| {
            input.clone()
                * (input.clone() / std::f64::consts::SQRT_2)
                    .erf()
                    .add_scalar(1.0)
                * 0.5
        });
        let (output, grads) = backward(output, seed + 1);
        (output, vec![gradient(&input, &grads)])
    }

    #[test]
    fn gelu_equals_the_plain_form() {
        for (seed, len) in [1, 15, 16, 1000, 40_000].into_iter().enumerate() {
            let seed = seed as u64;
            compare(
                &format!("GELU of {len}"),
                gelu_case::<Fused>(len, seed),
                gelu_case::<Plain>(len, seed),
            );
        }
    }

    /// A shape of attention: batch, sequence, heads, head size.
    type AttentionCase = [usize; 4];

    fn attention_case<B: AutodiffBackend>(
        [batch, seq, heads, head_size]: AttentionCase,
        dropout: Option<f64>,
        seed: u64,
    ) -> Outcome {
        let hidden = heads * head_size;
        let len = batch * seq * hidden;
        let input = |offset| tensor::<B, 3>(&random(len, seed + offset, 1.5), [batch, seq, hidden]);
        let (query, key, value) = (
            input(0).require_grad(),
            input(1).require_grad(),
            input(2).require_grad(),
        );
        // Padding: the last keys of every sequence but the first masked out, as BERT's mask does.
        let bias: Vec<f32> = (0..batch * seq)
            .map(|i| {
                let (b, s) = (i / seq, i % seq);
                if b > 0 && s >= seq - seq.min(b) && s > 0 {
                    -10000.0
                } else {
                    0.0
                }
            })
            .collect();
        let key_bias = tensor::<B, 2>(&bias, [batch, seq]);
        let keep = dropout.map(|probability| {
            let keep: Vec<f32> = random(batch * heads * seq * seq, seed + 3, 1.0)
                .into_iter()
                .map(|u| f32::from((u + 1.0) / 2.0 >= probability as f32))
                .collect();
            (tensor::<B, 4>(&keep, [batch, heads, seq, seq]), probability)
        });
        let fused = super::attention(
            [&query, &key, &value],
            &key_bias,
            heads,
            keep.as_ref()
                .map(|(keep, probability)| (keep, *probability)),
        );
        let output = fused.unwrap_or_else(|| {
            let split = |x: &Tensor<B, 3>| {
                x.clone()
                    .reshape([batch, seq, heads, head_size])
                    .swap_dims(1, 2)
            };
            let scores = split(&query).matmul(split(&key).transpose()) / (head_size as f64).sqrt()
                + key_bias.clone().reshape([batch, 1, 1, seq]);
            let mut probabilities = softmax(scores, 3);
            if let Some((keep, probability)) = &keep {
                probabilities = probabilities * keep.clone() / (1.0 - probability);
            }
            probabilities
                .matmul(split(&value))
                .swap_dims(1, 2)
                .reshape([batch, seq, hidden])
        });
        let (output, grads) = backward(output, seed + 4);
        let gradients = [&query, &key, &value].map(|x| gradient(x, &grads)).to_vec();
        (output, gradients)
    }

    #[test]
    fn attention_equals_the_plain_form() {
        let shapes: [AttentionCase; 5] = [
            [1, 1, 1, 1],
            [1, 5, 2, 3],
            [3, 17, 4, 8],
            [2, 33, 3, 16],
            [2, 64, 12, 32],
        ];
        for (seed, shape) in shapes.into_iter().enumerate() {
            for dropout in [None, Some(0.1), Some(0.5)] {
                let seed = seed as u64 * 10;
                compare(
                    &format!("attention {shape:?} dropout {dropout:?}"),
                    attention_case::<Fused>(shape, dropout, seed),
                    attention_case::<Plain>(shape, dropout, seed),
                );
            }
        }
    }

    /// GELU and LayerNorm (with a residual) of one random `[2, 9, 384]` input on `B`, the input
    /// also kept by the caller when `shared`: the two outputs, then what the kept inputs hold
    /// afterwards (the input's values when none is kept).
    fn inference_case<B: Backend>(shared: bool) -> [Vec<f32>; 4] {
        let shape = [2, 9, 384];
        let x = random(shape.iter().product(), 7, 3.0);
        let residual = tensor::<B, 3>(&random(x.len(), 8, 1.0), shape);
        let gamma = tensor::<B, 1>(&random(384, 9, 1.5), [384]);
        let beta = tensor::<B, 1>(&random(384, 10, 0.5), [384]);
        let input = tensor::<B, 3>(&x, shape);
        let held = shared.then(|| input.clone());
        let gelu = super::gelu(input).unwrap_or_else(|_| panic!("GELU runs on Flex"));
        let input = tensor::<B, 3>(&x, shape);
        let held_too = shared.then(|| input.clone());
        let normalized = super::layer_norm(input, Some(&residual), &gamma, &beta, 1e-12)
            .unwrap_or_else(|_| panic!("LayerNorm runs on Flex"));
        let held = [held, held_too].map(|held| held.map(values).unwrap_or_else(|| x.clone()));
        let [held_gelu, held_layer_norm] = held;
        [values(gelu), values(normalized), held_gelu, held_layer_norm]
    }

    #[test]
    fn inference_writes_over_its_input_only_when_nothing_else_holds_it() {
        // The tracked path (Autodiff<Flex>) always writes a new buffer: the reference.
        let [gelu, normalized, ..] = inference_case::<Fused>(false);
        let x = random(2 * 9 * 384, 7, 3.0);
        for shared in [false, true] {
            let [in_place_gelu, in_place_normalized, held_gelu, held_normalized] =
                inference_case::<Flex>(shared);
            assert_eq!(in_place_gelu, gelu, "GELU, input shared: {shared}");
            assert_eq!(
                in_place_normalized, normalized,
                "LayerNorm, input shared: {shared}"
            );
            assert_eq!(held_gelu, x, "GELU changed a tensor held elsewhere");
            assert_eq!(
                held_normalized, x,
                "LayerNorm changed a tensor held elsewhere"
            );
        }
    }

    #[test]
    fn the_kernels_run_on_flex_and_only_there() {
        let x = tensor::<Flex, 2>(&[1.0, 2.0], [1, 2]);
        assert!(super::gelu(x.clone()).is_ok());
        assert!(super::gelu(x.cast(burn::tensor::DType::F16)).is_err());
        let y = tensor::<NdArray, 2>(&[1.0, 2.0], [1, 2]);
        assert!(super::gelu(y).is_err());
    }

    #[test]
    fn keep_masks_keep_their_share() {
        let device = Default::default();
        let draw =
            || values(super::keep_mask::<Fused, 2>([1024, 1024], 0.9, &device).expect("on Flex"));
        let (first, second) = (draw(), draw());
        assert_ne!(first, second, "consecutive draws differ");
        for mask in [&first, &second] {
            assert!(mask.iter().all(|&v| v == 0.0 || v == 1.0));
            // 2^20 draws: the kept share's standard deviation is 3e-4.
            let kept = mask.iter().sum::<f32>() / mask.len() as f32;
            assert!((kept - 0.9).abs() < 2e-3, "kept {kept}");
        }
        // Neighbouring elements are independent: a kept element is followed by a kept one
        // 90% of the time, as any element is.
        let pairs = first.windows(2).filter(|w| w[0] == 1.0);
        let (after_kept, both) = pairs.fold((0.0, 0.0), |(n, k), w| (n + 1.0, k + w[1]));
        assert!((both / after_kept - 0.9f32).abs() < 2e-3);
        let all = values(super::keep_mask::<Flex, 1>([1000], 1.0, &device).expect("on Flex"));
        assert!(all.iter().all(|&v| v == 1.0), "keep 1 keeps everything");
        assert!(super::keep_mask::<NdArray, 1>([4], 0.5, &Default::default()).is_none());
    }

    #[test]
    fn a_keep_mask_depends_on_its_key_alone() {
        // (The key comes from the backend's seeded generator; the native tests check that a
        // seed reproduces whole training runs.)
        let mask = |threads, key| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| super::kernels::keep_mask(100_003, key, 1 << 23))
        };
        let one = mask(1, [1, 2]);
        assert_eq!(one, mask(2, [1, 2]));
        assert_eq!(one, mask(3, [1, 2]));
        assert_ne!(one, mask(1, [1, 3]), "another key, another mask");
    }

    #[test]
    fn flex_work_runs_on_the_pool_and_other_backends_where_called() {
        let pool_thread = || rayon::current_thread_index();
        // From a thread of no pool (a test's own), Flex's work moves onto one, with or without
        // autodiff; on the pool it stays where it is; ndarray's never moves.
        assert!(super::on_pool::<Flex, _>(pool_thread).is_some());
        assert!(super::on_pool::<Fused, _>(pool_thread).is_some());
        assert!(super::on_pool::<NdArray, _>(pool_thread).is_none());
        let (outer, inner) =
            rayon::scope(|_| (pool_thread(), super::on_pool::<Flex, _>(pool_thread)));
        assert!(outer.is_some() && inner == outer);
    }
}
