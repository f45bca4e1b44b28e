//! Filling `[MASK]` tokens as Hugging Face's `pipeline("fill-mask")` does: the masked-LM head's
//! logits at every `[MASK]` position, turned into probabilities over the vocabulary, the `top_k`
//! best tokens returned with the text they complete.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use futures_lite::future::block_on;

use crate::config::BertConfig;
use crate::error::{PipelineError, PretrainedError};
use crate::model::{BertModel, MaskedLmHead};
use crate::pretrained::{load_model, LoadedModel, ModelBytes, ModelFiles};
use crate::tokenizer::{BertTokenizer, Encoding};

use super::encoding::{
    batches_by_length, encode_inputs, single_texts, text_pairs, token_batch, Encoded, Truncation,
};
use super::read_back;

/// Inputs per forward pass unless set ([`FillMask::with_batch_size`]).
const DEFAULT_BATCH_SIZE: usize = 16;

/// Fillers per mask unless set ([`FillMask::with_top_k`]), as Hugging Face's default.
const DEFAULT_TOP_K: usize = 5;

/// One candidate for a `[MASK]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filler {
    /// Its vocabulary id.
    pub token_id: u32,
    /// The vocabulary entry (a word piece keeps its `##`).
    pub token: String,
    /// Its probability at the mask.
    pub score: f32,
    /// The text holding the mask (text A or B of a pair) with this token in place of the mask: a
    /// word piece joins the word before it.
    pub sequence: String,
}

/// The fillers of a batch of inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct FilledMasks {
    /// For every input in the order given, for every `[MASK]` in reading order, the best
    /// fillers, best first.
    pub fillers: Vec<Vec<Vec<Filler>>>,
    /// The positions of the inputs that were cut to fit the model.
    pub truncated: Vec<usize>,
}

/// A masked-language model of a model folder (a pretraining checkpoint, or any Hugging Face
/// `BertForMaskedLM`): `FillMask::from_folder(dir, &device)?`, then
/// `fill(&["The capital of France is [MASK]."])?`.
pub struct FillMask<B: Backend> {
    bert: BertModel<B>,
    head: MaskedLmHead<B>,
    config: BertConfig,
    tokenizer: BertTokenizer,
    mask_id: u32,
    top_k: usize,
    truncation: Truncation,
    batch_size: usize,
    device: B::Device,
}

impl<B: Backend> FillMask<B> {
    /// Loads a folder whose weights hold the masked-LM head (`cls.predictions`).
    pub fn from_folder(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, PipelineError> {
        let files = ModelFiles::find(dir.as_ref(), None)?;
        let tokenizer = files.read_tokenizer(None)?;
        let loaded = load_model::<B>(&files, &[] as &[PathBuf], device)?;
        Self::from_loaded(loaded, tokenizer, device)
    }

    /// Loads the files of a model with a masked-LM head already in memory (a browser's
    /// downloads).
    pub fn from_bytes(bytes: &ModelBytes, device: &B::Device) -> Result<Self, PipelineError> {
        let tokenizer = bytes.read_tokenizer()?;
        let loaded = bytes.load_model::<B>(device)?;
        Self::from_loaded(loaded, tokenizer, device)
    }

    /// The pipeline over a loaded model, which must have its masked-LM head.
    fn from_loaded(
        mut loaded: LoadedModel<B>,
        tokenizer: BertTokenizer,
        device: &B::Device,
    ) -> Result<Self, PipelineError> {
        let report = loaded.report;
        let Some(head) = loaded.model.mlm.filter(|_| report.missing.is_empty()) else {
            return Err(PretrainedError::NoTaskHead {
                source_name: report.source,
                head: "masked-LM",
                missing: if report.missing.is_empty() {
                    "cls.predictions.*".into()
                } else {
                    report.missing.join(", ")
                },
            }
            .into());
        };
        // The pooled output is not used; its projection would cost a product per text.
        loaded.model.bert.pooler = None;
        Ok(Self {
            bert: loaded.model.bert,
            head,
            config: loaded.config,
            mask_id: tokenizer.mask_id(),
            tokenizer,
            top_k: DEFAULT_TOP_K,
            truncation: Truncation::default(),
            batch_size: DEFAULT_BATCH_SIZE,
            device: device.clone(),
        })
    }

    /// Fillers per mask (at least 1, at most the vocabulary).
    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k.clamp(1, self.config.vocab_size);
        self
    }

