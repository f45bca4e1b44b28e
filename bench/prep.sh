#!/usr/bin/env bash
# Data-preparation benchmark: a SIZE_MB English corpus through `bert-native prep all` (release
# build) with 2 threads and with 1, printing each stage's throughput and the peak memory.
#
#   bench/prep.sh [SIZE_MB]        (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-50}
WORK=${BENCH_DIR:-$HOME/.cache/bert-rs/bench}
MODEL=${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}
mkdir -p "$WORK"
scripts/fetch-test-model.sh "$MODEL" >/dev/null
[ -f "$WORK/corpus-${SIZE}mb.txt" ] || python3 bench/make_corpus.py "$WORK/corpus-${SIZE}mb.txt" "$SIZE"
cargo build --release -q -p bert-native
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native
for threads in 2 1; do
  out="$WORK/prep-$threads"
  rm -rf "$out"
  echo "== RAYON_NUM_THREADS=$threads"
  RAYON_NUM_THREADS=$threads "$BIN" prep all --input "$WORK/corpus-${SIZE}mb.txt" --output-dir "$out" \
    --vocab-file "$MODEL/vocab.txt" --lower-case --corpus-name bench 2>&1 | grep -E '^(format|segment|shard|instances): \{'
done
