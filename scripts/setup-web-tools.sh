#!/usr/bin/env bash
# Installs the browser app's build and test tools, idempotently and only from the registries this
# project may use: the wasm32 target, trunk 0.21.14 (0.22 needs a newer rustc), wasm-bindgen-cli
# at the exact version of the wasm-bindgen crate in Cargo.lock, and web/package.json's npm
# packages (binaryen's wasm-opt, playwright-core). Chromium comes from Debian (scripts/install-deps.sh test installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
TRUNK_VERSION=0.21.14
BINDGEN_VERSION=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
TOOL_TARGET=${BERT_RS_TOOL_TARGET:-$HOME/.cache/bert-rs/tool-build}

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# Built for build speed, not run speed: trunk's own release profile (fat LTO, one codegen unit)
# takes minutes longer on 2 cores, and both tools spend their time waiting on cargo and wasm-opt.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1
# Without trunk's default features (TLS for downloading tools, the update check): this project
# installs its tools itself and runs trunk `--offline`; 40 s less to compile.
if ! trunk --version 2>/dev/null | grep -qx "trunk $TRUNK_VERSION"; then
  cargo install "trunk@$TRUNK_VERSION" --locked --no-default-features --target-dir "$TOOL_TARGET"
fi
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $BINDGEN_VERSION"; then
  cargo install "wasm-bindgen-cli@$BINDGEN_VERSION" --target-dir "$TOOL_TARGET"
fi
if ! (cd web && npm ls --depth=0 >/dev/null 2>&1); then
  (cd web && npm ci --ignore-scripts --no-audit --no-fund)
fi
echo "web tools ready: $(trunk --version), $(wasm-bindgen --version), $(web/node_modules/.bin/wasm-opt --version)"
