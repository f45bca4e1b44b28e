//! The training worker: fine-tunes a question-answering model on SQuAD-format data with
//! `bert-core`'s trainer (the same optimizer, schedule and loss as `bert-native squad`), off the
//! page's thread, reporting each step; and the messages that carry requests and events.

use bert_core::checkpoint::to_safetensors_async;
use bert_core::data::synthetic::{split_held_out, squad_dataset, Encyclopedia};
use bert_core::model::BertForQuestionAnswering;
use bert_core::pretrained::ModelBytes;
use bert_core::squad::{
    convert_examples_to_features, evaluate_answers, predict_dataset_async, qa_loss, read_examples,
    AnswerConfig, FeatureConfig, SquadDataset,
};
use bert_core::tokenizer::BertTokenizer;
use bert_core::BertConfig;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

use crate::engine::{self, Device};
use crate::protocol::{Phase, TrainEvent, TrainRequest, TrainingData};

/// Seed of the synthetic encyclopedia (the quickstart's).
const SYNTHETIC_SEED: u64 = 12345;

/// Installs the worker's message handler: each message is one training request.
pub fn listen() {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        wasm_bindgen_futures::spawn_local(async move {
            if let Err(message) = handle(event.data()).await {
                post(&TrainEvent::Failed { message }, None);
            }
        });
    });
    scope.set_onmessage(Some(handler.as_ref().unchecked_ref()));
    handler.forget();
    post_ready();
}

/// Builds the message that asks the worker to train: the request as JSON and the model's files.
pub fn request_message(request: &TrainRequest, files: &ModelBytes) -> Result<JsValue, String> {
    let message = Object::new();
    let set = |key: &str, value: &JsValue| {
        Reflect::set(&message, &key.into(), value).map_err(engine::describe)
    };
    let json = serde_json::to_string(request).map_err(|e| e.to_string())?;
    set("request", &json.into())?;
    for (role, (name, bytes)) in [
        ("config", &files.config),
        ("weights", &files.weights),
        ("tokenizer", &files.tokenizer),
    ] {
        set(&format!("{role}_name"), &name.into())?;
        set(role, &Uint8Array::from(bytes.as_slice()).into())?;
    }
    Ok(message.into())
}

/// A worker's message: the event, and with `Finished` the trained weights and `config.json`.
pub struct EventMessage {
    /// What happened.
    pub event: TrainEvent,
    /// The fine-tuned weights (safetensors, Hugging Face names).
    pub weights: Option<Vec<u8>>,
    /// Their `config.json`.
    pub config: Option<String>,
}

/// Reads a message from the worker; `None` for the start-up notice.
pub fn parse_event(data: &JsValue) -> Option<Result<EventMessage, String>> {
    let text = Reflect::get(data, &"event".into()).ok()?.as_string()?;
    let event = match serde_json::from_str(&text) {
        Ok(event) => event,
        Err(e) => return Some(Err(format!("unreadable worker message: {e}"))),
    };
    let weights = Reflect::get(data, &"weights".into())
        .ok()
        .filter(|v| !v.is_undefined())
        .map(|v| Uint8Array::new(&v).to_vec());
    let config = Reflect::get(data, &"config".into())
        .ok()
        .and_then(|v| v.as_string());
    Some(Ok(EventMessage {
        event,
        weights,
        config,
    }))
}

fn post_ready() {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let message = Object::new();
    let _ = Reflect::set(&message, &"ready".into(), &true.into());
    let _ = scope.post_message(&message);
}

fn post(event: &TrainEvent, finished: Option<(Vec<u8>, String)>) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let message = Object::new();
    let json = serde_json::to_string(event).unwrap_or_default();
    let _ = Reflect::set(&message, &"event".into(), &json.into());
    if let Some((weights, config)) = finished {
        let _ = Reflect::set(
            &message,
            &"weights".into(),
            &Uint8Array::from(weights.as_slice()).into(),
        );
        let _ = Reflect::set(&message, &"config".into(), &config.into());
    }
    let _ = scope.post_message(&message);
}

async fn handle(data: JsValue) -> Result<(), String> {
    let field = |key: &str| Reflect::get(&data, &key.into()).map_err(engine::describe);
    let request: TrainRequest = serde_json::from_str(
        &field("request")?
            .as_string()
            .ok_or("the request is not text")?,
    )
    .map_err(|e| format!("bad request: {e}"))?;
    let file = |role: &str| -> Result<(String, Vec<u8>), String> {
        let name = field(&format!("{role}_name"))?
            .as_string()
            .unwrap_or_default();
        Ok((name, Uint8Array::new(&field(role)?).to_vec()))
    };
    let files = ModelBytes {
        config: file("config")?,
        weights: file("weights")?,
        tokenizer: file("tokenizer")?,
    };
    let device = engine::select(request.backend).await;
    post(
        &TrainEvent::Backend {
            label: device.label(),
        },
        None,
    );
    match device {
        Device::WebGpu { device, .. } => train::<Wgpu>(device, &request, &files).await,
        Device::Cpu { .. } => train::<Flex>(Default::default(), &request, &files).await,
    }
}

