//! The page: load a model, ask questions about a text of any length, fine-tune on SQuAD-format
//! data in a worker and download the result.

use std::cell::RefCell;
use std::rc::Rc;

use bert_core::finetune::FineTuning;
use bert_core::pretrained::ModelBytes;
use bert_core::squad::{Answer, AnswerConfig, FeatureConfig};
use leptos::prelude::*;
use leptos::task::spawn_local;
use send_wrapper::SendWrapper;
use wasm_bindgen::prelude::Closure;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, Worker, WorkerOptions, WorkerType};

use crate::engine::{self, Device, QaEngine};
use crate::fetch::{self, Progress};
use crate::protocol::{BackendChoice, Phase, TrainEvent, TrainRequest, TrainingData};
use crate::worker::{parse_event, request_message};

/// Mounts the page on `<body>`.
pub fn mount() {
    leptos::mount::mount_to_body(App);
}

/// What the page keeps that is not shown: the device, the model and its files, the worker.
#[derive(Default)]
struct Session {
    device: Option<Device>,
    engine: Option<Rc<QaEngine>>,
    files: Option<ModelBytes>,
    worker: Option<Worker>,
    /// Whether the worker has started (messages sent earlier would be lost).
    worker_ready: bool,
    /// A request waiting for the worker to start.
    pending_request: Option<wasm_bindgen::JsValue>,
}

type SharedSession = SendWrapper<Rc<RefCell<Session>>>;

/// One answer as shown.
#[derive(Debug, Clone, PartialEq)]
struct ShownAnswer {
    text: String,
    probability: f64,
    offsets: Option<(usize, usize)>,
}

impl From<&Answer> for ShownAnswer {
    fn from(answer: &Answer) -> Self {
        Self {
            text: answer.text.clone(),
            probability: answer.probability,
            offsets: answer.offsets,
        }
    }
}

/// The model's state for the status line (`data-state` is what tests wait on).
#[derive(Debug, Clone, PartialEq)]
enum ModelState {
    Empty,
    Loading(String),
    Ready(String),
    Failed(String),
}

impl ModelState {
    fn name(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Loading(_) => "loading",
            Self::Ready(_) => "ready",
            Self::Failed(_) => "error",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Empty => "No model loaded.".into(),
            Self::Loading(m) | Self::Ready(m) | Self::Failed(m) => m.clone(),
        }
    }
}

fn query(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search)
        .ok()?
        .get(name)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}

