//! Checkpoints in and out: Hugging Face `model.safetensors` / `pytorch_model.bin`, NVIDIA
//! `torch.save({'model': state_dict, ...})` files, and safetensors with Hugging Face names on save.
//!
//! Reading goes through burn-store (its safetensors store and PyTorch pickle reader); names are
//! canonicalised by [`names`], and burn-store's PyTorch adapter transposes Linear weights and
//! renames LayerNorm parameters while the tensors are applied to a module.

pub mod names;
mod pytorch;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, Tensor, TensorData};
use burn_store::{
    ApplyError, BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, ModuleStore,
    PyTorchToBurnAdapter, SafetensorsStore, TensorSnapshot, TensorSnapshotError,
};

use crate::config::BertConfig;
use crate::error::CheckpointError;
use crate::model::Heads;
use names::{canonical_name, hf_to_module_path, module_path_to_hf, StoredName};

/// The tensors of one or more checkpoint files, under canonical Hugging Face names.
pub struct Checkpoint {
    source: String,
    tensors: BTreeMap<String, TensorSnapshot>,
    ignored: Vec<String>,
}

/// What happened when a checkpoint was applied to a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Where the tensors came from.
    pub source: String,
    /// Number of parameters taken from the checkpoint.
    pub loaded: usize,
    /// Parameters of the model the checkpoint lacks (they keep their fresh initialisation).
    pub missing: Vec<String>,
    /// Tensors of the checkpoint the model has no place for.
    pub unexpected: Vec<String>,
    /// Tensors recognised and deliberately skipped: the tied decoder weight, buffers.
    pub ignored: Vec<String>,
}

impl LoadReport {
    /// Fails unless every encoder parameter (`bert.*`) was loaded: a model whose encoder is
    /// partly random is never what a user wants.
    pub fn require_encoder(&self) -> Result<&Self, CheckpointError> {
        let missing: Vec<String> = self
            .missing
            .iter()
            .filter(|name| name.starts_with("bert."))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(self)
        } else {
            Err(CheckpointError::Missing {
                source_name: self.source.clone(),
                names: missing,
            })
        }
    }

    /// Fails unless every parameter was loaded and every tensor used.
    pub fn require_exact(&self) -> Result<&Self, CheckpointError> {
        if !self.missing.is_empty() {
            return Err(CheckpointError::Missing {
                source_name: self.source.clone(),
                names: self.missing.clone(),
            });
        }
        if !self.unexpected.is_empty() {
            return Err(CheckpointError::Unexpected {
                source_name: self.source.clone(),
                names: self.unexpected.clone(),
            });
        }
        Ok(self)
    }
}

pub(crate) const PYTORCH_FORMAT: &str = "PyTorch";
const SAFETENSORS_FORMAT: &str = "safetensors";

