//! bert-native's library: the command line (`cli`) and what its commands run: the backends,
//! data preparation, pretraining on one or many processes, fine-tuning, serving and benchmarks.
//! The `bert-native` binary (main.rs) parses the command line and runs it; the readers of outside
//! bytes here are also fuzzed (`fuzz/`).

pub mod backend;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod distributed;
pub mod dllogger;
pub mod finetune;
pub mod plot;
pub mod precision;
pub mod prep;
pub mod pretrain;
pub mod pretraining_shards;
pub mod quickstart;
pub mod report;
pub mod serve;
pub mod shard_file;
pub mod shard_sandbox;