#[component]
fn App() -> impl IntoView {
    let session: SharedSession = SendWrapper::new(Rc::new(RefCell::new(Session::default())));
    let backend_choice = BackendChoice::from_query(query("backend").as_deref());
    let (backend, set_backend) = signal(String::from("choosing…"));
    let (backend_note, set_backend_note) = signal(None::<String>);
    let (model_state, set_model_state) = signal(ModelState::Empty);
    let (progress, set_progress) = signal(None::<Progress>);
    let (model_url, set_model_url) = signal(query("model").unwrap_or_else(|| "model/".into()));
    let (tab, set_tab) = signal("answer");

    // Loading a model: from files or a URL; the device is chosen once.
    let install = {
        let session = session.clone();
        move |files: ModelBytes, origin: String| {
            let session = session.clone();
            spawn_local(async move {
                let device = session.borrow().device.clone();
                let device = match device {
                    Some(device) => device,
                    None => {
                        let device = engine::select(backend_choice).await;
                        set_backend.set(device.label());
                        if let Device::Cpu { reason } = &device {
                            set_backend_note.set(Some(format!(
                                "Running on the CPU (wasm): {reason}. Answers are the same, only slower."
                            )));
                        }
                        session.borrow_mut().device = Some(device.clone());
                        device
                    }
                };
                match QaEngine::load(&files, &device) {
                    Ok(engine) => {
                        let described = engine.describe();
                        let mut session = session.borrow_mut();
                        session.engine = Some(Rc::new(engine));
                        session.files = Some(files);
                        set_model_state.set(ModelState::Ready(format!(
                            "Model from {origin}: {described}."
                        )));
                    }
                    Err(message) => {
                        // A model without a QA head can still be fine-tuned.
                        let trainable = message.contains("question-answering head");
                        if trainable {
                            session.borrow_mut().files = Some(files);
                        }
                        set_model_state.set(ModelState::Failed(format!("{origin}: {message}")));
                    }
                }
            });
        }
    };

    let load_url = {
        let install = install.clone();
        move || {
            let url = model_url.get_untracked();
            let install = install.clone();
            set_model_state.set(ModelState::Loading(format!("Downloading {url}…")));
            spawn_local(async move {
                let report = move |name: &str, p: Progress| {
                    set_progress.set(Some(p));
                    let size = match p.total {
                        Some(total) => format!("{} of {}", megabytes(p.received), megabytes(total)),
                        None => megabytes(p.received),
                    };
                    let from = if p.cached {
                        "from the browser cache"
                    } else {
                        "downloading"
                    };
                    set_model_state.set(ModelState::Loading(format!("{name}: {size} ({from})")));
                };
                match fetch::download_model(&url, &report).await {
                    Ok(files) => install(files, url),
                    Err(message) => set_model_state.set(ModelState::Failed(message)),
                }
            });
        }
    };
    // The page loads the model served next to it (or ?model=URL) at once.
    load_url();

    let on_files = {
        let install = install.clone();
        move |list: Option<web_sys::FileList>| {
            let Some(list) = list else { return };
            let install = install.clone();
            set_model_state.set(ModelState::Loading("Reading the dropped files…".into()));
            spawn_local(async move {
                match fetch::read_files(&list).await {
                    Ok(files) => install(files, "the dropped files".into()),
                    Err(message) => set_model_state.set(ModelState::Failed(message)),
                }
            });
        }
    };
    let on_drop = {
        let on_files = on_files.clone();
        move |event: web_sys::DragEvent| {
            event.prevent_default();
            on_files(event.data_transfer().and_then(|d| d.files()));
        }
    };
    let on_pick = move |event: web_sys::Event| {
        let input: web_sys::HtmlInputElement = event_target(&event);
        on_files(input.files());
    };

    view! {
        <header>
            <h1>"bert-rs"</h1>
            <p class="tagline">"BERT question answering and fine-tuning, in your browser."</p>
            <p>"Backend: " <strong id="backend">{backend}</strong></p>
            {move || backend_note.get().map(|note| view! { <p id="backend-note" class="note">{note}</p> })}
        </header>
        <section class="model"
            on:dragover=|event: web_sys::DragEvent| event.prevent_default()
            on:drop=on_drop>
            <h2>"Model"</h2>
            <div class="row">
                <input id="model-url" type="text"
                    prop:value=model_url
                    on:input=move |ev| set_model_url.set(event_target_value(&ev)) />
                <button id="load-url" on:click={
                    let load_url = load_url.clone();
                    move |_| load_url()
                }>"Load from URL"</button>
                <label class="file">"or choose files"
                    <input id="model-files" type="file" multiple on:change=on_pick /></label>
            </div>
            <p class="hint">"Drop config.json, model.safetensors (float32 or float16) and tokenizer.json or vocab.txt here."</p>
            {move || progress.get().map(|p| view! {
                <progress max=p.total.unwrap_or(p.received).max(1) as f64 value=p.received as f64></progress>
            })}
            <p id="model-status" data-state=move || model_state.get().name()>{move || model_state.get().message()}</p>
        </section>
        <nav>
            <button id="tab-answer" class:active=move || tab.get() == "answer" on:click=move |_| set_tab.set("answer")>"Answer"</button>
            <button id="tab-train" class:active=move || tab.get() == "train" on:click=move |_| set_tab.set("train")>"Fine-tune"</button>
        </nav>
        <div hidden=move || tab.get() != "answer"><AnswerTab session=session.clone() backend=backend /></div>
        <div hidden=move || tab.get() != "train"><TrainTab session=session.clone() backend_choice=backend_choice install=install.clone() /></div>
    }
}

const DEMO_CONTEXT: &str = "The Amazon River in South America is the largest river by discharge volume of water in the world. It flows through Peru, Colombia and Brazil before reaching the Atlantic Ocean.";
const DEMO_QUESTION: &str = "Which ocean does the Amazon reach?";

