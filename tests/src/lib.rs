//! Helpers of the cross-crate tests: fixtures, the fetched reference checkpoint, reading
//! safetensors, tensor comparison, and the golden forward-pass check (see
//! `fixtures/forward/manifest.json`) that runs on any backend.

pub mod golden;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bert_core::model::{BertInput, TokenBatch};
use bert_core::BertConfig;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The workspace's folder, found when the test runs: cargo sets `CARGO_MANIFEST_DIR` to the
/// running package's folder, a direct child of the workspace. The value compiled in would name
/// the checkout the binary was built in, which a target folder shared between checkouts (as
/// `.ci/run`'s) reuses elsewhere.
pub fn workspace_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    package
        .parent()
        .expect("a package folder is inside the workspace")
        .to_path_buf()
}

/// A file under `tests/fixtures`.
pub fn fixture(relative: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(relative)
}

/// The all-MiniLM-L6-v2 folder fetched by `scripts/fetch-test-model.sh`.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("BERT_RS_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/bert-rs/models/all-minilm-l6-v2")
        });
    assert!(
        dir.join("model.safetensors").is_file(),
        "the test checkpoint is missing at {}: run scripts/fetch-test-model.sh (or set BERT_RS_MINILM_DIR)",
        dir.display()
    );
    dir
}

/// A tensor read from a safetensors fixture: its values in the field of its dtype.
#[derive(Debug, Clone, Default)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values of an F32 tensor.
    pub f32: Vec<f32>,
    /// Values of an F64 tensor.
    pub f64: Vec<f64>,
    /// Values of an I64 tensor.
    pub i64: Vec<i64>,
}

/// Every tensor of a safetensors file.
pub fn read_safetensors(path: &std::path::Path) -> HashMap<String, HostTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let mut tensor = HostTensor {
                shape: view.shape().to_vec(),
                ..HostTensor::default()
            };
            match view.dtype() {
                safetensors::Dtype::F32 => {
                    tensor.f32 = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                safetensors::Dtype::F64 => {
                    tensor.f64 = data
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                safetensors::Dtype::I64 => {
                    tensor.i64 = data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                other => panic!("{name}: unexpected dtype {other:?}"),
            }
            (name, tensor)
        })
        .collect()
}

/// The model input stored in a case file (`input_ids`, `token_type_ids`, `attention_mask`).
pub fn case_batch(case: &HashMap<String, HostTensor>) -> TokenBatch {
    let rows = |name: &str| {
        let t = &case[name];
        t.i64
            .chunks(t.shape[1])
            .map(<[i64]>::to_vec)
            .collect::<Vec<_>>()
    };
    TokenBatch {
        input_ids: rows("input_ids"),
        token_type_ids: Some(rows("token_type_ids")),
        attention_mask: Some(rows("attention_mask")),
    }
}

/// Uploads a case's input.
pub fn case_input<B: Backend>(
    case: &HashMap<String, HostTensor>,
    config: &BertConfig,
    device: &B::Device,
) -> BertInput<B> {
    case_batch(case)
        .to_input(config, device)
        .expect("golden input is valid")
}

/// Values of a tensor on the host.
pub fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float data")
}

/// Largest absolute difference, with the index where it occurs.
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> (f32, usize) {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (a, e))| ((a - e).abs(), i))
        .fold((0.0, 0), |best, x| {
            if x.0 > best.0 || x.0.is_nan() {
                x
            } else {
                best
            }
        })
}

/// Asserts `actual` is within `atol` of `expected` everywhere.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], atol: f32) {
    let (diff, at) = max_abs_diff(actual, expected);
    assert!(
        diff <= atol,
        "{what}: max |diff| {diff:e} > {atol:e} at flat index {at} (got {}, want {})",
        actual[at],
        expected[at]
    );
}

