//! Training checkpoints: everything a run needs to continue exactly, in one safetensors file.
//!
//! Tensors: the model under Hugging Face names (so the file also loads as a plain model) and the
//! optimizer moments as `optimizer/exp_avg/<module path>` and `optimizer/exp_avg_sq/<module path>`.
//! Metadata: [`TrainingState`] as JSON (step, data position, schedule, optimizer and model
//! configuration, command line) and a SHA-256 over every tensor, so a file damaged after it was
//! written is recognised and skipped on resume.

use std::collections::BTreeMap;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::trainer::Pretrainer;
use crate::checkpoint::{model_tensors, serialize_safetensors, Checkpoint, NamedTensorBytes};
use crate::config::BertConfig;
use crate::data::DataPosition;
use crate::error::CheckpointError;
use crate::optim::{LambConfig, LossScaler, LrSchedule, Moments};

const FORMAT: &str = "bert-rs-training-checkpoint";
const EXP_AVG: &str = "optimizer/exp_avg/";
const EXP_AVG_SQ: &str = "optimizer/exp_avg_sq/";

/// The non-tensor state of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimizer steps taken (the schedule's and bias correction's counter).
    pub step: u64,
    /// Step added to checkpoint names (phase 2 counts on from phase 1's last step).
    pub step_offset: u64,
    /// Where the data reader continues.
    pub data_position: DataPosition,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// Optimizer hyper-parameters.
    pub lamb: LambConfig,
    /// Seed of data order and dropout.
    pub seed: u64,
    /// The model's configuration.
    pub config: BertConfig,
    /// The command line that started the run.
    pub command_line: Vec<String>,
    /// The loss scale and skip counts (absent in checkpoints of runs without loss scaling).
    #[serde(default)]
    pub loss_scaler: LossScaler,
}

/// Serialises the trainer and `state` (whose `step` must be the trainer's).
pub fn encode<AB: AutodiffBackend>(
    trainer: &Pretrainer<AB>,
    state: &TrainingState,
) -> Result<Vec<u8>, CheckpointError> {
    let mut tensors = model_tensors(&trainer.model)?;
    for (name, moments) in trainer.optimizer.moments() {
        tensors.push(host_tensor(
            format!("{EXP_AVG}{name}"),
            moments.exp_avg.clone(),
        )?);
        tensors.push(host_tensor(
            format!("{EXP_AVG_SQ}{name}"),
            moments.exp_avg_sq.clone(),
        )?);
    }
    let state_json = serde_json::to_string(state).expect("TrainingState serialises");
    serialize_safetensors(
        &tensors,
        [
            ("bert_rs_format".to_string(), FORMAT.to_string()),
            ("training_state".to_string(), state_json),
            ("sha256".to_string(), checksum(&tensors)),
        ],
    )
}

fn host_tensor<B: Backend>(
    name: String,
    tensor: Tensor<B, 1>,
) -> Result<NamedTensorBytes, CheckpointError> {
    let data = tensor.into_data().convert::<f32>();
    Ok((name, data.shape.to_vec(), data.as_bytes().to_vec()))
}

/// SHA-256 over the tensors in name order (name, shape and bytes of each).
fn checksum(tensors: &[NamedTensorBytes]) -> String {
    let mut sorted: Vec<&NamedTensorBytes> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    for (name, shape, bytes) in sorted {
        hasher.update(name.as_bytes());
        for dim in shape {
            hasher.update((*dim as u64).to_le_bytes());
        }
        hasher.update(bytes);
    }
    format!("{:x}", hasher.finalize())
}

/// A checkpoint read back and verified.
pub struct DecodedCheckpoint {
    /// The run's state.
    pub state: TrainingState,
    /// The model's tensors (load them with [`Checkpoint::load_into`]).
    pub model: Checkpoint,
    /// The optimizer moments by parameter (module path), flattened float32.
    pub moments: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
}

/// Reads and verifies a training checkpoint; `source_name` is used in messages.
pub fn decode(bytes: Vec<u8>, source_name: &str) -> Result<DecodedCheckpoint, CheckpointError> {
    let invalid = |message: String| CheckpointError::Format {
        source_name: source_name.to_string(),
        format: FORMAT,
        message,
    };
    let (state_json, expected_sum, actual_sum) = {
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("bert_rs_format").map(String::as_str) != Some(FORMAT) {
            return Err(invalid("not a bert-rs training checkpoint".into()));
        }
        let file =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
        let tensors: Vec<NamedTensorBytes> = file
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec(), view.data().to_vec()))
            .collect();
        (
            metadata.get("training_state").cloned().unwrap_or_default(),
            metadata.get("sha256").cloned().unwrap_or_default(),
            checksum(&tensors),
        )
    };
    if expected_sum != actual_sum {
        return Err(invalid(
            "checksum mismatch: the file was damaged after it was written".into(),
        ));
    }
    let state: TrainingState = serde_json::from_str(&state_json)
        .map_err(|e| invalid(format!("bad training state: {e}")))?;
    let mut model = Checkpoint::from_bytes(bytes, source_name)?;
    let mut moments = BTreeMap::new();
    let exp_avg = model.split_off(EXP_AVG);
    let exp_avg_sq = model.split_off(EXP_AVG_SQ);
    for (name, first) in &exp_avg {
        let parameter = &name[EXP_AVG.len()..];
        let second = exp_avg_sq
            .get(&format!("{EXP_AVG_SQ}{parameter}"))
            .ok_or_else(|| invalid(format!("no exp_avg_sq for {parameter}")))?;
        let values = |t: &burn_store::TensorSnapshot| -> Result<Vec<f32>, CheckpointError> {
            t.to_data()
                .map_err(|e| invalid(format!("{parameter}: {e:?}")))?
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| invalid(format!("{parameter}: {e:?}")))
        };
        moments.insert(parameter.to_string(), (values(first)?, values(second)?));
    }
    Ok(DecodedCheckpoint {
        state,
        model,
        moments,
    })
}

impl DecodedCheckpoint {
    /// Puts the model weights and optimizer moments into `trainer`; the trainer's configuration
    /// must be the checkpoint's. `restart_step` keeps the weights and moments but restarts the
    /// step counter at 0 (phase 2 starting from phase 1, as the reference does).
    pub fn restore_into<AB: AutodiffBackend>(
        &self,
        trainer: &mut Pretrainer<AB>,
        restart_step: bool,
        device: &AB::Device,
    ) -> Result<(), CheckpointError> {
        self.model.load_into(&mut trainer.model)?.require_exact()?;
        let moments = self
            .moments
            .iter()
            .map(|(name, (exp_avg, exp_avg_sq))| {
                let upload = |values: &Vec<f32>| {
                    Tensor::<AB::InnerBackend, 1>::from_data(
                        TensorData::new(values.clone(), [values.len()]),
                        device,
                    )
                };
                (
                    name.clone(),
                    Moments {
                        exp_avg: upload(exp_avg),
                        exp_avg_sq: upload(exp_avg_sq),
                    },
                )
            })
            .collect();
        let step = if restart_step { 0 } else { self.state.step };
        trainer.optimizer.restore(step, moments);
        if !restart_step {
            // Phase 2 starts its own scaler; a resumed run continues at the saved scale.
            trainer.loss_scaler = self.state.loss_scaler;
        }
        Ok(())
    }
}
