//! The HTTP routes: health, server and model metadata, inference (JSON or binary tensors), the
//! text question-answering endpoint, sentence embeddings (ours and OpenAI's `/v1/embeddings`),
//! text classification, and Prometheus metrics.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bert_core::pipelines::{Classifications, Embeddings};
use bert_core::BertConfig;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::batcher::{submit, Metrics, TextOutput, Work, BATCH_SIZE_BUCKETS};
use super::protocol::{encode_response, parse_infer, Inference, HEADER_LENGTH, INPUT_NAMES};
use super::repository::Task;

/// What the HTTP side knows of a model: its description and its worker's queue.
pub struct ModelEntry {
    /// Name in URLs.
    pub name: String,
    /// Task.
    pub task: Task,
    /// Configuration (to validate inputs before they queue).
    pub config: BertConfig,
    /// Outputs and their dimensions after the batch.
    pub outputs: Vec<(&'static str, Vec<i64>)>,
    /// The worker's queue.
    pub queue: SyncSender<Work>,
    /// The worker's counters.
    pub metrics: Arc<Metrics>,
}

type Models = Arc<Vec<ModelEntry>>;

/// The server's routes over `models`; a request's body must arrive within `body_timeout`.
pub fn router(models: Vec<ModelEntry>, body_timeout: Duration) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(|| async { StatusCode::OK }))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(versioned_metadata),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(versioned_ready),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(versioned_infer),
        )
        .route("/v2/models/{name}/qa", post(question_answering))
        .route("/v2/models/{name}/embed", post(embed))
        .route("/v2/models/{name}/classify", post(classify))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(models))
        .layer(middleware::from_fn_with_state(
            body_timeout,
            read_body_within,
        ))
}

/// Largest request body (axum's default limit for a body read whole).
const MAX_BODY_BYTES: usize = 2 << 20;

/// Reads the request's whole body before it is routed, within `timeout`: a client trickling its
/// body (a slow-loris client) gets a 408 instead of holding its connection open. A body refused
/// part-read closes its connection, and the answer says so.
async fn read_body_within(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(body)) => next.run(Request::from_parts(parts, Body::from(body))).await,
        Ok(Err(e)) => {
            let too_long = std::error::Error::source(&e)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if too_long {
                closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                closing(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                )
            }
        }
        Err(_) => closing(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        ),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// An error answered before the body was read to its end: the connection cannot carry another
/// request, so the answer says `Connection: close` (hyper then closes it), and a kept-alive
/// client opens a new one instead of writing into a closed socket.
fn closing(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = error(status, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn find<'a>(models: &'a Models, name: &str) -> Option<&'a ModelEntry> {
    models.iter().find(|m| m.name == name)
}

fn not_found(models: &Models, name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no model named {name:?}; this server has {}",
            models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "bert-native",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn model_metadata(State(models): State<Models>, Path(name): Path<String>) -> Response {
    match find(&models, &name) {
        Some(model) => {
            let outputs: Vec<Value> = model
                .outputs
                .iter()
                .map(|(name, dims)| {
                    let mut shape = vec![-1];
                    shape.extend(dims);
                    json!({"name": name, "datatype": "FP32", "shape": shape})
                })
                .collect();
            let inputs: Vec<Value> = INPUT_NAMES
                .iter()
                .map(|name| json!({"name": name, "datatype": "INT64", "shape": [-1, -1]}))
                .collect();
            Json(json!({
                "name": model.name,
                "versions": ["1"],
                "platform": format!("bert-native/{}", model.task.name()),
                "inputs": inputs,
                "outputs": outputs,
            }))
            .into_response()
        }
        None => not_found(&models, &name),
    }
}

async fn versioned_metadata(
    state: State<Models>,
    Path((name, _version)): Path<(String, String)>,
) -> Response {
    model_metadata(state, Path(name)).await
}

async fn model_ready(State(models): State<Models>, Path(name): Path<String>) -> Response {
    match find(&models, &name) {
        Some(_) => StatusCode::OK.into_response(),
        None => not_found(&models, &name),
    }
}

async fn versioned_ready(
    state: State<Models>,
    Path((name, _version)): Path<(String, String)>,
) -> Response {
    model_ready(state, Path(name)).await
}

async fn versioned_infer(
    state: State<Models>,
    Path((name, _version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(state, Path(name), headers, body).await
}

async fn infer(
    State(models): State<Models>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(model) = find(&models, &name) else {
        return not_found(&models, &name);
    };
    let header_length = match headers.get(HEADER_LENGTH) {
        Some(value) => match value.to_str().ok().and_then(|v| v.trim().parse().ok()) {
            Some(length) => Some(length),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Inference-Header-Content-Length is not a number",
                )
            }
        },
        None => None,
    };
    let output_names: Vec<&str> = model.outputs.iter().map(|(name, _)| *name).collect();
    let Inference {
        id,
        batch,
        outputs: requested,
    } = match parse_infer(&body, header_length, &model.config, &output_names) {
        Ok(inference) => inference,
        Err(bad) => {
            model.metrics.failure.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, bad.0);
        }
    };
    let (reply, answer) = oneshot::channel();
    let work = Work::Infer {
        batch,
        queued: Instant::now(),
        reply,
    };
    if let Some(refused) = queue(model, work) {
        return refused;
    }
    match answer.await {
        Ok(Ok(outputs)) => {
            let encoded = encode_response(&model.name, id.as_deref(), &requested, &outputs);
            let mut response = encoded.body.into_response();
            let headers = response.headers_mut();
            match encoded.header_length {
                Some(length) => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    headers.insert(HEADER_LENGTH, HeaderValue::from(length));
                }
                None => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            response
        }
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the model worker stopped"),
    }
}

