//! Sentence embeddings as sentence-transformers computes them: the encoder's last hidden states
//! pooled over each text's tokens (their mean, the `[CLS]` token's, or their maximum, as the
//! folder's `1_Pooling/config.json` says), scaled to unit length when `modules.json` lists a
//! `Normalize` module, each text cut at `sentence_bert_config.json`'s `max_seq_length`.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use futures_lite::future::block_on;
use serde::Deserialize;

use crate::config::BertConfig;
use crate::error::{PipelineError, PretrainedError};
use crate::model::{BertModel, TokenBatch};
use crate::pretrained::{load_model, LoadedModel, ModelBytes, ModelFiles};
use crate::tokenizer::{BertTokenizer, Encoding};

use super::encoding::{
    batches_by_length, encode_inputs, single_texts, token_batch, Encoded, Truncation,
};
use super::read_back;

/// Texts per forward pass unless set ([`SentenceEmbeddings::with_batch_size`]), as
/// sentence-transformers' default.
const DEFAULT_BATCH_SIZE: usize = 32;

/// How the token vectors of a text become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The mean over the text's tokens (`[CLS]` and `[SEP]` included, padding excluded).
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
    /// The element-wise maximum over the text's tokens.
    Max,
}

/// What a sentence-transformers folder says about its embeddings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    /// How token vectors are pooled.
    pub mode: PoolingMode,
    /// Whether the pooled vector is scaled to unit length (a `Normalize` module).
    pub normalize: bool,
    /// Tokens a text is cut at (`[CLS]` and `[SEP]` included); the model's position limit when
    /// the folder gives none.
    pub max_seq_length: Option<usize>,
}

/// `modules.json`: the modules of a sentence-transformers model, in order.
#[derive(Debug, Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`.
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

impl Pooling {
    /// The pooling of a folder without sentence-transformers files: the mean, not normalised.
    pub const MEAN: Self = Self {
        mode: PoolingMode::Mean,
        normalize: false,
        max_seq_length: None,
    };

    /// The pooling a sentence-transformers folder declares (`modules.json`, the pooling module's
    /// `config.json`, `sentence_bert_config.json`). A folder without `modules.json` gets
    /// [`Pooling::MEAN`] and a notice saying so.
    pub fn from_folder(dir: &Path) -> Result<(Self, Option<String>), PipelineError> {
        let modules_path = dir.join("modules.json");
        let Some(modules) = read_optional(&modules_path)? else {
            let notice = format!(
                "{}: no modules.json (not a sentence-transformers folder): mean pooling over \
                 the tokens, not normalised",
                dir.display()
            );
            return Ok((Self::MEAN, Some(notice)));
        };
        let modules: Vec<Module> = parse(&modules_path, &modules)?;
        let has = |kind: &str| {
            modules
                .iter()
                .find(|module| module.kind.rsplit('.').next() == Some(kind))
        };
        let pooling_module = has("Pooling").ok_or_else(|| PipelineError::SentenceTransformers {
            path: modules_path.display().to_string(),
            problem: "lists no Pooling module".into(),
        })?;
        let config_path = dir.join(&pooling_module.path).join("config.json");
        let text =
            read_optional(&config_path)?.ok_or_else(|| PipelineError::SentenceTransformers {
                path: config_path.display().to_string(),
                problem: "missing: the Pooling module's configuration".into(),
            })?;
        let mode = pooling_mode(&config_path, &parse(&config_path, &text)?)?;
        let sentence_bert_path = dir.join("sentence_bert_config.json");
        let max_seq_length = match read_optional(&sentence_bert_path)? {
            Some(text) => parse::<SentenceBertConfig>(&sentence_bert_path, &text)?.max_seq_length,
            None => None,
        };
        let pooling = Self {
            mode,
            normalize: has("Normalize").is_some(),
            max_seq_length,
        };
        Ok((pooling, None))
    }

