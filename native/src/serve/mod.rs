//! `bert-native serve`: the models of a repository behind the KServe v2 / Triton HTTP protocol,
//! with dynamic batching. The HTTP side (axum on tokio) never computes: each model has a worker
//! thread fed by a bounded queue (see [`batcher`]). Each model is loaded and warmed up
//! ([`ServedModel::warm_up`]) before the server listens.

mod batcher;
mod connections;
mod http;
pub mod protocol;
mod repository;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;

use crate::backend::{self, BackendKind, Job};
use batcher::{BatchingConfig, Metrics};
use connections::ConnectionLimits;
use repository::{model_folders, ServedModel};

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Folder with one sub-folder per model: config.json, weights, vocabulary and `model.json`
    /// (`{"task": "question-answering" | "sequence-classification" | "encoder" |
    /// "sentence-embeddings"}`; sentence-embeddings models are also served at
    /// `POST /v2/models/{name}/embed` and the OpenAI-compatible `POST /v1/embeddings`,
    /// sequence-classification models at `POST /v2/models/{name}/classify`).
    #[arg(long)]
    model_repository: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    http_address: std::net::IpAddr,
    /// Port to listen on (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    /// Most sequences in one model run (requests are gathered up to this).
    #[arg(long, default_value_t = 8)]
    max_batch_size: usize,
    /// Longest a request waits for others to share its model run, in milliseconds (0: no
    /// dynamic batching). It waits only while requests come together: after three model runs
    /// in a row that found no company, each starts at once with what is queued.
    #[arg(long, default_value_t = 5)]
    max_queue_delay_ms: u64,
    /// Requests waiting per model before new ones are refused with 503.
    #[arg(long, default_value_t = 64)]
    max_queue_size: usize,
    /// Connections open at once; further clients wait in the kernel's accept queue until one
    /// closes.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Longest a client may take to send a request's headers, or its body, in seconds; slower
    /// clients, and kept-alive connections idle this long, are closed.
    #[arg(long, default_value_t = 30)]
    request_timeout_s: u64,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
}

/// Runs `serve` until SIGTERM or Ctrl-C; requests in flight are answered before it exits.
pub fn run(args: ServeArgs) -> Result<()> {
    let folders = model_folders(&args.model_repository)?;
    backend::run(args.backend, ServeJob { args, folders })
}

struct ServeJob {
    args: ServeArgs,
    folders: Vec<PathBuf>,
}

impl Job for ServeJob {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let batching = BatchingConfig {
            max_batch_size: self.args.max_batch_size.max(1),
            max_queue_delay: Duration::from_millis(self.args.max_queue_delay_ms),
        };
        let mut models = Vec::new();
        let mut workers = Vec::new();
        for folder in &self.folders {
            let model = ServedModel::<B>::load(folder, &device)?;
            let warm_up = model.warm_up(&device)?;
            eprintln!(
                "model {}: loaded and warmed up ({} ms)",
                model.name,
                warm_up.as_millis()
            );
            let (sender, receiver) = sync_channel(self.args.max_queue_size.max(1));
            let metrics = Arc::new(Metrics::default());
            models.push(http::ModelEntry {
                name: model.name.clone(),
                task: model.settings.task,
                config: model.config.clone(),
                outputs: model.outputs(),
                queue: sender,
                metrics: metrics.clone(),
            });
            let device = device.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("model {}", model.name))
                    .spawn(move || batcher::work(model, device, receiver, batching, &metrics))
                    .context("cannot start a model worker")?,
            );
        }
        let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let address = SocketAddr::new(self.args.http_address, self.args.http_port);
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let local = listener.local_addr()?;
            eprintln!(
                "serving {} on http://{local} (KServe v2 / Triton HTTP; /metrics)",
                names.join(", ")
            );
            let limits = ConnectionLimits {
                max_connections: self.args.max_connections,
                request_timeout: Duration::from_secs(self.args.request_timeout_s.max(1)),
            };
            let router = http::router(models, limits.request_timeout);
            connections::serve(listener, router, limits, shutdown_signal()).await;
            anyhow::Ok(())
        })?;
        // The router (and with it every queue's sender) is gone: workers drain and stop.
        for worker in workers {
            let _ = worker.join();
        }
        eprintln!("stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("shutting down: answering the requests in flight");
}
