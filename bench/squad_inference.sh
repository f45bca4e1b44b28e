#!/usr/bin/env bash
# SQuAD inference benchmark in the reference's shape (BERT-large, seq 384, batch 8): bert-native
# (release) and PyTorch BertForQuestionAnswering on the same machine, in one run, and the ratio.
#
#   bench/squad_inference.sh [base|large] [SEQ] [BATCH]      (defaults large 384 8)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-large}
SEQ=${2:-384}
BATCH=${3:-8}
ITERS=${ITERS:-3}
PYTHON=${PYTHON:-$HOME/.cache/bert-oracle/venv/bin/python}
cargo build --release -q -p bert-native
BIN=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native
ours=$("$BIN" bench squad-inference --config "$CONFIG" --seq "$SEQ" --batch "$BATCH" --iterations "$ITERS")
theirs=$("$PYTHON" bench/forward_torch.py --config "$CONFIG" --seq-len "$SEQ" --batch-size "$BATCH" --iterations "$ITERS" --warmup 1)
echo "$ours"
echo "$theirs"
"$PYTHON" - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = (json.loads(s) for s in sys.argv[1:3])
print(json.dumps({"ratio_throughput_ours_over_pytorch":
                  ours["inference_sequences_per_second"] / theirs["inference_sequences_per_second"]}))
PY