impl Checkpoint {
    /// Reads a checkpoint file, recognising safetensors and PyTorch (zip or legacy pickle) files
    /// by their content: a Hugging Face `model.safetensors` or `pytorch_model.bin`, or an NVIDIA
    /// `torch.save({'model': state_dict, 'optimizer': ...})` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref();
        let source_name = path.display().to_string();
        let mut head = [0u8; 16];
        let read = std::fs::File::open(path)
            .and_then(|mut file| file.read(&mut head))
            .map_err(|source| CheckpointError::Io {
                path: source_name.clone(),
                source,
            })?;
        let head = &head[..read];
        // Safetensors first: its header length can begin with the bytes of a pickle opcode.
        if looks_like_safetensors(head) {
            let mut store = SafetensorsStore::from_file(path);
            let snapshots = store
                .get_all_snapshots()
                .map_err(|e| CheckpointError::Format {
                    source_name: source_name.clone(),
                    format: SAFETENSORS_FORMAT,
                    message: e.to_string(),
                })?;
            Self::from_stored(&source_name, snapshots.clone())
        } else if looks_like_pytorch(head) {
            let tensors = pytorch::read_file(path, &source_name, head.starts_with(ZIP_MAGIC))?;
            Self::from_stored(&source_name, tensors)
        } else {
            Err(CheckpointError::UnknownFormat(source_name))
        }
    }

    /// Reads a safetensors checkpoint from memory (the browser's path); `source_name` is used in
    /// messages. PyTorch pickles need a file (their tensors are read lazily from the archive).
    pub fn from_bytes(bytes: Vec<u8>, source_name: &str) -> Result<Self, CheckpointError> {
        if !looks_like_safetensors(&bytes) && looks_like_pytorch(&bytes) {
            return Err(CheckpointError::Format {
                source_name: source_name.to_string(),
                format: PYTORCH_FORMAT,
                message: "PyTorch checkpoints are read from files; convert it to safetensors \
                          (bert-native convert) to load it from memory"
                    .into(),
            });
        }
        if !looks_like_safetensors(&bytes) {
            return Err(CheckpointError::UnknownFormat(source_name.to_string()));
        }
        let mut store = SafetensorsStore::from_bytes(Some(bytes));
        let snapshots = store
            .get_all_snapshots()
            .map_err(|e| CheckpointError::Format {
                source_name: source_name.to_string(),
                format: SAFETENSORS_FORMAT,
                message: e.to_string(),
            })?;
        Self::from_stored(source_name, snapshots.clone())
    }

    fn from_stored(
        source_name: &str,
        stored: impl IntoIterator<Item = (String, TensorSnapshot)>,
    ) -> Result<Self, CheckpointError> {
        let mut tensors = BTreeMap::new();
        let mut ignored = Vec::new();
        let mut decoder_bias = None;
        for (stored_name, snapshot) in stored {
            match canonical_name(&stored_name) {
                StoredName::Parameter(name) => {
                    tensors.insert(name, snapshot);
                }
                StoredName::DecoderBias => decoder_bias = Some((stored_name, snapshot)),
                StoredName::TiedDecoderWeight | StoredName::Buffer => ignored.push(stored_name),
            }
        }
        if let Some((stored_name, snapshot)) = decoder_bias {
            if tensors.contains_key(names::MLM_BIAS_NAME) {
                ignored.push(stored_name);
            } else {
                tensors.insert(names::MLM_BIAS_NAME.to_string(), snapshot);
            }
        }
        if tensors.is_empty() {
            return Err(CheckpointError::Format {
                source_name: source_name.to_string(),
                format: "BERT",
                message: "no tensors found".into(),
            });
        }
        ignored.sort();
        Ok(Self {
            source: source_name.to_string(),
            tensors,
            ignored,
        })
    }

    /// Removes and returns the tensors whose (canonical) names start with `prefix`, e.g. the
    /// optimizer state stored beside a model.
    pub fn split_off(&mut self, prefix: &str) -> BTreeMap<String, TensorSnapshot> {
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        names
            .into_iter()
            .filter_map(|name| self.tensors.remove(&name).map(|t| (name, t)))
            .collect()
    }

    /// Adds the tensors of `other` on top of these (same names are replaced), e.g. task heads
    /// saved apart from the encoder.
    pub fn extend(&mut self, other: Checkpoint) {
        self.source = format!("{} + {}", self.source, other.source);
        self.tensors.extend(other.tensors);
        self.ignored.extend(other.ignored);
    }

    /// Where the tensors came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Canonical names of the tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Shape of a tensor, by canonical name.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.to_vec())
    }

    /// The heads whose weights the checkpoint holds.
    pub fn heads(&self) -> Heads {
        let has = |name: &str| self.tensors.contains_key(name);
        Heads {
            pooler: has("bert.pooler.dense.weight"),
            mlm: has("cls.predictions.transform.dense.weight"),
            nsp: has("cls.seq_relationship.weight"),
            qa: has("qa_outputs.weight"),
            classifier_labels: self.shape("classifier.weight").map(|shape| shape[0]),
        }
    }

    /// The configuration adjusted to this checkpoint: NVIDIA checkpoints pad the vocabulary to a
    /// multiple of 8 (30522 -> 30528) while their `bert_config.json` keeps the unpadded size.
    pub fn fit_config(&self, config: &BertConfig) -> BertConfig {
        let stored_rows = self
            .shape("bert.embeddings.word_embeddings.weight")
            .map(|shape| shape[0]);
        let padded = config.clone().with_vocab_padded_to_multiple_of(8);
        match stored_rows {
            Some(rows) if rows != config.vocab_size && rows == padded.vocab_size => padded,
            _ => config.clone(),
        }
    }

    /// Copies the checkpoint's tensors into `module`, converting them to the backend's float type.
    ///
    /// Shape mismatches are errors; missing and unexpected tensors are reported, and the caller
    /// decides (see [`LoadReport::require_encoder`] and [`LoadReport::require_exact`]).
    pub fn load_into<B: Backend, M: Module<B>>(
        &self,
        module: &mut M,
    ) -> Result<LoadReport, CheckpointError> {
        let float_dtype = <B::FloatElem as Element>::dtype();
        let mut unexpected = Vec::new();
        let mut snapshots = Vec::new();
        for (name, stored) in &self.tensors {
            let Some(path) = hf_to_module_path(name) else {
                unexpected.push(name.clone());
                continue;
            };
            snapshots.push(retarget(stored, &path, float_dtype));
        }

        let result = module.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), false);

        if let Some(error) = result.errors.first() {
            return Err(self.apply_error(error));
        }
        let to_hf = |path: &str| module_path_to_hf(path).unwrap_or_else(|| path.to_string());
        unexpected.extend(result.unused.iter().map(|path| to_hf(path)));
        unexpected.sort();
        let mut missing: Vec<String> = result.missing.iter().map(|(path, _)| to_hf(path)).collect();
        missing.sort();
        Ok(LoadReport {
            source: self.source.clone(),
            loaded: result.applied.len(),
            missing,
            unexpected,
            ignored: self.ignored.clone(),
        })
    }

    fn apply_error(&self, error: &ApplyError) -> CheckpointError {
        match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => {
                let name = module_path_to_hf(path).unwrap_or_else(|| path.clone());
                let stored = self.shape(&name).unwrap_or_else(|| found.to_vec());
                let mut expected = expected.to_vec();
                // Linear weights are compared after the transpose: report the stored layout.
                if stored != found.to_vec() {
                    expected.reverse();
                }
                CheckpointError::ShapeMismatch {
                    source_name: self.source.clone(),
                    name,
                    expected,
                    found: stored,
                }
            }
            ApplyError::DTypeMismatch { path, .. }
            | ApplyError::AdapterError { path, .. }
            | ApplyError::LoadError { path, .. } => CheckpointError::Tensor {
                source_name: self.source.clone(),
                name: module_path_to_hf(path).unwrap_or_else(|| path.clone()),
                message: error.to_string(),
            },
        }
    }
}

