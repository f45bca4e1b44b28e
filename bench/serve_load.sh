#!/usr/bin/env bash
# Load test of `bert-native serve` (release) on loopback: MiniLM as an encoder, one 128-token
# sequence per request, 1, 8 and 64 concurrent clients, with dynamic batching (up to 8 sequences,
# 5 ms delay) and without (one sequence per run). The client is a separate Python process.
#
#   bench/serve_load.sh            (needs scripts/fetch-test-model.sh; REQUESTS scales the load)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-64}
PORT=${PORT:-8127}
cargo build --release -q -p bert-native
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native
repository=$(mktemp -d)
trap 'rm -rf "$repository"; kill "$server" 2>/dev/null || true' EXIT
mkdir -p "$repository/minilm"
for file in config.json model.safetensors vocab.txt tokenizer.json; do
  ln -s "$HOME/.cache/bert-rs/models/all-minilm-l6-v2/$file" "$repository/minilm/$file"
done
echo '{"task": "encoder"}' > "$repository/minilm/model.json"

for mode in batching none; do
  if [ "$mode" = batching ]; then flags=(--max-batch-size 8 --max-queue-delay-ms 5); else flags=(--max-batch-size 1 --max-queue-delay-ms 0); fi
  "$BIN" serve --model-repository "$repository" --http-port "$PORT" --max-queue-size 256 "${flags[@]}" 2>/dev/null &
  server=$!
  until curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null; do sleep 0.2; done
  for clients in 1 8 64; do
    requests=$(( clients == 1 ? REQUESTS / 4 : REQUESTS ))
    result=$(python3 bench/serve_load.py --port "$PORT" --clients "$clients" --requests "$requests")
    echo "{\"dynamic_batching\": \"$mode\", \"result\": $result}"
  done
  kill -TERM "$server"; wait "$server" || true
done
