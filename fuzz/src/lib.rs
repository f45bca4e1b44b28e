//! The fuzz targets' bodies: each hands its input to one reader of outside bytes, as a file or a
//! request would, and then uses what the reader accepted the way the program would next. A
//! reader may refuse the input with an error; it must never panic, hang or allocate without
//! bound. `cargo fuzz` runs these through `fuzz/targets` (nightly, libFuzzer); every input that
//! ever failed is kept under `fuzz/regressions/<target>/` and replayed by this crate's test on
//! stable, in the normal test command.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Once;

use bert_native::distributed::tcp::{read_greeting, read_message, Wire};
use bert_native::prep::wiki;
use bert_native::serve::protocol;
use bert_native::shard_file;
use burn::backend::flex::Flex;

use bert_core::checkpoint::Checkpoint;
use bert_core::data::text;
use bert_core::glue::GlueTask;
use bert_core::model::BertForPreTraining;
use bert_core::pretraining::checkpoint as training_checkpoint;
use bert_core::squad::{self, FeatureConfig, SquadDataset};
use bert_core::tokenizer::BertTokenizer;
use bert_core::BertConfig;

/// A fuzz target: its name (also its directory under `fuzz/regressions/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("safetensors_checkpoint", safetensors_checkpoint),
    ("pytorch_checkpoint", pytorch_checkpoint),
    ("training_checkpoint", training_checkpoint),
    ("config_json", config_json),
    ("vocab_txt", vocab_txt),
    ("tokenizer_json", tokenizer_json),
    ("tokenize", tokenize),
    ("squad_json", squad_json),
    ("glue_tsv", glue_tsv),
    ("wikitext", wikitext),
    ("wiki_xml", wiki_xml),
    ("hdf5_shard", hdf5_shard),
    ("kserve_request", kserve_request),
    ("collective_messages", collective_messages),
];

/// Runs target `body` on `data` under libFuzzer. A panic that escapes `body` aborts the process
/// (a crash for libFuzzer) after printing its message and place; one that a reader catches and
/// turns into an error is not a finding (burn-store's lazy tensor loaders catch their own, which
/// libFuzzer's panic hook would otherwise report as crashes).
pub fn fuzz(body: fn(&[u8]), data: &[u8]) {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(info.to_string()));
        }))
    });
    if std::panic::catch_unwind(|| body(data)).is_err() {
        let message = LAST_PANIC.with(|last| last.borrow_mut().take());
        eprintln!("{}", message.unwrap_or_else(|| "a panic".into()));
        std::process::abort();
    }
}

thread_local! {
    /// The message and place of this thread's last panic.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The target named `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|&(_, body)| body)
}

/// A model checkpoint in safetensors, from memory (the browser's path), then its tensors listed
/// and checked as a model's would be.
pub fn safetensors_checkpoint(data: &[u8]) {
    if let Ok(checkpoint) = Checkpoint::from_bytes(data.to_vec(), "fuzz input") {
        inspect(&checkpoint);
    }
}

/// A file in any format `Checkpoint::from_file` recognises: safetensors, a PyTorch zip archive,
/// a legacy pickle, an NVIDIA `.pt`.
pub fn pytorch_checkpoint(data: &[u8]) {
    let path = scratch_file("checkpoint");
    std::fs::write(&path, data).expect("the scratch file is writable");
    if let Ok(checkpoint) = Checkpoint::from_file(&path) {
        inspect(&checkpoint);
    }
}

/// What loading a model does with a checkpoint: its tensors listed, its heads recognised, and
/// its values read into a small BERT (the golden checkpoints' configuration), each checked
/// against the parameter's shape.
fn inspect(checkpoint: &Checkpoint) {
    for name in checkpoint.names() {
        let _ = checkpoint.shape(name);
    }
    let _ = checkpoint.heads();
    let config = BertConfig::from_json(SMALL_CONFIG).expect("the golden configuration");
    let mut model = BertForPreTraining::<Flex>::new(&config, &Default::default());
    let _ = checkpoint.load_into(&mut model);
}

/// The configuration of the golden checkpoints (hidden size 16, 2 layers, 30 tokens).
const SMALL_CONFIG: &str = include_str!("../../tests/fixtures/checkpoints/config.json");

/// A file of this process's own in the temporary directory (the PyTorch readers take a path).
fn scratch_file(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bert-fuzz-{what}-{}", std::process::id()))
}

/// A training checkpoint (`pretraining/checkpoint.rs`), decoded and verified.
pub fn training_checkpoint(data: &[u8]) {
    let _ = training_checkpoint::decode(data.to_vec(), "fuzz input");
}

/// A model's `config.json`.
pub fn config_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = BertConfig::from_json(text);
    }
}

/// A `vocab.txt` (the first byte chooses lower-casing), then a sentence tokenized with it.
pub fn vocab_txt(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Ok(tokenizer) = BertTokenizer::from_vocab(text, flags & 1 == 1) {
            let _ = tokenizer.tokenize("Héllo, wörld! unaffable 1951 [MASK]");
        }
    }
}