/// The questions of the request, split into training and held-out parts.
fn training_data(request: &TrainRequest) -> Result<(SquadDataset, SquadDataset), String> {
    match &request.data {
        TrainingData::Synthetic { people } => {
            let articles = Encyclopedia::generate(*people, SYNTHETIC_SEED).articles(SYNTHETIC_SEED);
            let (train, held_out) = split_held_out(&articles, SYNTHETIC_SEED);
            Ok((squad_dataset(&train), squad_dataset(&held_out)))
        }
        TrainingData::Uploaded { name, json } => {
            let dataset = SquadDataset::from_json(json)
                .map_err(|e| format!("{name}: not a SQuAD v1.1 file: {e}"))?;
            Ok(dataset.split_held_out(request.held_out_fraction))
        }
    }
}

async fn train<B: Backend>(
    device: B::Device,
    request: &TrainRequest,
    files: &ModelBytes,
) -> Result<(), String> {
    let loaded = files
        .question_answering::<Autodiff<B>>(false, &device)
        .map_err(|e| e.to_string())?;
    let (config, tokenizer) = (loaded.config, loaded.tokenizer);
    let (train_set, held_out) = training_data(request)?;
    let features_config = FeatureConfig {
        max_seq_length: request.max_seq_length,
        doc_stride: request.doc_stride,
        ..FeatureConfig::default()
    };
    let (examples, _) = read_examples(&train_set, true);
    let features = convert_examples_to_features(&examples, &tokenizer, &features_config, true)
        .map_err(|e| e.to_string())?;
    let plan = request
        .settings
        .plan(features.len())
        .map_err(|e| e.to_string())?;
    post(
        &TrainEvent::Data {
            train_questions: train_set.num_questions(),
            held_out_questions: held_out.num_questions(),
            windows: features.len(),
            steps: plan.steps(),
        },
        None,
    );
    let score = |phase, model: BertForQuestionAnswering<B>| {
        evaluate(
            phase,
            model,
            &config,
            &tokenizer,
            &held_out,
            &features_config,
            &device,
        )
    };
    score(Phase::Before, loaded.model.valid()).await?;

    let mut trainer = plan.trainer(loaded.model, device.clone());
    let started = now_seconds();
    let mut sequences = 0usize;
    for (_, micro_batches) in plan.batches() {
        let micro_batches: Vec<Vec<_>> = micro_batches
            .iter()
            .map(|micro| micro.iter().map(|&i| &features[i]).collect())
            .collect();
        let report = trainer
            .step_async(&micro_batches, |model, micro| {
                vec![
                    qa_loss(model, &config, micro, request.max_seq_length, &device)
                        .expect("windows fit the model: the tokenizer and length were checked"),
                ]
            })
            .await
            .map_err(|diverged| format!("{diverged}: lower the learning rate"))?;
        sequences += micro_batches.iter().map(Vec::len).sum::<usize>();
        let loss = report.losses[0];
        if !loss.is_finite() {
            return Err(format!(
                "the loss became {loss} at step {}: lower the learning rate",
                report.step
            ));
        }
        post(
            &TrainEvent::Step {
                step: report.step,
                steps: plan.steps(),
                loss,
                lr: report.lr,
                elapsed_s: now_seconds() - started,
            },
            None,
        );
        // Let the worker's event loop breathe between steps (messages, GPU callbacks).
        yield_now().await;
    }
    let seconds = now_seconds() - started;
    let model = trainer.model.valid();
    let weights = to_safetensors_async(&model)
        .await
        .map_err(|e| e.to_string())?;
    score(Phase::After, model).await?;
    post(
        &TrainEvent::Finished {
            seconds,
            sequences_per_second: sequences as f64 / seconds.max(1e-9),
        },
        Some((weights, config.to_hf_json("BertForQuestionAnswering"))),
    );
    Ok(())
}

async fn evaluate<B: Backend>(
    phase: Phase,
    model: BertForQuestionAnswering<B>,
    config: &BertConfig,
    tokenizer: &BertTokenizer,
    held_out: &SquadDataset,
    features: &FeatureConfig,
    device: &B::Device,
) -> Result<(), String> {
    let answers = predict_dataset_async(
        &model,
        config,
        tokenizer,
        held_out,
        features,
        &AnswerConfig::default(),
        16,
        device,
    )
    .await
    .map_err(|e| e.to_string())?;
    let scores = evaluate_answers(held_out, &answers);
    post(
        &TrainEvent::Evaluated {
            phase,
            exact_match: scores.exact_match,
            f1: scores.f1,
        },
        None,
    );
    Ok(())
}

/// Seconds from the worker's clock.
fn now_seconds() -> f64 {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    scope.performance().map_or(0.0, |p| p.now() / 1000.0)
}

/// Resolves on the next turn of the event loop.
async fn yield_now() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
        let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