    /// Pools one text's token vectors (`hidden` values per position; `kept[i]`: position `i` is
    /// one of the text's tokens, not padding) as sentence-transformers does, then normalises when
    /// asked.
    fn pool(&self, token_vectors: &[f32], kept: &[bool], hidden: usize) -> Vec<f32> {
        let rows = || {
            token_vectors
                .chunks_exact(hidden)
                .zip(kept)
                .filter_map(|(row, &kept)| kept.then_some(row))
        };
        let mut pooled = match self.mode {
            PoolingMode::Cls => token_vectors[..hidden].to_vec(),
            PoolingMode::Mean => {
                let mut sum = vec![0.0f32; hidden];
                for row in rows() {
                    sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x);
                }
                let count = (rows().count() as f32).max(1e-9);
                sum.iter().map(|s| s / count).collect()
            }
            PoolingMode::Max => rows().fold(vec![f32::NEG_INFINITY; hidden], |mut max, row| {
                max.iter_mut().zip(row).for_each(|(m, &x)| *m = m.max(x));
                max
            }),
        };
        if self.normalize {
            // torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
            let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            pooled.iter_mut().for_each(|x| *x /= norm);
        }
        pooled
    }
}

/// The one pooling mode a Pooling module's configuration turns on; an error naming the file for
/// modes this pipeline does not compute, or for several at once.
fn pooling_mode(path: &Path, config: &PoolingConfig) -> Result<PoolingMode, PipelineError> {
    let unsupported = [
        (
            config.pooling_mode_mean_sqrt_len_tokens,
            "mean_sqrt_len_tokens",
        ),
        (
            config.pooling_mode_weightedmean_tokens,
            "weightedmean_tokens",
        ),
        (config.pooling_mode_lasttoken, "lasttoken"),
    ];
    let modes: Vec<PoolingMode> = [
        (config.pooling_mode_mean_tokens, PoolingMode::Mean),
        (config.pooling_mode_cls_token, PoolingMode::Cls),
        (config.pooling_mode_max_tokens, PoolingMode::Max),
    ]
    .into_iter()
    .filter_map(|(on, mode)| on.then_some(mode))
    .collect();
    let problem = |problem: String| PipelineError::SentenceTransformers {
        path: path.display().to_string(),
        problem,
    };
    if let Some((_, name)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(problem(format!(
            "pooling mode {name} is not supported (mean, cls and max are)"
        )));
    }
    match modes[..] {
        [mode] => Ok(mode),
        [] => Err(problem("turns no pooling mode on".into())),
        _ => Err(problem(
            "turns several pooling modes on (their concatenation is not supported)".into(),
        )),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, PipelineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PretrainedError::Io {
            path: path.display().to_string(),
            source,
        }
        .into()),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, PipelineError> {
    serde_json::from_str(text).map_err(|error| PipelineError::SentenceTransformers {
        path: path.display().to_string(),
        problem: error.to_string(),
    })
}

/// The embeddings of a batch of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in the order given.
    pub vectors: Vec<Vec<f32>>,
    /// The tokens each text was embedded with (`[CLS]` and `[SEP]` included, after any cut).
    pub tokens: Vec<usize>,
    /// The positions of the texts that were cut to fit the model.
    pub truncated: Vec<usize>,
}

/// Sentence embeddings of a model folder: `SentenceEmbeddings::from_folder(dir, &device)?`, then
/// `embed(&["a text", "another"])?`.
pub struct SentenceEmbeddings<B: Backend> {
    model: BertModel<B>,
    config: BertConfig,
    tokenizer: BertTokenizer,
    pooling: Pooling,
    truncation: Truncation,
    batch_size: usize,
    notices: Vec<String>,
    device: B::Device,
}

