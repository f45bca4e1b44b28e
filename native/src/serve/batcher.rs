//! Dynamic batching: requests for one model wait in a bounded queue; its worker thread gathers
//! them up to `max_batch_size` rows or `max_queue_delay`, pads them to the longest sequence, runs
//! the model once and hands each request its own rows back (texts to embed or classify are
//! gathered the same way, up to `max_batch_size` texts). Requests whose client went away are
//! dropped before they take a place in a batch.
//!
//! The worker waits for company only while requests come together: after
//! [`LONE_GATHERINGS_TO_STOP_WAITING`] gatherings in a row found no other request (one client
//! asking in turn, say), each model run starts at once with what is queued by then, instead of
//! adding the delay to every request. A request that arrives while the model runs is found queued
//! at the next gathering, which turns the wait back on.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use bert_core::model::TokenBatch;
use bert_core::pipelines::{Classifications, Embeddings};
use bert_core::squad::{Answer, AnswerConfig, FeatureConfig};
use burn::tensor::backend::Backend;
use tokio::sync::oneshot;

use super::repository::{HostOutput, ServedModel, TaskModel};

/// What a worker is asked to do.
pub enum Work {
    /// Run token rows through the model (batched with other requests).
    Infer {
        /// The rows, validated.
        batch: TokenBatch,
        /// When the request was queued.
        queued: Instant,
        /// Where the outputs (this request's rows only) go.
        reply: oneshot::Sender<Result<Vec<HostOutput>, String>>,
    },
    /// Run texts through the model's pipeline: embed them (sentence-embeddings models) or
    /// classify them (sequence-classification models); batched with other such requests.
    Texts {
        /// The texts, at least one: `(a, None)` a text, `(a, Some(b))` a pair.
        inputs: Vec<(String, Option<String>)>,
        /// When the request was queued.
        queued: Instant,
        /// Where the results go.
        reply: oneshot::Sender<Result<TextOutput, String>>,
    },
    /// Answer a question about a text (question-answering models; run on its own).
    Answer {
        /// The question.
        question: String,
        /// The text.
        context: String,
        /// Answers wanted.
        n_best: usize,
        /// When the request was queued.
        queued: Instant,
        /// Where the answers go.
        reply: oneshot::Sender<Result<Vec<Answer>, String>>,
    },
}

impl Work {
    fn cancelled(&self) -> bool {
        match self {
            Work::Infer { reply, .. } => reply.is_closed(),
            Work::Answer { reply, .. } => reply.is_closed(),
            Work::Texts { reply, .. } => reply.is_closed(),
        }
    }

    fn queued(&self) -> Instant {
        match self {
            Work::Infer { queued, .. }
            | Work::Answer { queued, .. }
            | Work::Texts { queued, .. } => *queued,
        }
    }

    /// Whether `other` can join a batch this work opened: token rows with token rows, texts
    /// with texts.
    fn batches_with(&self, other: &Work) -> bool {
        matches!(
            (self, other),
            (Work::Infer { .. }, Work::Infer { .. }) | (Work::Texts { .. }, Work::Texts { .. })
        )
    }
}

/// What a text request gets back: its pipeline's results for its own texts.
#[derive(Debug, Clone, PartialEq)]
pub enum TextOutput {
    /// Sentence embeddings.
    Embeddings(Embeddings),
    /// Class probabilities.
    Classes(Classifications),
}

