#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI's .ci/run calls exactly this). Installs
# what the tests need, idempotently (system packages through scripts/install-deps.sh, the Rust
# wasm32 target, clippy and rustfmt, the web tools), fetches the reference checkpoint and the
# Triton and OpenAI Python clients (for the serving interoperability tests), then: formatting, lints
# with every backend compiled in (CUDA included: the CUDA path must keep compiling on machines
# without a GPU), all tests on the CPU (Flex and ndarray) and wgpu (lavapipe) backends, bert-core's
# documentation, the wasm32 builds of bert-core and bert-web, and the browser app end to end in
# headless Chromium (scripts/test-web.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
# The browser test's tools (trunk and wasm-bindgen-cli, compiled from crates.io on a new machine)
# build in the background while the checks below compile: on 2 cores the long single-crate tails
# of those builds leave a core idle. Their output is shown when the browser test needs them.
# (In a session of its own, so that stopping early stops its compilers too.)
web_tools_log=$(mktemp)
setsid scripts/setup-web-tools.sh > "$web_tools_log" 2>&1 &
web_tools=$!
trap 'kill -- "-$web_tools" 2>/dev/null || kill "$web_tools" 2>/dev/null || true; rm -f "$web_tools_log"' EXIT
scripts/fetch-test-model.sh
scripts/setup-triton-client.sh

# wgpu kernels are autotuned on first use; on lavapipe (CPU Vulkan) the minimal level is plenty.
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}

cargo fmt --all --check
cargo clippy --workspace --all-targets --features bert-native/cuda,bert-native/wgpu -- -D warnings
cargo check -p bert-native --features cuda
cargo test --workspace
# bert-core's documentation (the embedding API's front page) builds without a warning.
RUSTDOCFLAGS="-D warnings" cargo doc -p bert-core --no-deps
# The browser build's lints: bert-core as the page builds it (no PyTorch pickles) and bert-web, in
# one invocation so that their dependencies are checked once.
cargo clippy -p bert-core -p bert-web --target wasm32-unknown-unknown --no-default-features \
  --features bert-core/wgpu -- -D warnings
if ! wait "$web_tools"; then
  cat "$web_tools_log"
  echo "installing the browser test's tools failed" >&2
  exit 1
fi
cat "$web_tools_log"
scripts/test-web.sh
echo "all checks passed"