#[component]
fn AnswerTab(session: SharedSession, backend: ReadSignal<String>) -> impl IntoView {
    let (context, set_context) = signal(DEMO_CONTEXT.to_string());
    let (question, set_question) = signal(DEMO_QUESTION.to_string());
    let (answers, set_answers) = signal(Vec::<ShownAnswer>::new());
    let (answered_context, set_answered_context) = signal(String::new());
    let (timing, set_timing) = signal(None::<(f64, String)>);
    let (error, set_error) = signal(None::<String>);
    let (busy, set_busy) = signal(false);

    let ask = move |_| {
        let Some(engine) = session.borrow().engine.clone() else {
            set_error.set(Some("Load a question-answering model first.".into()));
            return;
        };
        let (question, context) = (question.get_untracked(), context.get_untracked());
        set_busy.set(true);
        set_error.set(None);
        spawn_local(async move {
            let started = now_ms();
            let result = engine
                .answer(
                    &question,
                    &context,
                    FeatureConfig::default(),
                    AnswerConfig::default(),
                )
                .await;
            let elapsed = now_ms() - started;
            set_busy.set(false);
            match result {
                Ok(found) => {
                    set_answers.set(found.iter().take(5).map(ShownAnswer::from).collect());
                    set_answered_context.set(context);
                    set_timing.set(Some((elapsed, backend.get_untracked())));
                }
                Err(message) => set_error.set(Some(message)),
            }
        });
    };

    let highlighted = move || {
        let context = answered_context.get();
        let best = answers.get().first().cloned();
        let chars: Vec<char> = context.chars().collect();
        match best.and_then(|a| a.offsets) {
            Some((start, end)) if start <= end && end <= chars.len() => {
                let part = |range: std::ops::Range<usize>| chars[range].iter().collect::<String>();
                view! {
                    <span>{part(0..start)}</span>
                    <mark id="answer-highlight">{part(start..end)}</mark>
                    <span>{part(end..chars.len())}</span>
                }
                .into_any()
            }
            _ => view! { <span>{context}</span> }.into_any(),
        }
    };

    view! {
        <section class="answer">
            <label for="context">"Context (any length: long texts are read in overlapping windows)"</label>
            <textarea id="context" rows="8"
                prop:value=context
                on:input=move |ev| set_context.set(event_target_value(&ev))></textarea>
            <label for="question">"Question"</label>
            <div class="row">
                <input id="question" type="text"
                    prop:value=question
                    on:input=move |ev| set_question.set(event_target_value(&ev)) />
                <button id="ask" on:click=ask disabled=busy>{move || if busy.get() { "Thinking…" } else { "Answer" }}</button>
            </div>
            {move || error.get().map(|e| view! { <p id="answer-error" class="error">{e}</p> })}
            {move || answers.get().first().cloned().map(|best| view! {
                <div class="result">
                    <p>"Answer: " <strong id="answer-text">{best.text.clone()}</strong>
                        " (score " <span id="answer-score">{format!("{:.4}", best.probability)}</span> ")"</p>
                    {move || timing.get().map(|(ms, on)| view! {
                        <p class="timing">"Answered in " <span id="answer-ms">{format!("{ms:.0}")}</span> " ms on " <span id="answer-backend">{on}</span></p>
                    })}
                    <p id="highlighted" class="context">{highlighted}</p>
                    <h3>"n-best"</h3>
                    <ol id="nbest">
                        {answers.get().into_iter().map(|a| view! {
                            <li>{a.text} " — " {format!("{:.3}", a.probability)}</li>
                        }).collect_view()}
                    </ol>
                </div>
            })}
        </section>
    }
}