impl TextOutput {
    /// The results of the texts at `range`, numbered from its start.
    fn slice(&self, range: Range<usize>) -> TextOutput {
        let own_truncated = |truncated: &[usize]| {
            truncated
                .iter()
                .filter(|index| range.contains(index))
                .map(|index| index - range.start)
                .collect()
        };
        match self {
            TextOutput::Embeddings(all) => TextOutput::Embeddings(Embeddings {
                vectors: all.vectors[range.clone()].to_vec(),
                tokens: all.tokens[range.clone()].to_vec(),
                truncated: own_truncated(&all.truncated),
            }),
            TextOutput::Classes(all) => TextOutput::Classes(Classifications {
                scores: all.scores[range.clone()].to_vec(),
                truncated: own_truncated(&all.truncated),
            }),
        }
    }
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchingConfig {
    /// Most rows in one model run.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch (only while requests come together:
    /// see the module's comment).
    pub max_queue_delay: Duration,
}

/// Gatherings in a row that found a single request, after which a worker stops waiting for
/// company (until a gathering finds some).
const LONE_GATHERINGS_TO_STOP_WAITING: u32 = 3;

/// Largest batch sizes counted apart in the metrics (larger ones land in the last bucket).
pub const BATCH_SIZE_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Counters of one model, exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered.
    pub success: AtomicU64,
    /// Requests that failed (bad input, model error).
    pub failure: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests dropped because their client went away while they waited.
    pub cancelled: AtomicU64,
    /// Model runs.
    pub executions: AtomicU64,
    /// Rows run (sum of batch sizes).
    pub inferences: AtomicU64,
    /// Total time requests spent queued, microseconds.
    pub queue_us: AtomicU64,
    /// Total time spent computing, microseconds.
    pub compute_us: AtomicU64,
    /// Model runs by batch size, cumulative as Prometheus histograms are: `<= BATCH_SIZE_BUCKETS[i]`.
    pub batch_size_le: [AtomicU64; BATCH_SIZE_BUCKETS.len()],
}

