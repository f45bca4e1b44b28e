#!/usr/bin/env bash
# Pretraining-step benchmark: bert-native (release) and PyTorch BertForPreTraining on the same
# configuration, shape and machine, in one run; prints both JSON lines and the ratio.
#
#   bench/pretrain.sh [base|large] [SEQ] [BATCH]      (defaults base 128 8)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-base}
SEQ=${2:-128}
BATCH=${3:-8}
STEPS=${STEPS:-3}
PYTHON=${PYTHON:-$HOME/.cache/bert-oracle/venv/bin/python}
cargo build --release -q -p bert-native
BIN=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native
ours=$("$BIN" bench pretrain --config "$CONFIG" --seq "$SEQ" --batch "$BATCH" --steps "$STEPS")
theirs=$("$PYTHON" bench/pretrain_torch.py --config "$CONFIG" --seq "$SEQ" --batch "$BATCH" --steps "$STEPS")
echo "$ours"
echo "$theirs"
"$PYTHON" - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = (json.loads(s) for s in sys.argv[1:3])
print(json.dumps({"ratio_throughput_ours_over_pytorch":
                  ours["training_sequences_per_second"] / theirs["training_sequences_per_second"]}))
PY