    /// Inputs per forward pass (at least 1); inputs are sorted by length first.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// What to do with inputs longer than the model takes (default: cut them; a mask cut away
    /// is an error).
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
    }

    /// The best fillers of every `[MASK]` of every text; a text without one is an error.
    ///
    /// Blocks until the device answers; in a browser on WebGPU use [`Self::fill_async`].
    pub fn fill<S: AsRef<str>>(&self, texts: &[S]) -> Result<FilledMasks, PipelineError> {
        block_on(self.fill_async(texts))
    }

    /// [`Self::fill`] without blocking.
    pub async fn fill_async<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<FilledMasks, PipelineError> {
        self.fill_inputs(&single_texts(texts)).await
    }

    /// The same for pairs of texts (`[CLS] a [SEP] b [SEP]`), masks in either.
    pub fn fill_pairs<A: AsRef<str>, C: AsRef<str>>(
        &self,
        pairs: &[(A, C)],
    ) -> Result<FilledMasks, PipelineError> {
        let inputs = text_pairs(pairs);
        block_on(self.fill_inputs(&inputs))
    }

    async fn fill_inputs(
        &self,
        inputs: &[(&str, Option<&str>)],
    ) -> Result<FilledMasks, PipelineError> {
        let limit = self.config.max_position_embeddings;
        let Encoded {
            encodings,
            truncated,
        } = encode_inputs(&self.tokenizer, inputs, limit, self.truncation)?;
        let masks: Vec<Vec<usize>> = encodings
            .iter()
            .map(|encoding| {
                (0..encoding.len())
                    .filter(|&position| encoding.ids[position] == self.mask_id)
                    .collect()
            })
            .collect();
        if let Some(index) = masks.iter().position(Vec::is_empty) {
            return Err(PipelineError::NoMask { index, limit });
        }
        let mut fillers = vec![Vec::new(); inputs.len()];
        for batch in batches_by_length(&encodings, self.batch_size) {
            let token_batch = token_batch(&self.tokenizer, &encodings, &batch);
            let seq_len = token_batch.input_ids[0].len();
            let rows: Vec<i64> = batch
                .iter()
                .enumerate()
                .flat_map(|(row, &index)| {
                    masks[index]
                        .iter()
                        .map(move |&position| (row * seq_len + position) as i64)
                })
                .collect();
            let probabilities = self
                .mask_probabilities(token_batch.to_input(&self.config, &self.device)?, &rows)
                .await?;
            let mut per_mask = probabilities.chunks_exact(self.config.vocab_size);
            for &index in &batch {
                let (text, pair) = inputs[index];
                fillers[index] = masks[index]
                    .iter()
                    .map(|&position| {
                        let probabilities = per_mask.next().expect("one row per mask");
                        self.best(probabilities, &encodings[index], position, text, pair)
                    })
                    .collect();
            }
        }
        Ok(FilledMasks { fillers, truncated })
    }

    /// The vocabulary probabilities at the flat positions `rows` (`row * seq_len + position`) of
    /// a batch: `[rows, V]`, row after row.
    async fn mask_probabilities(
        &self,
        input: crate::model::BertInput<B>,
        rows: &[i64],
    ) -> Result<Vec<f32>, PipelineError> {
        let sequence_output = self.bert.forward(input).sequence_output;
        let [batch_size, seq_len, hidden] = sequence_output.dims();
        let indices = Tensor::<B, 1, Int>::from_data(
            TensorData::new(rows.to_vec(), [rows.len()]),
            &self.device,
        );
        let at_masks = sequence_output
            .reshape([batch_size * seq_len, hidden])
            .select(0, indices);
        let logits = self
            .head
            .forward(at_masks, self.bert.word_embeddings(), self.bert.precision);
        read_back(burn::tensor::activation::softmax(logits, 1)).await
    }

    /// The `top_k` most probable tokens at `position`, best first (ties by id).
    fn best(
        &self,
        probabilities: &[f32],
        encoding: &Encoding,
        position: usize,
        text: &str,
        pair: Option<&str>,
    ) -> Vec<Filler> {
        let mut ids: Vec<u32> = (0..probabilities.len() as u32).collect();
        let by_probability =
            |a: &u32, b: &u32| probabilities[*b as usize].total_cmp(&probabilities[*a as usize]);
        if self.top_k < ids.len() {
            ids.select_nth_unstable_by(self.top_k - 1, by_probability);
            ids.truncate(self.top_k);
        }
        ids.sort_by(|a, b| by_probability(a, b).then(a.cmp(b)));
        let holder = match encoding.sequence_ids[position] {
            Some(1) => pair.unwrap_or(text),
            _ => text,
        };
        ids.into_iter()
            .map(|token_id| {
                let token = self
                    .tokenizer
                    .id_to_token(token_id)
                    .unwrap_or_else(|| format!("[{token_id}]"));
                Filler {
                    token_id,
                    sequence: splice(holder, encoding.offsets[position], &token),
                    score: probabilities[token_id as usize],
                    token,
                }
            })
            .collect()
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }
}

/// `text` with the characters `[start, end)` replaced by `token`; a word piece (`##ing`) loses
/// its `##` and the spaces before it, joining the word it continues.
fn splice(text: &str, (start, end): (usize, usize), token: &str) -> String {
    let byte = |chars: usize| {
        text.char_indices()
            .nth(chars)
            .map_or(text.len(), |(byte, _)| byte)
    };
    let (before, after) = (&text[..byte(start)], &text[byte(end)..]);
    match token.strip_prefix("##") {
        Some(piece) => format!("{}{piece}{after}", before.trim_end()),
        None => format!("{before}{token}{after}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filler_replaces_the_mask_and_a_word_piece_joins_the_word_before() {
        let text = "Le café est [MASK].";
        assert_eq!(splice(text, (12, 18), "chaud"), "Le café est chaud.");
        assert_eq!(splice(text, (12, 18), "##s"), "Le café ests.");
        assert_eq!(splice("[MASK]", (0, 6), "x"), "x");
    }
}
