#!/usr/bin/env bash
# Forward-pass benchmark: bert-native (release build) and PyTorch on the same model, batch and
# machine, in one run, so the ratio is meaningful. Prints both JSON lines and the ratio.
#
#   bench/forward.sh [BATCH] [SEQ]        (defaults 1 384: SQuAD-style question answering)
# Needs the oracle Python environment (shared/oracle/setup_oracle_env.sh), or PYTHON pointing at a
# Python with torch + transformers + safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
BATCH=${1:-1}
SEQ=${2:-384}
ITERS=${ITERS:-10}
PYTHON=${PYTHON:-$HOME/.cache/bert-oracle/venv/bin/python}
MODEL=${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}
HEADS=tests/fixtures/forward/weights/heads.safetensors

scripts/fetch-test-model.sh "$MODEL" >/dev/null
cargo build --release -q -p bert-native
BIN=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native

ours=$("$BIN" bench forward --model "$MODEL" --extra-weights "$HEADS" --batch-size "$BATCH" --seq-len "$SEQ" --iterations "$ITERS")
theirs=$("$PYTHON" bench/forward_torch.py "$MODEL" --extra-weights "$HEADS" --batch-size "$BATCH" --seq-len "$SEQ" --iterations "$ITERS")
echo "$ours"
echo "$theirs"
"$PYTHON" - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = (json.loads(s) for s in sys.argv[1:3])
print(json.dumps({"ratio_throughput_ours_over_pytorch":
                  ours["inference_sequences_per_second"] / theirs["inference_sequences_per_second"]}))
PY
