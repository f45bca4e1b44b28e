//! Error types of the library. Each names what was wrong so a binary can add the file it came from.

use thiserror::Error;

/// A configuration that cannot describe a BERT model.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The JSON did not parse or a field had the wrong type or value.
    #[error("invalid BERT config JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The fields parsed but contradict each other or the architecture.
    #[error("invalid BERT config: {0}")]
    Invalid(String),
    /// `from_preset` was given a name it does not know.
    #[error("unknown preset {0:?} (known: base, large)")]
    UnknownPreset(String),
}

/// A checkpoint that cannot be read or does not fit the model.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid checkpoint of the format the file claims.
    #[error("{source_name}: not a readable {format} checkpoint: {message}")]
    Format {
        /// Where the bytes came from (a path or a URL).
        source_name: String,
        /// `safetensors` or `PyTorch`.
        format: &'static str,
        /// What the reader said.
        message: String,
    },
    /// The content is neither safetensors nor a PyTorch pickle.
    #[error("{0}: neither a safetensors nor a PyTorch checkpoint (unrecognised content)")]
    UnknownFormat(String),
    /// A tensor exists in both but with different shapes.
    #[error("{source_name}: tensor {name} has shape {found:?} but the model expects {expected:?}")]
    ShapeMismatch {
        /// Where the checkpoint came from.
        source_name: String,
        /// Hugging Face name of the tensor.
        name: String,
        /// Shape the model's configuration implies.
        expected: Vec<usize>,
        /// Shape stored in the checkpoint.
        found: Vec<usize>,
    },
    /// Tensors the model needs are absent.
    #[error("{source_name}: missing tensors: {}", names.join(", "))]
    Missing {
        /// Where the checkpoint came from.
        source_name: String,
        /// Hugging Face names of the absent tensors.
        names: Vec<String>,
    },
    /// The checkpoint holds tensors the model has no place for.
    #[error("{source_name}: unexpected tensors: {}", names.join(", "))]
    Unexpected {
        /// Where the checkpoint came from.
        source_name: String,
        /// Their names as stored.
        names: Vec<String>,
    },
    /// A tensor could not be converted or materialised.
    #[error("{source_name}: tensor {name}: {message}")]
    Tensor {
        /// Where the checkpoint came from.
        source_name: String,
        /// Name of the tensor.
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// A tokenizer that cannot be built or an input it cannot encode.
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// The vocabulary or `tokenizer.json` could not be parsed.
    #[error("cannot build tokenizer: {0}")]
    Build(String),
    /// A special token BERT needs is not in the vocabulary.
    #[error("the vocabulary has no {0} token")]
    MissingSpecialToken(&'static str),
    /// Encoding failed inside the tokenizer.
    #[error("cannot tokenize input: {0}")]
    Encode(String),
}

/// Model inputs that do not fit the model.
#[derive(Debug, Error)]
pub enum InputError {
    /// The rows of a batch or the three id matrices disagree in shape.
    #[error("{0}")]
    Shape(String),
    /// An id is outside the range its embedding table covers.
    #[error("{name} contains {value} at row {row}, column {column}; valid ids are 0..{limit}")]
    OutOfRange {
        /// `input_ids`, `token_type_ids` or `attention_mask`.
        name: &'static str,
        /// The offending value.
        value: i64,
        /// Its row.
        row: usize,
        /// Its column.
        column: usize,
        /// One past the largest valid value.
        limit: usize,
    },
}

/// A pretrained model folder that cannot be used.
#[derive(Debug, Error)]
pub enum PretrainedError {
    /// A required file is absent.
    #[error("{dir}: no {what} found (looked for {candidates})")]
    NotFound {
        /// The folder searched.
        dir: String,
        /// What was searched for.
        what: &'static str,
        /// The file names tried.
        candidates: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is invalid.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
    /// The weights cannot be read or applied.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The tokenizer files cannot be used.
    #[error("{path}: {source}")]
    Tokenizer {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: TokenizerError,
    },
    /// The weights lack the task head the caller needs.
    #[error(
        "{source_name}: the weights have no {head} head ({missing}): fine-tune the model first"
    )]
    NoTaskHead {
        /// The weights.
        source_name: String,
        /// Which head.
        head: &'static str,
        /// The missing tensors.
        missing: String,
    },
    /// The vocabulary does not belong to the model.
    #[error("{path}: the vocabulary has {tokenizer} entries but the model only {model}: wrong vocabulary for this model")]
    VocabularyTooLarge {
        /// The vocabulary file.
        path: String,
        /// Its entries.
        tokenizer: usize,
        /// The model's vocabulary size.
        model: usize,
    },
}