/// A polyline of the losses in a 300×100 box.
fn loss_points(losses: &[f64]) -> String {
    let max = losses.iter().copied().fold(f64::MIN, f64::max);
    let min = losses.iter().copied().fold(f64::MAX, f64::min);
    let span = (max - min).max(1e-9);
    let n = losses.len().max(2) - 1;
    losses
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{:.1},{:.1}",
                300.0 * i as f64 / n as f64,
                95.0 - 90.0 * (l - min) / span
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[component]
fn TrainTab(
    session: SharedSession,
    backend_choice: BackendChoice,
    install: impl Fn(ModelBytes, String) + Clone + Send + Sync + 'static,
) -> impl IntoView {
    let (epochs, set_epochs) = signal(String::from("1"));
    let (learning_rate, set_learning_rate) = signal(String::from("0.0002"));
    let (batch, set_batch) = signal(String::from("8"));
    let (max_steps, set_max_steps) = signal(String::new());
    let (people, set_people) = signal(String::from("30"));
    let (upload, set_upload) = signal(None::<(String, String)>);
    let (status, set_status) = signal(String::from("Idle."));
    let (state, set_state) = signal("idle");
    let (losses, set_losses) = signal(Vec::<f64>::new());
    let (scores, set_scores) = signal((None::<(f64, f64)>, None::<(f64, f64)>));
    let (download, set_download) = signal(None::<String>);
    let (trained_on, set_trained_on) = signal(String::new());
    let trained: SendWrapper<Rc<RefCell<Option<ModelBytes>>>> = SendWrapper::new(Rc::default());

    let on_upload = move |event: web_sys::Event| {
        let input: web_sys::HtmlInputElement = event_target(&event);
        let Some(file) = input.files().and_then(|l| l.get(0)) else {
            return;
        };
        spawn_local(async move {
            match fetch::read_text(&file).await {
                Ok(text) => set_upload.set(Some((file.name(), text))),
                Err(message) => set_status.set(message),
            }
        });
    };

    let start = {
        let session = session.clone();
        let trained = trained.clone();
        move |_| {
            let parse = |text: String, what: &str| {
                text.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{what}: not a number: {text:?}"))
            };
            let request = (|| -> Result<TrainRequest, String> {
                Ok(TrainRequest {
                    settings: FineTuning {
                        train_batch_size: parse(batch.get_untracked(), "batch size")? as usize,
                        gradient_accumulation_steps: 1,
                        learning_rate: parse(learning_rate.get_untracked(), "learning rate")?,
                        epochs: parse(epochs.get_untracked(), "epochs")?,
                        warmup_proportion: 0.1,
                        max_steps: match max_steps.get_untracked().trim() {
                            "" => None,
                            text => Some(parse(text.into(), "max steps")? as u64),
                        },
                        seed: 1,
                    },
                    data: match upload.get_untracked() {
                        Some((name, json)) => TrainingData::Uploaded { name, json },
                        None => TrainingData::Synthetic {
                            people: parse(people.get_untracked(), "people")? as usize,
                        },
                    },
                    held_out_fraction: 0.2,
                    max_seq_length: 128,
                    doc_stride: 64,
                    backend: backend_choice,
                })
            })();
            let request = match request {
                Ok(request) => request,
                Err(message) => {
                    set_status.set(message);
                    return;
                }
            };
            let Some(files) = session.borrow().files.clone() else {
                set_status.set("Load a model first (its encoder is what gets fine-tuned).".into());
                return;
            };
            let worker = match worker_for(&session, set_status) {
                Ok(worker) => worker,
                Err(message) => {
                    set_status.set(message);
                    return;
                }
            };
            set_losses.set(Vec::new());
            set_scores.set((None, None));
            set_download.set(None);
            set_state.set("running");
            set_status.set("Starting the worker…".into());
            let trained = trained.clone();
            let config_name = files.config.0.clone();
            let tokenizer = files.tokenizer.clone();
            let ready_session = session.clone();
            let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                let Some(message) = parse_event(&event.data()) else {
                    // The worker's start-up notice: send what waited for it.
                    let mut session = ready_session.borrow_mut();
                    session.worker_ready = true;
                    if let (Some(worker), Some(request)) =
                        (session.worker.clone(), session.pending_request.take())
                    {
                        if let Err(e) = worker.post_message(&request) {
                            set_state.set("error");
                            set_status.set(engine::describe(e));
                        }
                    }
                    return;
                };
                let message = match message {
                    Ok(message) => message,
                    Err(text) => {
                        set_status.set(text);
                        return;
                    }
                };
                match message.event {
                    TrainEvent::Backend { label } => {
                        set_trained_on.set(label.clone());
                        set_status.set(format!("Training on {label}…"));
                    }
                    TrainEvent::Data { train_questions, held_out_questions, windows, steps } => set_status.set(format!(
                        "{train_questions} training questions ({windows} windows), {held_out_questions} held out; {steps} steps. Scoring the held-out questions…"
                    )),
                    TrainEvent::Evaluated { phase, exact_match, f1 } => set_scores.update(|s| match phase {
                        Phase::Before => s.0 = Some((exact_match, f1)),
                        Phase::After => s.1 = Some((exact_match, f1)),
                    }),
                    TrainEvent::Step { step, steps, loss, lr, elapsed_s } => {
                        set_losses.update(|l| l.push(loss));
                        set_status.set(format!("Step {step}/{steps}: loss {loss:.4}, lr {lr:.2e}, {elapsed_s:.1} s"));
                    }
                    TrainEvent::Finished { seconds, sequences_per_second } => {
                        if let (Some(weights), Some(config)) = (message.weights, message.config) {
                            set_download.set(blob_url(&weights).ok());
                            *trained.borrow_mut() = Some(ModelBytes {
                                config: (config_name.clone(), config.into_bytes()),
                                weights: ("model.safetensors".into(), weights),
                                tokenizer: tokenizer.clone(),
                            });
                        }
                        set_state.set("done");
                        set_status.set(format!("Done in {seconds:.1} s ({sequences_per_second:.2} sequences/s)."));
                    }
                    TrainEvent::Failed { message } => {
                        set_state.set("error");
                        set_status.set(format!("Training failed: {message}"));
                    }
                }
            });
            worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            on_message.forget();
            let sent = request_message(&request, &files).and_then(|message| {
                let mut session = session.borrow_mut();
                if session.worker_ready {
                    worker.post_message(&message).map_err(engine::describe)
                } else {
                    session.pending_request = Some(message);
                    Ok(())
                }
            });
            if let Err(message) = sent {
                set_state.set("error");
                set_status.set(message);
            }
        }
    };

    // Stopping ends the worker (a step cannot be interrupted); the next run starts a new one.
    let stop = move |_| {
        let mut session = session.borrow_mut();
        if let Some(worker) = session.worker.take() {
            worker.terminate();
        }
        session.worker_ready = false;
        session.pending_request = None;
        set_state.set("stopped");
        set_status.set("Stopped. The loaded model is unchanged.".into());
    };

    let use_trained = move |_| {
        if let Some(files) = trained.borrow().clone() {
            install(files, "fine-tuning".into());
        }
    };

    let number = |id: &'static str,
                  label: &'static str,
                  value: ReadSignal<String>,
                  set: WriteSignal<String>| {
        view! {
            <label>{label} <input id=id type="text" size="8" prop:value=value on:input=move |ev| set.set(event_target_value(&ev)) /></label>
        }
    };

    view! {
        <section class="train">
            <p>"Fine-tune the loaded model for SQuAD-style question answering, here in the browser: the same optimizer (Adam, linear warm-up), loss and windows as " <code>"bert-native squad"</code> ", in a worker so the page stays responsive."</p>
            <div class="row">
                {number("people", "Synthetic set, people:", people, set_people)}
                <label class="file">"or upload a SQuAD v1.1 JSON " <input id="squad-file" type="file" accept=".json" on:change=on_upload /></label>
                {move || upload.get().map(|(name, _)| view! { <span>"using " {name}</span> })}
            </div>
            <div class="row">
                {number("epochs", "Epochs", epochs, set_epochs)}
                {number("learning-rate", "Learning rate", learning_rate, set_learning_rate)}
                {number("batch", "Batch", batch, set_batch)}
                {number("max-steps", "Max steps (optional)", max_steps, set_max_steps)}
                <button id="train" on:click=start disabled=move || state.get() == "running">"Train"</button>
                <button id="stop" on:click=stop disabled=move || state.get() != "running">"Stop"</button>
            </div>
            <p id="train-status" data-state=state>{status}</p>
            <p id="worker-backend">{move || (!trained_on.get().is_empty()).then(|| format!("Worker backend: {}", trained_on.get()))}</p>
            <svg id="loss-chart" viewBox="0 0 300 100" width="600" height="200">
                <polyline fill="none" stroke="#2a6" stroke-width="1.5" points=move || loss_points(&losses.get()) />
            </svg>
            <p id="losses" data-losses=move || serde_json::to_string(&losses.get()).unwrap_or_default()>
                {move || losses.get().last().map(|l| format!("{} steps, last loss {l:.4}", losses.get().len()))}
            </p>
            <table class="scores">
                <tr><th></th><th>"EM"</th><th>"F1"</th></tr>
                {move || {
                    let (before, after) = scores.get();
                    [("before", before), ("after", after)].into_iter().map(|(name, s)| view! {
                        <tr id=format!("scores-{name}")>
                            <td>{name}</td>
                            <td class="em">{s.map(|s| format!("{:.1}", s.0))}</td>
                            <td class="f1">{s.map(|s| format!("{:.1}", s.1))}</td>
                        </tr>
                    }).collect_view()
                }}
            </table>
            {move || download.get().map(|url| view! {
                <p>
                    <a id="download" href=url download="model.safetensors">"Download the fine-tuned weights (safetensors)"</a>
                    " — " <button id="use-trained" on:click=use_trained.clone()>"Answer with it"</button>
                </p>
            })}
        </section>
    }
}

/// The session's worker, started on first use.
fn worker_for(session: &SharedSession, set_status: WriteSignal<String>) -> Result<Worker, String> {
    if let Some(worker) = session.borrow().worker.clone() {
        return Ok(worker);
    }
    let options = WorkerOptions::new();
    options.set_type(WorkerType::Module);
    let worker = Worker::new_with_options("./worker.js", &options).map_err(engine::describe)?;
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        set_status.set("The training worker failed to start (see the browser console).".into());
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    session.borrow_mut().worker = Some(worker.clone());
    Ok(worker)
}

/// An object URL for downloading `bytes`.
fn blob_url(bytes: &[u8]) -> Result<String, String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes).into());
    let options = web_sys::BlobPropertyBag::new();
    options.set_type("application/octet-stream");
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(&parts, &options)
        .map_err(engine::describe)?;
    web_sys::Url::create_object_url_with_blob(&blob).map_err(engine::describe)
}
