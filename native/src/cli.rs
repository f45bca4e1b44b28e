//! The command line: every subcommand and its arguments, and running the one given.

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use crate::{bench, commands, distributed, finetune, plot, prep, pretrain, quickstart, serve};

/// BERT pretraining, fine-tuning and inference: NVIDIA's recipe, in Rust.
#[derive(Debug, Parser)]
#[command(name = "bert-native", version, about, after_help = AFTER_THE_QUICKSTART)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
pub enum Command {
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
    /// Reads one HDF5 shard and writes its arrays to standard output: the child process that
    /// reads shards for the others (see `shard_sandbox`).
    #[command(name = "internal-read-shard", hide = true)]
    InternalReadShard(crate::shard_sandbox::ReadShardArgs),
}

/// Whether `name` is one of this binary's subcommands (`launch` runs those with itself).
pub fn is_subcommand(name: &str) -> bool {
    Cli::command()
        .get_subcommands()
        .any(|command| command.get_name() == name)
}

impl Command {
    /// Runs the subcommand.
    pub fn run(self) -> Result<()> {
        match self {
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
            Command::InternalReadShard(args) => crate::shard_sandbox::run(args),
        }
    }
}
