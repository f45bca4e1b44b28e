#!/usr/bin/env bash
# CPU inference, one run, interleaved rounds: bert-native (release, Flex backend), PyTorch with its
# eager and its sdpa attention, and ONNX Runtime on the same model exported to ONNX, all on the
# same threads. Prints every JSON line, then each engine's latency (best round's median) and its
# ratio to bert-native's.
#
#   bench/cpu.sh [minilm|base|large] [BATCH] [SEQ]       (defaults: minilm 1 384)
#
# minilm: all-MiniLM-L6-v2 plus the seeded QA head of tests/fixtures (a SQuAD window, as the
# browser page runs it); base, large: BERT-base / BERT-large question answering with random
# weights (speed does not depend on them). Environment: THREADS (2), ROUNDS (3), ITERS (10),
# PYTHON (the oracle environment, shared/oracle/setup_oracle_env.sh, plus onnx, onnxscript and
# onnxruntime).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-minilm}
BATCH=${2:-1}
SEQ=${3:-384}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-10}
PYTHON=${PYTHON:-$HOME/.cache/bert-oracle/venv/bin/python}
MINILM=${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}
HEADS=tests/fixtures/forward/weights/heads.safetensors

cargo build --release -q -p bert-native
BIN=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native
case "$MODEL" in
  minilm)
    scripts/fetch-test-model.sh "$MINILM" >/dev/null
    ours=("$BIN" bench forward --model "$MINILM" --extra-weights "$HEADS" --batch-size "$BATCH" --seq-len "$SEQ" --iterations "$ITERS")
    theirs=(bench/forward_torch.py "$MINILM" --extra-weights "$HEADS") ;;
  base|large)
    ours=("$BIN" bench squad-inference --config "$MODEL" --batch "$BATCH" --seq "$SEQ" --iterations "$ITERS" --warmup 2)
    theirs=(bench/forward_torch.py --config "$MODEL") ;;
  *) echo "usage: bench/cpu.sh [minilm|base|large] [BATCH] [SEQ]" >&2; exit 2 ;;
esac
theirs+=(--batch-size "$BATCH" --seq-len "$SEQ" --iterations "$ITERS" --threads "$THREADS")

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $THREADS threads; ISA: $(grep -o 'avx512[a-z_0-9]*\|avx2\|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$ROUNDS"); do
  RAYON_NUM_THREADS=$THREADS "${ours[@]}" | sed "s/^/bert-native\t/" | tee -a "$results"
  for engine in eager sdpa ort; do
    "$PYTHON" "${theirs[@]}" --engine "$engine" | sed "s/^/$engine\t/" | tee -a "$results"
  done
done
"$PYTHON" - "$results" <<'PY'
import json, sys
best = {}
for line in open(sys.argv[1]):
    engine, record = line.rstrip("\n").split("\t", 1)
    p50 = json.loads(record)["latency_ms"]["p50"]
    best[engine] = min(best.get(engine, p50), p50)
ours = best["bert-native"]
names = {"bert-native": "bert-native (Flex)", "eager": "PyTorch, eager attention",
         "sdpa": "PyTorch, sdpa attention", "ort": "ONNX Runtime"}
print(f"{'engine':28} {'latency ms':>10} {'latency ÷ ours':>16}")
for engine, p50 in best.items():
    print(f"{names[engine]:28} {p50:10.1f} {p50 / ours:15.2f}x")
PY