impl<B: Backend> SentenceEmbeddings<B> {
    /// Loads the encoder, tokenizer and pooling of a model folder (Hugging Face files plus
    /// sentence-transformers' `modules.json` and pooling configuration, when present).
    pub fn from_folder(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, PipelineError> {
        let dir = dir.as_ref();
        let files = ModelFiles::find(dir, None)?;
        let (pooling, notice) = Pooling::from_folder(dir)?;
        let tokenizer = files.read_tokenizer(None)?;
        let loaded = load_model::<B>(&files, &[] as &[PathBuf], device)?;
        let mut pipeline = Self::from_loaded(loaded, tokenizer, pooling, device);
        pipeline.notices.extend(notice);
        Ok(pipeline)
    }

    /// Loads the files of an encoder already in memory (a browser's downloads), pooled as
    /// `pooling` says (what the model's sentence-transformers files declare, e.g. mean pooling,
    /// normalised, 256 tokens for all-MiniLM-L6-v2).
    pub fn from_bytes(
        bytes: &ModelBytes,
        pooling: Pooling,
        device: &B::Device,
    ) -> Result<Self, PipelineError> {
        let tokenizer = bytes.read_tokenizer()?;
        let loaded = bytes.load_model::<B>(device)?;
        Ok(Self::from_loaded(loaded, tokenizer, pooling, device))
    }

    fn from_loaded(
        mut loaded: LoadedModel<B>,
        tokenizer: BertTokenizer,
        pooling: Pooling,
        device: &B::Device,
    ) -> Self {
        // The pooled output is not used; its projection would cost a product per text.
        loaded.model.bert.pooler = None;
        Self {
            model: loaded.model.bert,
            config: loaded.config,
            tokenizer,
            pooling,
            truncation: Truncation::default(),
            batch_size: DEFAULT_BATCH_SIZE,
            notices: Vec::new(),
            device: device.clone(),
        }
    }

    /// Texts per forward pass (at least 1). Texts are sorted by length first, so a batch holds
    /// texts of similar lengths and little padding.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// What to do with texts longer than the model takes.
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
    }

    /// The pooling in use.
    pub fn pooling(&self) -> &Pooling {
        &self.pooling
    }

    /// Things the caller should know about how the folder was read (e.g. no pooling configuration,
    /// mean pooling assumed).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// The length of every vector.
    pub fn dimension(&self) -> usize {
        self.config.hidden_size
    }

    /// Tokens a text may have, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        let positions = self.config.max_position_embeddings;
        self.pooling
            .max_seq_length
            .map_or(positions, |limit| limit.min(positions))
    }

    /// The embedding of every text, in order. An empty list is an error; an empty text is not
    /// (it embeds `[CLS] [SEP]`).
    ///
    /// Blocks until the device answers; in a browser on WebGPU use [`Self::embed_async`].
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Embeddings, PipelineError> {
        block_on(self.embed_async(texts))
    }

    /// [`Self::embed`] without blocking.
    pub async fn embed_async<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<Embeddings, PipelineError> {
        let inputs = single_texts(texts);
        let Encoded {
            encodings,
            truncated,
        } = encode_inputs(&self.tokenizer, &inputs, self.max_tokens(), self.truncation)?;
        let tokens = encodings.iter().map(Encoding::len).collect();
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in batches_by_length(&encodings, self.batch_size) {
            let token_batch = token_batch(&self.tokenizer, &encodings, &batch);
            let embedded = self.embed_tokens_async(&token_batch).await?;
            for (&index, vector) in batch.iter().zip(embedded) {
                vectors[index] = vector;
            }
        }
        Ok(Embeddings {
            vectors,
            tokens,
            truncated,
        })
    }

    /// The embedding of every row of an already tokenized batch, pooled over the positions its
    /// attention mask keeps (all of them when it has none): one forward pass.
    pub fn embed_tokens(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, PipelineError> {
        block_on(self.embed_tokens_async(batch))
    }

    /// [`Self::embed_tokens`] without blocking.
    pub async fn embed_tokens_async(
        &self,
        batch: &TokenBatch,
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let input = batch.to_input::<B>(&self.config, &self.device)?;
        let hidden_states = self.model.forward(input).sequence_output;
        let [_, seq_len, hidden] = hidden_states.dims();
        let values = read_back(hidden_states).await?;
        Ok(values
            .chunks_exact(seq_len * hidden)
            .enumerate()
            .map(|(row, token_vectors)| {
                let kept: Vec<bool> = match &batch.attention_mask {
                    Some(mask) => mask[row].iter().map(|&m| m != 0).collect(),
                    None => vec![true; seq_len],
                };
                self.pooling.pool(token_vectors, &kept, hidden)
            })
            .collect())
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The tokenizer texts go through.
    pub fn tokenizer(&self) -> &BertTokenizer {
        &self.tokenizer
    }
}