impl Metrics {
    fn record_execution(&self, rows: usize, compute: Duration) {
        self.executions.fetch_add(1, Ordering::Relaxed);
        self.inferences.fetch_add(rows as u64, Ordering::Relaxed);
        self.compute_us
            .fetch_add(compute.as_micros() as u64, Ordering::Relaxed);
        for (bucket, count) in BATCH_SIZE_BUCKETS.iter().zip(&self.batch_size_le) {
            if rows as u64 <= *bucket {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Queues `work`, or gives it back when the queue is full.
pub fn submit(queue: &SyncSender<Work>, work: Work) -> Result<(), QueueFull> {
    match queue.try_send(work) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(QueueFull),
    }
}

/// The queue had no room (or the server is shutting down).
#[derive(Debug)]
pub struct QueueFull;

/// The worker loop of one model: runs until every sender is gone and the queue is drained.
pub fn work<B: Backend>(
    model: ServedModel<B>,
    device: B::Device,
    queue: Receiver<Work>,
    config: BatchingConfig,
    metrics: &Metrics,
) {
    let mut pending: Option<Work> = None;
    // Gatherings in a row that found a single request.
    let mut lone_gatherings = 0;
    loop {
        let first = match pending.take() {
            Some(work) => work,
            None => match queue.recv() {
                Ok(work) => work,
                Err(_) => return,
            },
        };
        if first.cancelled() {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match first {
            Work::Answer {
                question,
                context,
                n_best,
                queued,
                reply,
            } => {
                record_queue(metrics, queued);
                let started = Instant::now();
                let result = guarded(|| answer(&model, &question, &context, n_best));
                metrics.record_execution(1, started.elapsed());
                finish(metrics, reply, result);
            }
            Work::Infer { .. } | Work::Texts { .. } => {
                let deadline = if lone_gatherings < LONE_GATHERINGS_TO_STOP_WAITING {
                    first.queued() + config.max_queue_delay
                } else {
                    // Take only what is queued already.
                    Instant::now()
                };
                let mut rows = rows_of(&first);
                let mut batch = vec![first];
                while rows < config.max_batch_size {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match queue.recv_timeout(wait) {
                        Ok(work) if work.cancelled() => {
                            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(work)
                            if batch[0].batches_with(&work)
                                && rows + rows_of(&work) <= config.max_batch_size =>
                        {
                            rows += rows_of(&work);
                            batch.push(work);
                        }
                        Ok(work) => {
                            pending = Some(work);
                            break;
                        }
                        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                            break
                        }
                    }
                }
                if batch.len() > 1 || pending.is_some() {
                    lone_gatherings = 0;
                } else {
                    // Held at the bound, past which it changes nothing (so it never overflows).
                    lone_gatherings = (lone_gatherings + 1).min(LONE_GATHERINGS_TO_STOP_WAITING);
                }
                if matches!(batch[0], Work::Texts { .. }) {
                    run_texts(&model, batch, metrics);
                } else {
                    run_batch(&model, &device, batch, metrics);
                }
            }
        }
    }
}

fn rows_of(work: &Work) -> usize {
    match work {
        Work::Infer { batch, .. } => batch.batch_size(),
        Work::Texts { inputs, .. } => inputs.len(),
        Work::Answer { .. } => 1,
    }
}

fn record_queue(metrics: &Metrics, queued: Instant) {
    metrics
        .queue_us
        .fetch_add(queued.elapsed().as_micros() as u64, Ordering::Relaxed);
}

fn finish<T>(
    metrics: &Metrics,
    reply: oneshot::Sender<Result<T, String>>,
    result: Result<T, String>,
) {
    let counter = if result.is_ok() {
        &metrics.success
    } else {
        &metrics.failure
    };
    counter.fetch_add(1, Ordering::Relaxed);
    // The client may have gone in the meantime; nothing to do then.
    let _ = reply.send(result);
}

/// Runs `f`, turning an error or a panic into a message, so one bad batch never stops a worker.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{error:#}")),
        Err(panic) => Err(format!(
            "the model failed: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error")
        )),
    }
}

fn answer<B: Backend>(
    model: &ServedModel<B>,
    question: &str,
    context: &str,
    n_best: usize,
) -> anyhow::Result<Vec<Answer>> {
    let TaskModel::QuestionAnswering(qa) = &model.model else {
        anyhow::bail!("{} is not a question-answering model", model.name);
    };
    let windows = FeatureConfig {
        max_seq_length: model.settings.max_seq_length,
        doc_stride: model.settings.doc_stride,
        max_query_length: 64,
    };
    let answers = AnswerConfig {
        n_best_size: n_best.max(20),
        ..AnswerConfig::default()
    };
    let mut answers = qa.answer_with(question, context, &windows, &answers)?;
    answers.truncate(n_best.max(1));
    Ok(answers)
}

/// Pads the requests' rows to the longest, runs them at once, and splits the outputs back.
fn run_batch<B: Backend>(
    model: &ServedModel<B>,
    device: &B::Device,
    batch: Vec<Work>,
    metrics: &Metrics,
) {
    let mut requests = Vec::with_capacity(batch.len());
    let mut padded = TokenBatch {
        input_ids: Vec::new(),
        token_type_ids: Some(Vec::new()),
        attention_mask: Some(Vec::new()),
    };
    let longest = batch
        .iter()
        .filter_map(|work| match work {
            Work::Infer { batch, .. } => Some(batch.seq_len()),
            Work::Answer { .. } | Work::Texts { .. } => None,
        })
        .max()
        .unwrap_or(0);
    for work in batch {
        let Work::Infer {
            batch,
            queued,
            reply,
        } = work
        else {
            unreachable!("only inference requests are batched")
        };
        record_queue(metrics, queued);
        let (rows, seq_len) = (batch.batch_size(), batch.seq_len());
        let pad = |row: &[i64], fill: i64| {
            let mut row = row.to_vec();
            row.resize(longest, fill);
            row
        };
        for row in 0..rows {
            padded.input_ids.push(pad(&batch.input_ids[row], 0));
            let types = batch.token_type_ids.as_ref().map(|t| &t[row][..]);
            let mask = batch.attention_mask.as_ref().map(|m| &m[row][..]);
            let ones = vec![1; seq_len];
            let zeros = vec![0; seq_len];
            let token_types = padded.token_type_ids.as_mut().expect("set above");
            token_types.push(pad(types.unwrap_or(&zeros), 0));
            let attention = padded.attention_mask.as_mut().expect("set above");
            attention.push(pad(mask.unwrap_or(&ones), 0));
        }
        requests.push((rows, seq_len, reply));
    }
    let total_rows = padded.input_ids.len();
    let started = Instant::now();
    let result = guarded(|| model.infer(&padded, device));
    metrics.record_execution(total_rows, started.elapsed());
    let mut first_row = 0;
    for (rows, seq_len, reply) in requests {
        let own = result.as_ref().map_err(Clone::clone).map(|outputs| {
            outputs
                .iter()
                .map(|output| slice_rows(output, first_row, rows, seq_len))
                .collect()
        });
        first_row += rows;
        finish(metrics, reply, own);
    }
}

/// Runs the texts of several requests through the model's pipeline in one call (which sorts
/// them by length into batches) and hands each request its own results back.
fn run_texts<B: Backend>(model: &ServedModel<B>, batch: Vec<Work>, metrics: &Metrics) {
    let mut requests = Vec::with_capacity(batch.len());
    let mut inputs = Vec::new();
    for work in batch {
        let Work::Texts {
            inputs: own,
            queued,
            reply,
        } = work
        else {
            unreachable!("only text requests are batched with text requests")
        };
        record_queue(metrics, queued);
        requests.push((own.len(), reply));
        inputs.extend(own);
    }
    let started = Instant::now();
    let result = guarded(|| {
        let borrowed: Vec<(&str, Option<&str>)> = inputs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_deref()))
            .collect();
        Ok(match &model.model {
            TaskModel::SentenceEmbeddings(pipeline) => {
                if borrowed.iter().any(|(_, pair)| pair.is_some()) {
                    anyhow::bail!("{} embeds single texts, not pairs", model.name);
                }
                let texts: Vec<&str> = borrowed.iter().map(|(text, _)| *text).collect();
                TextOutput::Embeddings(pipeline.embed(&texts)?)
            }
            TaskModel::SequenceClassification(pipeline) => {
                TextOutput::Classes(pipeline.classify_inputs(&borrowed)?)
            }
            _ => anyhow::bail!("{} has no text pipeline", model.name),
        })
    });
    metrics.record_execution(inputs.len(), started.elapsed());
    let mut first = 0;
    for (count, reply) in requests {
        let own = result
            .as_ref()
            .map_err(Clone::clone)
            .map(|all| all.slice(first..first + count));
        first += count;
        finish(metrics, reply, own);
    }
}

