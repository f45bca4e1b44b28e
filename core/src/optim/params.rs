//! Gathering a module's parameters and gradients under their module paths, and writing updated
//! values back: how [`Lamb`] steps a whole burn module at once (global clipping needs every
//! gradient before any update).

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use super::lamb::{Lamb, NamedParam};

impl<B: burn::tensor::backend::Backend> Lamb<B> {
    /// One step over every float parameter of `module` that has a gradient in `grads`; parameters
    /// are named by their module path (e.g. `bert.encoder.layers.0.attention.query.weight`), which
    /// decides their weight decay. Returns the updated module and the global gradient norm `[1]`.
    pub fn step_module<AB, M>(
        &mut self,
        lr: f64,
        module: M,
        grads: &GradientsParams,
    ) -> (M, Tensor<B, 1>)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let (params, placement) = module_params(&module, grads);
        let step = self.step(lr, params);
        (
            placement.scatter(module, step.values),
            step.global_grad_norm,
        )
    }
}

/// Where each gathered parameter goes back into its module.
#[derive(Debug)]
pub struct ParamPlacement {
    shapes: Vec<(ParamId, Vec<usize>)>,
}

impl ParamPlacement {
    /// `module` with the parameters replaced by `values` (flattened, in gathering order).
    pub fn scatter<AB: AutodiffBackend, M: AutodiffModule<AB>>(
        self,
        module: M,
        values: Vec<Tensor<AB::InnerBackend, 1>>,
    ) -> M {
        let updates = self
            .shapes
            .into_iter()
            .zip(values)
            .map(|((id, shape), value)| (id, (shape, value)))
            .collect();
        module.map(&mut Scatter::<AB> { updates })
    }
}

/// Every float parameter of `module` with a gradient in `grads`, flattened and named by module
/// path, and where each goes back.
pub fn module_params<AB: AutodiffBackend, M: AutodiffModule<AB>>(
    module: &M,
    grads: &GradientsParams,
) -> (Vec<NamedParam<AB::InnerBackend>>, ParamPlacement) {
    let mut gather = Gather::<AB> {
        grads,
        path: Vec::new(),
        params: Vec::new(),
        shapes: Vec::new(),
    };
    module.visit(&mut gather);
    let Gather { params, shapes, .. } = gather;
    (params, ParamPlacement { shapes })
}

struct Gather<'a, AB: AutodiffBackend> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    params: Vec<NamedParam<AB::InnerBackend>>,
    shapes: Vec<(ParamId, Vec<usize>)>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Gather<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some(grad) = self.grads.get::<AB::InnerBackend, D>(param.id) else {
            return;
        };
        let value = param.val().inner();
        let shape = value.dims().to_vec();
        let numel: usize = shape.iter().product();
        // `visit_float` is called for the parameter itself: its own name ends the path.
        self.params.push(NamedParam {
            name: self.path.join("."),
            value: value.reshape([numel]),
            grad: grad.reshape([numel]),
        });
        self.shapes.push((param.id, shape));
    }
}

struct Scatter<AB: AutodiffBackend> {
    updates: HashMap<ParamId, (Vec<usize>, Tensor<AB::InnerBackend, 1>)>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Scatter<AB> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.updates.remove(&id) {
            Some((shape, value)) => {
                let shape: [usize; D] = shape.try_into().expect("rank is preserved");
                with_value(&tensor, value.reshape(shape))
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// A parameter tensor holding `value` instead of `tensor`'s, tracked for gradients as it was.
pub(crate) fn with_value<AB: AutodiffBackend, const D: usize>(
    tensor: &Tensor<AB, D>,
    value: Tensor<AB::InnerBackend, D>,
) -> Tensor<AB, D> {
    let updated = Tensor::from_inner(value);
    if tensor.is_require_grad() {
        updated.require_grad()
    } else {
        updated
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use crate::model::{BertForPreTraining, TokenBatch};
    use crate::optim::LambConfig;
    use crate::BertConfig;
    use burn::backend::{Autodiff, NdArray};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::{Int, TensorData};

    type AB = Autodiff<NdArray>;

    #[test]
    fn steps_a_whole_model_by_module_path_and_learns() {
        let config = BertConfig {
            vocab_size: 40,
            hidden_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            intermediate_size: 64,
            max_position_embeddings: 8,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            ..BertConfig::base()
        };
        let device = Default::default();
        let mut model = BertForPreTraining::<AB>::new(&config, &device);
        let batch = TokenBatch {
            input_ids: vec![
                vec![2, 5, 6, 3],
                vec![2, 9, 3, 0],
                vec![2, 7, 8, 3],
                vec![2, 11, 3, 0],
            ],
            token_type_ids: None,
            attention_mask: Some(vec![
                vec![1, 1, 1, 1],
                vec![1, 1, 1, 0],
                vec![1, 1, 1, 1],
                vec![1, 1, 1, 0],
            ]),
        };
        let labels =
            Tensor::<AB, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 0, 1], [4]), &device);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let mut optimizer = Lamb::new(LambConfig {
            weight_decay: 0.0,
            ..LambConfig::default()
        });
        let mut losses = Vec::new();
        for _ in 0..40 {
            let input = batch.to_input::<AB>(&config, &device).unwrap();
            let (_, nsp_logits) = model.forward(input);
            let loss = loss_fn.forward(nsp_logits, labels.clone());
            losses.push(loss.clone().into_scalar());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let (updated, norm) = optimizer.step_module(2e-3, model, &grads);
            model = updated;
            assert!(norm.into_scalar() > 0.0);
        }
        assert!(
            losses[39] < 0.1 * losses[0],
            "loss did not fall: {losses:?}"
        );
        let moments = optimizer.moments();
        let names: Vec<&String> = moments.keys().collect();
        assert!(
            names
                .iter()
                .any(|n| *n == "bert.encoder.layers.0.attention.query.weight"),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| *n == "bert.embeddings.layer_norm.gamma"),
            "{names:?}"
        );
        assert_eq!(
            optimizer.weight_decay("bert.embeddings.layer_norm.gamma"),
            0.0
        );
    }
}