/// Queues `work` for `model`; a response when it cannot be queued.
fn queue(model: &ModelEntry, work: Work) -> Option<Response> {
    match submit(&model.queue, work) {
        Ok(()) => None,
        Err(_) => {
            model.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the queue of {} is full: retry later", model.name),
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QaRequest {
    question: String,
    context: String,
    #[serde(default = "one")]
    n_best: usize,
}

fn one() -> usize {
    1
}

async fn question_answering(
    State(models): State<Models>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(model) = find(&models, &name) else {
        return not_found(&models, &name);
    };
    if model.task != Task::QuestionAnswering {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{name} is a {} model, not question-answering",
                model.task.name()
            ),
        );
    }
    let request: QaRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"question\": \"...\", \"context\": \"...\", \"n_best\": 1}}: {e}"
                ),
            )
        }
    };
    if request.question.trim().is_empty() || request.context.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "the question and the context must not be empty",
        );
    }
    let (reply, answer) = oneshot::channel();
    let work = Work::Answer {
        question: request.question,
        context: request.context,
        n_best: request.n_best,
        queued: Instant::now(),
        reply,
    };
    if let Some(refused) = queue(model, work) {
        return refused;
    }
    match answer.await {
        Ok(Ok(answers)) => {
            let best = &answers[0];
            Json(json!({
                "answer": best.text,
                "score": best.probability,
                "start": best.offsets.map(|o| o.0),
                "end": best.offsets.map(|o| o.1),
                "n_best": answers,
            }))
            .into_response()
        }
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the model worker stopped"),
    }
}

/// Queues texts for a model's text pipeline and waits for the results; the status and message
/// of a failure.
async fn run_texts(
    model: &ModelEntry,
    inputs: Vec<(String, Option<String>)>,
) -> Result<TextOutput, (StatusCode, String)> {
    let (reply, answer) = oneshot::channel();
    let work = Work::Texts {
        inputs,
        queued: Instant::now(),
        reply,
    };
    if submit(&model.queue, work).is_err() {
        model.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        let message = format!("the queue of {} is full: retry later", model.name);
        return Err((StatusCode::SERVICE_UNAVAILABLE, message));
    }
    match answer.await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(message)) => Err((StatusCode::INTERNAL_SERVER_ERROR, message)),
        Err(_) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the model worker stopped".into(),
        )),
    }
}

/// The embeddings of `texts` by a sentence-embeddings model.
async fn embed_texts(
    model: &ModelEntry,
    texts: Vec<String>,
) -> Result<Embeddings, (StatusCode, String)> {
    match run_texts(model, texts.into_iter().map(|t| (t, None)).collect()).await? {
        TextOutput::Embeddings(embeddings) => Ok(embeddings),
        TextOutput::Classes(_) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} answered with classes, not embeddings", model.name),
        )),
    }
}