/// Rows `first..first + rows` of `output`, cut to `seq_len` positions when it has a sequence axis.
fn slice_rows(output: &HostOutput, first: usize, rows: usize, seq_len: usize) -> HostOutput {
    let row_size: usize = output.shape[1..].iter().product();
    let has_sequence = !matches!(output.name, "logits" | "sentence_embedding");
    let mut shape = output.shape.clone();
    shape[0] = rows;
    let mut data = Vec::new();
    for row in first..first + rows {
        let values = &output.data[row * row_size..(row + 1) * row_size];
        if has_sequence {
            let per_position: usize = output.shape[2..].iter().product();
            data.extend_from_slice(&values[..seq_len * per_position]);
        } else {
            data.extend_from_slice(values);
        }
    }
    if has_sequence {
        shape[1] = seq_len;
    }
    HostOutput {
        name: output.name,
        shape,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slicing_gives_each_request_its_rows_and_length() {
        // Two requests padded to 3 positions: rows 0..1 (length 2) and 1..3 (length 3).
        let output = HostOutput {
            name: "last_hidden_state",
            shape: vec![3, 3, 2],
            data: (0..18).map(|v| v as f32).collect(),
        };
        let first = slice_rows(&output, 0, 1, 2);
        assert_eq!(first.shape, vec![1, 2, 2]);
        assert_eq!(first.data, vec![0.0, 1.0, 2.0, 3.0]);
        let second = slice_rows(&output, 1, 2, 3);
        assert_eq!(second.shape, vec![2, 3, 2]);
        assert_eq!(second.data, (6..18).map(|v| v as f32).collect::<Vec<_>>());
        let logits = HostOutput {
            name: "logits",
            shape: vec![3, 2],
            data: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        };
        assert_eq!(slice_rows(&logits, 2, 1, 1).data, vec![4.0, 5.0]);
    }
}