/// A `tokenizer.json`, then a sentence tokenized with it.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(tokenizer) = BertTokenizer::from_tokenizer_json(data) {
        let _ = tokenizer.tokenize("Héllo, wörld! unaffable 1951 [MASK]");
    }
}

/// A small WordPiece vocabulary: the special tokens, letters, digits and a few pieces.
fn small_tokenizer() -> BertTokenizer {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .map(String::from)
        .to_vec();
    for c in ('a'..='z').chain('0'..='9').chain(".,!?'-()".chars()) {
        vocab.push(c.to_string());
        vocab.push(format!("##{c}"));
    }
    vocab.extend(["the", "un", "##aff", "##able", "born", "in"].map(String::from));
    BertTokenizer::from_vocab(&vocab.join("\n"), true).expect("a valid vocabulary")
}

/// Text of any kind through the tokenizer (lower-casing, accents, punctuation, WordPiece), alone
/// and as a question and its context.
pub fn tokenize(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let tokenizer = small_tokenizer();
    let _ = tokenizer.tokenize(&text);
    let _ = tokenizer.wordpieces(&text);
}

/// A SQuAD file: parsed, read into examples (for training and for evaluation), and cut into
/// windows as fine-tuning and prediction do.
pub fn squad_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(dataset) = SquadDataset::from_json(text) else {
        return;
    };
    let tokenizer = small_tokenizer();
    let config = FeatureConfig {
        max_seq_length: 48,
        doc_stride: 16,
        max_query_length: 12,
    };
    for training in [true, false] {
        let (examples, _skipped) = squad::read_examples(&dataset, training);
        let _ = squad::convert_examples_to_features(&examples, &tokenizer, &config, training);
    }
}

/// A GLUE TSV file, read as each task's.
pub fn glue_tsv(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        for task in [GlueTask::Mrpc, GlueTask::Sst2] {
            let _ = task.read_tsv(text);
        }
    }
}

/// A Wikipedia article's wikitext to plain text, then cut into sentences.
pub fn wikitext(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let plain = text::wikitext_to_plain(&text);
    let _ = text::split_sentences(&text::collapse_whitespace(&plain));
}

/// A Wikipedia XML dump, each article's wikitext then made plain text, as `prep` reads a dump.
pub fn wiki_xml(data: &[u8]) {
    let _ = wiki::for_each_article(data, |wikitext| {
        let _ = text::wikitext_to_plain(wikitext);
        Ok(())
    });
}

/// A pretraining shard (HDF5, NVIDIA's layout) read and validated against BERT's vocabulary, as
/// `pretrain` reads its input files (through libhdf5, which takes a path).
pub fn hdf5_shard(data: &[u8]) {
    let path = scratch_file("shard.hdf5");
    std::fs::write(&path, data).expect("the scratch file is writable");
    let _ = shard_file::read_valid_shard(&path, 30522);
}

/// A KServe v2 infer request body for the golden checkpoints' model. The first byte chooses the
/// binary-tensor extension: odd, and the next two bytes (little-endian) are the
/// `Inference-Header-Content-Length`; the rest is the body.
pub fn kserve_request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (header_length, body) = match rest {
        [low, high, body @ ..] if mode & 1 == 1 => {
            (Some(usize::from(u16::from_le_bytes([*low, *high]))), body)
        }
        _ => (None, rest),
    };
    let config = BertConfig::from_json(SMALL_CONFIG).expect("the golden configuration");
    let outputs = ["last_hidden_state", "pooler_output", "start_logits"];
    let _ = protocol::parse_infer(body, header_length, &config, &outputs);
}

/// What rank 0 of a multi-process job reads from a connection: the greeting, then messages of
/// the TCP collective until the bytes end or one is refused. The first byte chooses the wire
/// (low bit: float16) and the number of values each message must hold (the other bits).
pub fn collective_messages(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    if read_greeting(&mut rest).is_err() {
        return;
    }
    let wire = if mode & 1 == 1 {
        Wire::Float16
    } else {
        Wire::Float32
    };
    while read_message(&mut rest, usize::from(mode >> 1), wire).is_ok() {}
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every input kept under `fuzz/regressions/<target>/` (each once crashed, hung or ran out
    /// of memory in that target), replayed.
    #[test]
    fn inputs_that_once_failed_are_read_without_a_panic() {
        let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        let mut replayed = 0;
        for directory in std::fs::read_dir(&regressions).expect("fuzz/regressions") {
            let directory = directory.unwrap().path();
            let name = directory
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let body = target(&name).unwrap_or_else(|| panic!("{name}: no such target"));
            for input in std::fs::read_dir(&directory).unwrap() {
                let input = input.unwrap().path();
                if input.file_name().is_some_and(|name| name == ".gitkeep") {
                    continue;
                }
                body(&std::fs::read(&input).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no regression inputs under {regressions:?}");
    }

    #[test]
    fn every_target_has_a_fuzz_binary() {
        let binaries = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/fuzz_targets");
        for (name, _) in TARGETS {
            assert!(
                binaries.join(format!("{name}.rs")).is_file(),
                "fuzz/targets/fuzz_targets/{name}.rs is missing"
            );
        }
    }
}
