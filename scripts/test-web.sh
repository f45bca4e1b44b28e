#!/usr/bin/env bash
# End-to-end test of the browser app in Debian's headless Chromium: builds the page with
# `trunk build --release`, serves it on loopback with a small question-answering model, and
# checks (web/tests/e2e.mjs) that the page answers exactly as `bert-native qa` on WebGPU (when
# Chromium offers an adapter) and on the CPU path, that fine-tuning in the worker lowers the
# loss, and that the downloaded weights load in `bert-native qa`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-web-tools.sh
export PATH="$PWD/web/node_modules/.bin:$PATH"

# The CLI as `cargo test --workspace` builds it (a no-op after the tests): `cargo build -p
# bert-native` would resolve other features for the shared dependencies and compile them again.
cargo test --workspace --no-run
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET_DIR/debug/bert-native"
scripts/make-web-model.sh "$BIN"
(cd web && trunk build --release --offline)
echo "shipped: $(stat -c %s web/dist/bert-web_bg.wasm) bytes of wasm, $(gzip -9c web/dist/bert-web_bg.wasm | wc -c) gzipped"

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

QUESTION="Which ocean does the Amazon reach?"
CONTEXT="The Amazon River in South America is the largest river by discharge volume of water in the world. It flows through Peru, Colombia and Brazil before reaching the Atlantic Ocean."
"$BIN" qa --model web/assets/model --question "$QUESTION" --context "$CONTEXT" --n-best 5 2>/dev/null |
  python3 -c 'import json,sys; json.dump({"question": sys.argv[1], "context": sys.argv[2], "answer": json.load(sys.stdin)}, open(sys.argv[3], "w"))' \
    "$QUESTION" "$CONTEXT" "$work/expected.json"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory web/dist > "$work/http.log" 2>&1 &
server=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done

node web/tests/e2e.mjs "http://127.0.0.1:$port/" "$work/expected.json" "$work/trained" \
  web/assets/model tests/fixtures/squad/dev-mini-v1.1.json

# The weights the page offers for download are a model folder's weights for bert-native.
cp web/assets/model/config.json web/assets/model/vocab.txt "$work/trained/"
"$BIN" qa --model "$work/trained" --question "$QUESTION" --context "$CONTEXT" > "$work/trained.json" 2>/dev/null
python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); assert a["answer"], a; print("ok: bert-native qa loads the downloaded weights and answers", repr(a["answer"]))' "$work/trained.json"
echo "browser end-to-end test passed"