/// Training that cannot go on.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TrainingError {
    /// Float16 gradients kept overflowing until the dynamic loss scale fell under its floor.
    #[error("the loss scale collapsed to {scale} (floor {min_scale}): the gradients overflow even unscaled, so training has diverged; lower the learning rate or use --precision bf16")]
    LossScaleCollapsed {
        /// The scale after the last halving.
        scale: f64,
        /// The floor (`--min-loss-scale`).
        min_scale: f64,
    },
    /// Too many steps in a row had non-finite gradients.
    #[error("{skipped} optimizer steps in a row had inf/NaN gradients (loss scale {scale}): training has diverged")]
    TooManySkippedSteps {
        /// Skipped steps in a row.
        skipped: u32,
        /// The loss scale at the last of them.
        scale: f64,
    },
    /// Averaging the gradients with the other ranks failed.
    #[error("data-parallel all-reduce failed: {0}")]
    Collective(#[from] CollectiveError),
}

/// A data-parallel exchange between ranks that failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CollectiveError {
    /// The ranks offered buffers of different lengths: they are not running the same model.
    #[error("ranks disagree on the buffer length ({expected} here, {found} elsewhere): are they training the same model?")]
    LengthMismatch {
        /// This rank's length.
        expected: usize,
        /// Another rank's.
        found: usize,
    },
    /// Some ranks all-reduce in float16 and others in float32.
    #[error("ranks disagree on the all-reduce precision (float16 on some, float32 on others): start every rank with the same --allreduce-post-accumulation-fp16")]
    PrecisionMismatch,
    /// Another rank went away or the link to it broke.
    #[error("lost rank {rank}: {message}")]
    PeerLost {
        /// The rank.
        rank: usize,
        /// What happened.
        message: String,
    },
    /// Reading a tensor back from the device failed.
    #[error("cannot read gradients back from the device: {0}")]
    Device(String),
}

/// A pipeline (`crate::pipelines`) that cannot be loaded or cannot answer.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The model folder cannot be used.
    #[error(transparent)]
    Pretrained(#[from] PretrainedError),
    /// A sentence-transformers file of the folder is invalid or asks for what is not supported.
    #[error("{path}: {problem}")]
    SentenceTransformers {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A file of the model folder is invalid for this task.
    #[error("{path}: {problem}")]
    ModelFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The call was given no text.
    #[error("no texts given: the list is empty")]
    NoTexts,
    /// A fill-mask input has no `[MASK]` token (or none left after cutting it to fit).
    #[error("text {index} has no [MASK] token within the model's {limit} tokens: mark what to fill with [MASK]")]
    NoMask {
        /// Its position in the list.
        index: usize,
        /// The most tokens the model takes.
        limit: usize,
    },
    /// A text is longer than the model takes and truncation is refused.
    #[error("text {index} has {tokens} tokens, more than the model's {limit}: shorten it or allow truncation")]
    TextTooLong {
        /// Its position in the list.
        index: usize,
        /// Its tokens, `[CLS]` and `[SEP]` included.
        tokens: usize,
        /// The most the model takes.
        limit: usize,
    },
    /// A text cannot be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A batch does not fit the model.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A question or a context is empty.
    #[error("question {index}: the question and the context must not be empty")]
    EmptyQuestionOrContext {
        /// The pair's position in the list.
        index: usize,
    },
    /// Answering failed.
    #[error(transparent)]
    Predict(#[from] crate::squad::PredictError),
    /// The backend failed to hand back a result.
    #[error("reading the result back from the backend failed: {0}")]
    Backend(String),
}
