#!/usr/bin/env bash
# Puts a small question-answering model where the browser app loads it (web/assets/model): the
# test checkpoint (all-MiniLM-L6-v2) given a question-answering head by a short
# `bert-native squad --do-train` on the SQuAD fixture. Enough to exercise the page end to end;
# for real answers fine-tune longer, or drop a SQuAD model's files on the page.
#
#   scripts/make-web-model.sh [BERT_NATIVE]   (default: target/debug/bert-native via cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-}
if [ -z "$BIN" ]; then
  cargo build -p bert-native
  BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/bert-native"
fi
MINILM=${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}
DEST=web/assets/model
if [ -f "$DEST/model.safetensors" ] && [ "$DEST/model.safetensors" -nt "$MINILM/model.safetensors" ]; then
  echo "web model present: $DEST"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN" squad --model "$MINILM" --do-train --train-file tests/fixtures/squad/dev-mini-v1.1.json \
  --train-batch-size 8 --learning-rate 1e-4 --max-steps 4 --max-seq-length 128 --doc-stride 64 \
  --output-dir "$work/model" --log-freq 1 > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
cp "$MINILM/tokenizer.json" "$work/model/"
mkdir -p "$DEST"
for f in config.json model.safetensors tokenizer.json vocab.txt; do
  cp "$work/model/$f" "$DEST/$f.partial" && mv "$DEST/$f.partial" "$DEST/$f"
done
echo "web model written: $DEST"
