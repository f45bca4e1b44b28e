//! `bert-native`: the command-line front end of bert-core (CPU, wgpu and CUDA backends).

mod backend;
mod bench;
mod commands;
mod distributed;
mod dllogger;
mod finetune;
mod plot;
mod precision;
mod prep;
mod pretrain;
mod pretraining_shards;
mod quickstart;
mod report;
mod serve;
mod shard_file;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

// The CPU backend allocates a fresh buffer for most tensor operations; glibc's allocator maps and
// unmaps large buffers each time (page faults cost ~35% of a forward pass). mimalloc reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mi_option_t` enum in mimalloc.h; libmimalloc-sys
/// names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps the memory freed during a run mapped for reuse, unless the environment sets mimalloc's
/// purge delay (`MIMALLOC_PURGE_DELAY`, or its older name `MIMALLOC_RESET_DELAY`). By default
/// mimalloc returns memory left free for a second to the system, so a training step, whose large
/// buffers come back only in the next step, faulted each one in afresh: about 15% of a BERT-base
/// step on the CPU went to the kernel zeroing pages. The price is that the resident size stays at
/// its peak (13% more for that run), which is why `serve`, which runs for days through bursts,
/// keeps mimalloc's default.
fn keep_freed_memory() {
    let set_by_environment = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
    if !set_by_environment {
        // SAFETY: sets one of mimalloc's options, which it reads atomically; -1 means never purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// BERT pretraining, fine-tuning and inference: NVIDIA's recipe, in Rust.
#[derive(Debug, Parser)]
#[command(name = "bert-native", version, about, after_help = AFTER_THE_QUICKSTART)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to go from the quickstart's folder: which command takes which of its folders.
const AFTER_THE_QUICKSTART: &str = "\
After `bert-native quickstart` (scripts/quickstart.sh), its folder feeds every command:
  quickstart/qa-model   a question-answering model:
      bert-native qa --model quickstart/qa-model --question \"...\" --context \"...\"
      bert-native squad --model quickstart/qa-model --predict-file quickstart/squad/dev.json \\
          --do-predict --do-eval --output-dir predictions
  quickstart/model      the pretrained BERT (MLM + NSP heads): fine-tune it, inspect it, encode with it:
      bert-native squad --model quickstart/model --train-file quickstart/squad/train.json \\
          --do-train --output-dir my-qa-model
      bert-native info --model quickstart/model
      bert-native encode --model quickstart/model --text \"...\" --output out.safetensors
  quickstart/data/*/encyclopedia   NVIDIA-layout HDF5 shards: pretrain further or afresh:
      bert-native pretrain --config-file quickstart/config.json \\
          --input-dir quickstart/data/*/encyclopedia --output-dir my-model --max-steps 400
  quickstart/model/dllogger.json   the pretraining log: bert-native plot quickstart/model/dllogger.json
Any of the model folders can be served: see `bert-native serve --help`. Each command's --help lists its flags.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a checkpoint on a batch and save every output (hidden states, pooler, head logits).
    Encode(commands::encode::EncodeArgs),
    /// Sentence embeddings of a text file (one text per line), as sentence-transformers computes
    /// them, saved as .npy, .safetensors or .jsonl.
    Embed(commands::embed::EmbedArgs),
    /// Tokenize a text or pair and print tokens, ids, token types and character offsets as JSON.
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Describe a model folder: configuration, parameter count, heads, tokenizer.
    Info(commands::info::InfoArgs),
    /// Convert a checkpoint (Hugging Face .bin, NVIDIA .pt, safetensors) to a Hugging Face
    /// safetensors folder.
    Convert(commands::convert::ConvertArgs),
    /// Benchmarks: forward pass and pretraining steps (sequences per second, latency percentiles).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Pretraining data: text corpus to NVIDIA-compatible HDF5 shards.
    #[command(subcommand)]
    Prep(prep::PrepCommand),
    /// MLM + NSP pretraining with NVLAMB (run_pretraining.py).
    Pretrain(Box<pretrain::PretrainArgs>),
    /// Loss and learning-rate curves of a pretraining log, as a PNG.
    Plot(plot::PlotArgs),
    /// SQuAD v1.1 fine-tuning, prediction and evaluation (run_squad.py); `squad evaluate` scores
    /// any predictions file.
    Squad(finetune::squad::SquadArgs),
    /// GLUE MRPC and SST-2 fine-tuning, evaluation and prediction (run_glue.py).
    Glue(Box<finetune::glue::GlueArgs>),
    /// Answer a question about a text of any length (inference.py).
    Qa(Box<finetune::qa::QaArgs>),
    /// The recipe end to end in minutes with no downloads: a synthetic encyclopedia, a learned
    /// vocabulary, data preparation, pretraining of a small BERT, masked-LM accuracy before/after.
    Quickstart(quickstart::QuickstartArgs),
    /// Serve the models of a repository over the KServe v2 / Triton HTTP protocol, with dynamic
    /// batching and a text question-answering endpoint.
    Serve(serve::ServeArgs),
    /// Start a data-parallel job on this node: one process per GPU running `-- pretrain ...`,
    /// with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set (torch.distributed.run's job).
    Launch(distributed::launch::LaunchArgs),
}

/// Whether `name` is one of this binary's subcommands (`launch` runs those with itself).
fn is_subcommand(name: &str) -> bool {
    Cli::command()
        .get_subcommands()
        .any(|command| command.get_name() == name)
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        keep_freed_memory();
    }
    let result: Result<()> = match cli.command {
        Command::Encode(args) => commands::encode::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Prep(command) => prep::run(command),
        Command::Pretrain(args) => pretrain::run(*args),
        Command::Plot(args) => plot::run(args),
        Command::Squad(args) => finetune::squad::run(args),
        Command::Glue(args) => finetune::glue::run(*args),
        Command::Qa(args) => finetune::qa::run(*args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Launch(args) => distributed::launch::run(args),
    };
    if let Err(error) = result {
        eprintln!("error: {}", error_message(&error));
        std::process::exit(1);
    }
}

/// The error and its causes, `: `-separated, each cause once: the library errors already write
/// their source into their own message (`path: what the OS said`), which anyhow's `{:#}` would
/// repeat.
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::{error_message, MI_OPTION_PURGE_DELAY};
    use bert_core::error::PretrainedError;

    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        // Its value: the environment's, else mimalloc's default, 1000 ms, which no neighbouring
        // option has.
        let expected = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(1000);
        // SAFETY: reads one of mimalloc's options.
        let value = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, expected);
    }

    #[test]
    fn error_messages_name_each_cause_once() {
        let not_found = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(PretrainedError::Io {
            path: "/models/config.json".into(),
            source: not_found,
        })
        .context("loading the model");
        assert_eq!(
            error_message(&error),
            "loading the model: /models/config.json: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&plain), "outer: inner");
    }
}