/// Why `model` cannot embed texts, if it cannot.
fn not_embedding(model: &ModelEntry) -> Option<String> {
    (model.task != Task::SentenceEmbeddings).then(|| {
        format!(
            "{} is not a sentence-embeddings model (its task: {}); embeddings come from models whose model.json says {{\"task\": \"sentence-embeddings\"}}",
            model.name,
            model.task.name()
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    texts: Vec<String>,
}

/// `POST /v2/models/{name}/embed`: `{"texts": [...]}` to `{"embeddings": [[...]], "tokens":
/// [...], "truncated": [...]}` (the positions of texts cut to fit the model).
async fn embed(State(models): State<Models>, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(model) = find(&models, &name) else {
        return not_found(&models, &name);
    };
    if let Some(message) = not_embedding(model) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let texts = match serde_json::from_slice::<EmbedRequest>(&body) {
        Ok(request) if !request.texts.is_empty() => request.texts,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "no texts given: the list is empty"),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"texts\": [\"...\", ...]}}: {e}"),
            )
        }
    };
    match embed_texts(model, texts).await {
        Ok(output) => Json(json!({
            "model": model.name,
            "embeddings": output.vectors,
            "tokens": output.tokens,
            "truncated": output.truncated,
        }))
        .into_response(),
        Err((status, message)) => error(status, message),
    }
}

/// `/classify`'s body: texts, or pairs of texts (paraphrase, entailment), not both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    #[serde(default)]
    texts: Vec<String>,
    #[serde(default)]
    pairs: Vec<(String, String)>,
}

/// `POST /v2/models/{name}/classify`: `{"texts": [...]}` or `{"pairs": [["a", "b"], ...]}` to
/// `{"results": [[{"label", "index", "score"}, ...], ...], "truncated": [...]}`: every class with
/// its probability, best first, per input (as Hugging Face's text-classification pipeline with
/// `top_k=None`).
async fn classify(State(models): State<Models>, Path(name): Path<String>, body: Bytes) -> Response {
    let Some(model) = find(&models, &name) else {
        return not_found(&models, &name);
    };
    if model.task != Task::SequenceClassification {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{name} is a {} model, not sequence-classification",
                model.task.name()
            ),
        );
    }
    let expected = "expected {\"texts\": [\"...\", ...]} or {\"pairs\": [[\"...\", \"...\"], ...]}";
    let inputs: Vec<(String, Option<String>)> =
        match serde_json::from_slice::<ClassifyRequest>(&body) {
            Ok(ClassifyRequest { texts, pairs }) if pairs.is_empty() && !texts.is_empty() => {
                texts.into_iter().map(|text| (text, None)).collect()
            }
            Ok(ClassifyRequest { texts, pairs }) if texts.is_empty() && !pairs.is_empty() => {
                pairs.into_iter().map(|(a, b)| (a, Some(b))).collect()
            }
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{expected}: give a non-empty list of texts or of pairs, not both"),
                )
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("{expected}: {e}")),
        };
    match run_texts(model, inputs).await {
        Ok(TextOutput::Classes(Classifications { scores, truncated })) => {
            let results: Vec<Vec<Value>> = scores
                .iter()
                .map(|classes| {
                    classes
                        .iter()
                        .map(|c| json!({"label": c.label, "index": c.index, "score": c.score}))
                        .collect()
                })
                .collect();
            Json(json!({"model": model.name, "results": results, "truncated": truncated}))
                .into_response()
        }
        Ok(TextOutput::Embeddings(_)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} answered with embeddings, not classes", model.name),
        ),
        Err((status, message)) => error(status, message),
    }
}

/// `/v1/embeddings`' `input`: a text or a list of texts (OpenAI's token-id arrays are not taken).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OpenAiInput {
    Text(String),
    Texts(Vec<String>),
}

/// The body of OpenAI's `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
struct OpenAiEmbeddingRequest {
    input: OpenAiInput,
    model: String,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// An error as OpenAI's API words it, so that its clients raise their usual exceptions.
fn openai_error(status: StatusCode, message: impl Into<String>) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    let body =
        json!({"error": {"message": message.into(), "type": kind, "param": null, "code": null}});
    (status, Json(body)).into_response()
}