/// The same tensor under a module path, converted to `dtype` when it is read.
fn retarget(stored: &TensorSnapshot, path: &str, dtype: DType) -> TensorSnapshot {
    let data = stored.clone_data_fn();
    let is_float = matches!(
        stored.dtype,
        DType::F64 | DType::F32 | DType::F16 | DType::BF16
    );
    let target = if is_float { dtype } else { stored.dtype };
    let expected_bytes = stored.shape.num_elements() * stored.dtype.size();
    let read = move || {
        let data = data()?;
        // A truncated legacy pickle yields short storages instead of an error: refuse them here.
        if data.as_bytes().len() != expected_bytes {
            return Err(TensorSnapshotError::DataError(format!(
                "stored data has {} bytes, the shape needs {expected_bytes}: the file is truncated or corrupt",
                data.as_bytes().len()
            )));
        }
        Ok(data.convert_dtype(target))
    };
    TensorSnapshot::from_closure(
        Rc::new(read),
        target,
        stored.shape.clone(),
        path.split('.').map(str::to_string).collect(),
        Vec::new(),
        Default::default(),
    )
}

/// One tensor ready for a safetensors file: name, shape and little-endian float32 bytes.
pub type NamedTensorBytes = (String, Vec<usize>, Vec<u8>);

/// A model's parameters as float32 tensors with Hugging Face names (Linear weights `[out, in]`,
/// LayerNorm `weight`/`bias`). The tied decoder weight is not included, as Hugging Face does not
/// store it either.
///
/// Blocks while the tensors are read from the device; in a browser on WebGPU use
/// [`model_tensors_async`].
pub fn model_tensors<B: Backend, M: Module<B>>(
    module: &M,
) -> Result<Vec<NamedTensorBytes>, CheckpointError> {
    named_tensor_bytes(module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false))
}

/// [`model_tensors`], reading every parameter back without blocking.
pub async fn model_tensors_async<B: Backend, M: Module<B>>(
    module: &M,
) -> Result<Vec<NamedTensorBytes>, CheckpointError> {
    let mut reads = ParameterReads {
        pending: HashMap::new(),
    };
    module.visit(&mut reads);
    let mut snapshots = Vec::new();
    for snapshot in module.collect(None, None, false) {
        let path = snapshot.full_path();
        let tensor_error = |message: String| CheckpointError::Tensor {
            source_name: "model".into(),
            name: path.clone(),
            message,
        };
        let (Some(id), Some(path_stack), Some(container_stack)) = (
            snapshot.tensor_id,
            snapshot.path_stack.clone(),
            snapshot.container_stack.clone(),
        ) else {
            return Err(tensor_error("the parameter has no module path".into()));
        };
        let read = reads
            .pending
            .remove(&id)
            .ok_or_else(|| tensor_error("not a float parameter".into()))?;
        let data = read.await.map_err(tensor_error)?;
        snapshots.push(BurnToPyTorchAdapter.adapt(&TensorSnapshot::from_data(
            data,
            path_stack,
            container_stack,
            id,
        )));
    }
    named_tensor_bytes(snapshots)
}

