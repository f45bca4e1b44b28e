//! `bert-native`: the command-line front end of bert-core (CPU, wgpu and CUDA backends).

use bert_native::cli::{Cli, Command};
use clap::Parser;

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

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        keep_freed_memory();
    }
    if let Err(error) = bert_native::shard_sandbox::enable().and_then(|()| cli.command.run()) {
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
