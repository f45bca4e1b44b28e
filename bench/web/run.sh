#!/usr/bin/env bash
# Browser bench: time to answer one question at sequence length 384 with bert-web (CPU path and
# WebGPU) next to transformers.js (the shared anchor in ../shared/bench/tjs-anchor) on the same
# model, in the same headless Chromium, in one run; ratios printed and saved.
#
# Needs: the oracle environment (../shared/oracle/setup_oracle_env.sh) plus `pip install onnx
# onnxscript onnxruntime`, scripts/setup-web-tools.sh, Debian chromium.
#   bench/web/run.sh            (SKIP_WEBGPU=1 to skip the very slow software WebGPU runs)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${BERT_RS_SHARED:-$(cd .. && pwd)/shared}
ANCHOR="$SHARED/bench/tjs-anchor"
PY=${PY:-$HOME/.cache/bert-oracle/venv/bin/python}
MINILM=${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}
export TJS_DIR=${TJS_DIR:-$HOME/.cache/bert-rs/tjs-anchor}
scripts/setup-web-tools.sh
export PATH="$PWD/web/node_modules/.bin:$PATH"

# The anchor: transformers.js + the ONNX export of the same model (once).
mkdir -p "$TJS_DIR/models/minilm-qa/onnx"
cp "$ANCHOR"/bench.html "$ANCHOR"/package*.json "$TJS_DIR"/
[ -d "$TJS_DIR/node_modules/@huggingface/transformers" ] || (cd "$TJS_DIR" && npm ci --ignore-scripts --no-audit --no-fund)
[ -f "$TJS_DIR/models/minilm-qa/onnx/model.onnx" ] || "$PY" "$ANCHOR/export.py" legacy
[ -f "$TJS_DIR/ref.json" ] || "$PY" -c 'import json,numpy as np,os; d=os.environ["TJS_DIR"]; json.dump({"start": np.load(d+"/ref_start.npy")[0].tolist(), "end": np.load(d+"/ref_end.npy")[0].tolist()}, open(d+"/ref.json","w"))'

# bert-web with the same model, and a one-window case.
(cd web && trunk build --release --offline)
out=$(mktemp -d)
"$PY" bench/web/prepare.py "$MINILM" "$SHARED/golden/forward/weights/heads.safetensors" "$TJS_DIR/input.json" "$out"
rm -rf web/dist/bench-model && cp -r "$out/bert-rs-model" web/dist/bench-model

pids=()
trap 'kill ${pids[@]} 2>/dev/null; rm -rf "$out"' EXIT
python3 -m http.server 8097 --bind 127.0.0.1 --directory web/dist > "$out/web.log" 2>&1 & pids+=($!)
"$PY" "$ANCHOR/serve.py" 8098 > "$out/anchor.log" 2>&1 & pids+=($!)
sleep 1
mkdir -p bench/results  # (ignored by git)
node bench/web/run.mjs \
  "http://127.0.0.1:8097/" "http://127.0.0.1:8098/" "$out/case.json" "bench/results/web-qa-$(date +%Y%m%d-%H%M%S).json"