/// OpenAI's `POST /v1/embeddings`, for its clients (the `openai` package, LangChain and
/// LlamaIndex's OpenAI embeddings): `model` names a sentence-embeddings model of the repository;
/// `encoding_format` `float` (the default) or `base64` (little-endian float32, what the `openai`
/// client asks for).
async fn openai_embeddings(State(models): State<Models>, body: Bytes) -> Response {
    let request: OpenAiEmbeddingRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"input\": \"...\" or [\"...\", ...], \"model\": \"...\"}} (token-id arrays are not supported): {e}"),
            )
        }
    };
    let Some(model) = find(&models, &request.model) else {
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        return openai_error(
            StatusCode::NOT_FOUND,
            format!(
                "the model {:?} does not exist; this server has {}",
                request.model,
                names.join(", ")
            ),
        );
    };
    if let Some(message) = not_embedding(model) {
        return openai_error(StatusCode::BAD_REQUEST, message);
    }
    let texts = match request.input {
        OpenAiInput::Text(text) => vec![text],
        OpenAiInput::Texts(texts) if !texts.is_empty() => texts,
        OpenAiInput::Texts(_) => {
            return openai_error(StatusCode::BAD_REQUEST, "input is an empty list")
        }
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                format!("encoding_format {other:?} is not supported: use float or base64"),
            )
        }
    };
    let dimension = model.config.hidden_size;
    if let Some(asked) = request.dimensions.filter(|&asked| asked != dimension) {
        return openai_error(
            StatusCode::BAD_REQUEST,
            format!(
                "dimensions {asked}: {}'s embeddings have {dimension}",
                model.name
            ),
        );
    }
    let output = match embed_texts(model, texts).await {
        Ok(output) => output,
        Err((status, message)) => return openai_error(status, message),
    };
    let data: Vec<Value> = output
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = output.tokens.iter().sum();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// Reads one counter of a model's metrics.
type Counter = fn(&Metrics) -> u64;

async fn metrics(State(models): State<Models>) -> Response {
    let mut text = String::new();
    let counters: [(&str, &str, Counter); 8] = [
        ("nv_inference_request_success", "Requests answered", |m| {
            m.success.load(Ordering::Relaxed)
        }),
        (
            "nv_inference_request_failure",
            "Requests that failed",
            |m| m.failure.load(Ordering::Relaxed),
        ),
        (
            "bert_inference_request_rejected",
            "Requests refused: queue full",
            |m| m.rejected.load(Ordering::Relaxed),
        ),
        (
            "bert_inference_request_cancelled",
            "Requests whose client left while queued",
            |m| m.cancelled.load(Ordering::Relaxed),
        ),
        ("nv_inference_exec_count", "Model runs (batches)", |m| {
            m.executions.load(Ordering::Relaxed)
        }),
        ("nv_inference_count", "Sequences run", |m| {
            m.inferences.load(Ordering::Relaxed)
        }),
        (
            "nv_inference_queue_duration_us",
            "Time requests spent queued",
            |m| m.queue_us.load(Ordering::Relaxed),
        ),
        (
            "nv_inference_compute_infer_duration_us",
            "Time spent computing",
            |m| m.compute_us.load(Ordering::Relaxed),
        ),
    ];
    for (metric, help, read) in counters {
        let _ = writeln!(text, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for model in models.iter() {
            let _ = writeln!(
                text,
                "{metric}{{model=\"{}\"}} {}",
                model.name,
                read(&model.metrics)
            );
        }
    }
    let metric = "bert_batch_size";
    let _ = writeln!(
        text,
        "# HELP {metric} Sequences per model run\n# TYPE {metric} histogram"
    );
    for model in models.iter() {
        let m = &model.metrics;
        for (bucket, count) in BATCH_SIZE_BUCKETS.iter().zip(&m.batch_size_le) {
            let _ = writeln!(
                text,
                "{metric}_bucket{{model=\"{}\",le=\"{bucket}\"}} {}",
                model.name,
                count.load(Ordering::Relaxed)
            );
        }
        let executions = m.executions.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "{metric}_bucket{{model=\"{0}\",le=\"+Inf\"}} {executions}\n{metric}_sum{{model=\"{0}\"}} {1}\n{metric}_count{{model=\"{0}\"}} {executions}",
            model.name,
            m.inferences.load(Ordering::Relaxed)
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