/// A pending read of one parameter's values from the device.
type ParameterRead = Pin<Box<dyn Future<Output = Result<TensorData, String>>>>;

/// Starts reading every float parameter of a module, by parameter id.
struct ParameterReads {
    pending: HashMap<ParamId, ParameterRead>,
}

impl<B: Backend> ModuleVisitor<B> for ParameterReads {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        self.pending.insert(
            param.id,
            Box::pin(async move { value.into_data_async().await.map_err(|e| format!("{e:?}")) }),
        );
    }
}

/// Names (Hugging Face) and float32 bytes of snapshots taken in burn's layout by the PyTorch
/// adapter.
fn named_tensor_bytes(
    snapshots: Vec<TensorSnapshot>,
) -> Result<Vec<NamedTensorBytes>, CheckpointError> {
    let mut tensors = Vec::with_capacity(snapshots.len());
    for snapshot in snapshots {
        let path = snapshot.full_path();
        let tensor_error = |message: String| CheckpointError::Tensor {
            source_name: "model".into(),
            name: path.clone(),
            message,
        };
        let name = module_path_to_hf(&path)
            .ok_or_else(|| tensor_error("no Hugging Face name for this parameter".into()))?;
        let data = snapshot
            .to_data()
            .map_err(|e| tensor_error(format!("{e:?}")))?
            .convert::<f32>();
        tensors.push((name, data.shape.to_vec(), data.as_bytes().to_vec()));
    }
    Ok(tensors)
}

/// A safetensors file of float32 tensors with `metadata` (plus `format: pt`, which `transformers`
/// expects).
pub fn serialize_safetensors(
    tensors: &[NamedTensorBytes],
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<u8>, CheckpointError> {
    serialize_as(tensors, metadata, safetensors::Dtype::F32)
}

/// [`serialize_safetensors`] with every float32 tensor rounded to float16: half the bytes (a
/// browser's download); every reader here converts them back to float32 on load.
pub fn serialize_safetensors_f16(
    tensors: &[NamedTensorBytes],
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<u8>, CheckpointError> {
    let halves: Vec<NamedTensorBytes> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let half_bytes = bytes
                .chunks_exact(4)
                .flat_map(|b| {
                    half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
                })
                .collect();
            (name.clone(), shape.clone(), half_bytes)
        })
        .collect();
    serialize_as(&halves, metadata, safetensors::Dtype::F16)
}

fn serialize_as(
    tensors: &[NamedTensorBytes],
    metadata: impl IntoIterator<Item = (String, String)>,
    dtype: safetensors::Dtype,
) -> Result<Vec<u8>, CheckpointError> {
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| safetensors_error("model", e))?;
    let mut header: std::collections::HashMap<String, String> = metadata.into_iter().collect();
    header.insert("format".to_string(), "pt".to_string());
    safetensors::tensor::serialize(views, Some(header)).map_err(|e| safetensors_error("model", e))
}

fn safetensors_error(source_name: &str, error: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Format {
        source_name: source_name.to_string(),
        format: SAFETENSORS_FORMAT,
        message: error.to_string(),
    }
}

/// Serialises a model's parameters as float32 safetensors with Hugging Face names, the layout
/// `transformers` loads (see [`model_tensors`]).
pub fn to_safetensors<B: Backend, M: Module<B>>(module: &M) -> Result<Vec<u8>, CheckpointError> {
    serialize_safetensors(&model_tensors(module)?, [])
}

/// [`to_safetensors`] without blocking.
pub async fn to_safetensors_async<B: Backend, M: Module<B>>(
    module: &M,
) -> Result<Vec<u8>, CheckpointError> {
    serialize_safetensors(&model_tensors_async(module).await?, [])
}

const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

fn looks_like_pytorch(bytes: &[u8]) -> bool {
    // torch.save writes a zip archive; files from PyTorch < 1.6 are a bare pickle (protocol 2-5).
    bytes.starts_with(ZIP_MAGIC)
        || (bytes.len() > 1 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]))
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    // An 8-byte little-endian header length (far below 4 GiB), then a JSON object.
    bytes.len() > 9 && bytes[4..8] == [0, 0, 0, 0] && bytes[8] == b'{'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safetensors_header_length_that_starts_like_a_pickle_is_still_safetensors() {
        // A 640-byte header: its length's first bytes are 0x80 0x02, a pickle's protocol opcode.
        let mut head = 0x0280u64.to_le_bytes().to_vec();
        head.extend_from_slice(b"{\"a\":");
        assert!(looks_like_safetensors(&head));
        let legacy_pickle = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        assert!(looks_like_pytorch(legacy_pickle));
        assert!(!looks_like_safetensors(legacy_pickle));
    }
}