/// A fresh folder under the system's temporary directory for one test (named by the test and the
/// process), removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates (empties) `bert-rs-test-{name}-{pid}`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bert-rs-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A path inside the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A model folder for a pipeline test, `name`d for it (tests run at once, and each maps its
/// weights): MiniLM's encoder and tokenizer with the heads of the `heads` checkpoints, and its
/// `config.json` with `config_fields` added (e.g. `id2label`).
pub fn minilm_with_heads(
    name: &str,
    heads: &[PathBuf],
    config_fields: serde_json::Value,
) -> TempDir {
    use bert_core::checkpoint::to_safetensors;
    use bert_core::model::BertWithHeads;
    use bert_core::pretrained::ModelFiles;
    use burn::backend::flex::{Flex, FlexDevice};

    let dir = TempDir::new(name);
    let minilm = minilm_dir();
    let files = ModelFiles::find(&minilm, None).unwrap();
    let checkpoint = files.read_checkpoint(heads).unwrap();
    let config = checkpoint.fit_config(&files.read_config().unwrap());
    let mut model = BertWithHeads::<Flex>::new(&config, checkpoint.heads(), &FlexDevice);
    checkpoint.load_into(&mut model).unwrap();
    std::fs::write(
        dir.path("model.safetensors"),
        to_safetensors(&model).unwrap(),
    )
    .unwrap();
    let mut config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json")).unwrap())
            .unwrap();
    if let serde_json::Value::Object(fields) = config_fields {
        config_json.as_object_mut().unwrap().extend(fields);
    }
    std::fs::write(dir.path("config.json"), config_json.to_string()).unwrap();
    std::fs::copy(minilm.join("tokenizer.json"), dir.path("tokenizer.json")).unwrap();
    dir
}

/// A model folder's `config.json`, `model.safetensors` and `tokenizer.json` read into memory,
/// as a browser hands them to a pipeline's `from_bytes`.
pub fn model_bytes(dir: &Path) -> bert_core::pretrained::ModelBytes {
    let read = |name: &str| (name.to_string(), std::fs::read(dir.join(name)).unwrap());
    bert_core::pretrained::ModelBytes {
        config: read("config.json"),
        weights: read("model.safetensors"),
        tokenizer: read("tokenizer.json"),
    }
}

/// sentence-transformers' embeddings of the golden sentences (`fixtures/embeddings`, made by
/// `scripts/make_embedding_fixtures.py`).
pub struct GoldenEmbeddings {
    /// The texts.
    pub sentences: Vec<String>,
    /// One vector per text.
    pub embeddings: Vec<Vec<f32>>,
    /// Each text's tokens before sentence-transformers cut it at `max_seq_length`.
    pub tokens_before_truncation: Vec<usize>,
    /// The model's limit in tokens.
    pub max_seq_length: usize,
}

/// Reads [`GoldenEmbeddings`].
pub fn golden_embeddings() -> GoldenEmbeddings {
    let path = fixture("embeddings/minilm_sentences.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let list = |key: &str| json[key].as_array().unwrap().clone();
    let floats = |row: &serde_json::Value| -> Vec<f32> {
        let row = row.as_array().unwrap();
        row.iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    GoldenEmbeddings {
        sentences: list("sentences")
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        embeddings: list("embeddings").iter().map(floats).collect(),
        tokens_before_truncation: list("tokens_before_truncation")
            .iter()
            .map(|n| n.as_u64().unwrap() as usize)
            .collect(),
        max_seq_length: json["max_seq_length"].as_u64().unwrap() as usize,
    }
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The arguments of `bert-native launch` running `args` on `world_size` local ranks, with rank 0
/// on a port free now (tests run in parallel, so a fixed port would collide).
pub fn launch_args(world_size: usize, args: &[&str]) -> Vec<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut launch: Vec<String> = vec![
        "launch".into(),
        "--nproc-per-node".into(),
        world_size.to_string(),
        "--master-port".into(),
        port.to_string(),
        "--".into(),
    ];
    launch.extend(args.iter().map(|arg| arg.to_string()));
    launch
}

/// The `data` of every DLLogger line of an optimizer step (`"step": [epoch, step]`), in order.
pub fn logged_steps(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(
                line.strip_prefix("DLLL ").expect("DLLogger prefix"),
            )
            .unwrap()
        })
        .filter(|entry| entry["step"].as_array().is_some_and(|s| s.len() == 2))
        .map(|entry| entry["data"].clone())
        .collect()
}
