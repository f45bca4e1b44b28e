#!/usr/bin/env bash
# Load test of `bert-native serve` (release) on loopback: MiniLM as an encoder, one 128-token
# sequence per request, 1, 8 and 64 concurrent clients, with dynamic batching (up to 8 sequences,
# 5 ms delay) and without (one sequence per run). The client is a separate Python process; each
# server gets 16 warm-up requests first.
#
#   bench/serve_load.sh [BINARY...]
#
# needs scripts/fetch-test-model.sh. With no argument it times this checkout's release build;
# given several binaries (a before and an after), it times them in turn, round after round.
# Environment: REQUESTS (64; a quarter of them at one client), ROUNDS (1), PORT (8127),
# SERVE_FLAGS (more `serve` flags for every server, e.g. `--backend ndarray`).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-64}
ROUNDS=${ROUNDS:-1}
PORT=${PORT:-8127}
read -r -a extra_flags <<< "${SERVE_FLAGS:-}"
if [ $# -eq 0 ]; then
  cargo build --release -q -p bert-native
  set -- "$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/bert-native"
fi
repository=$(mktemp -d)
server=
trap 'rm -rf "$repository"; [ -z "$server" ] || kill "$server" 2>/dev/null || true' EXIT
mkdir -p "$repository/minilm"
for file in config.json model.safetensors vocab.txt tokenizer.json; do
  ln -s "$HOME/.cache/bert-rs/models/all-minilm-l6-v2/$file" "$repository/minilm/$file"
done
echo '{"task": "encoder"}' > "$repository/minilm/model.json"

for round in $(seq "$ROUNDS"); do
  for binary in "$@"; do
    for mode in batching none; do
      if [ "$mode" = batching ]; then flags=(--max-batch-size 8 --max-queue-delay-ms 5); else flags=(--max-batch-size 1 --max-queue-delay-ms 0); fi
      "$binary" serve --model-repository "$repository" --http-port "$PORT" --max-queue-size 256 "${flags[@]}" "${extra_flags[@]}" 2>/dev/null &
      server=$!
      until curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null; do sleep 0.2; done
      python3 bench/serve_load.py --port "$PORT" --clients 2 --requests 16 >/dev/null
      for clients in 1 8 64; do
        requests=$(( clients == 1 ? REQUESTS / 4 : REQUESTS ))
        result=$(python3 bench/serve_load.py --port "$PORT" --clients "$clients" --requests "$requests")
        echo "{\"round\": $round, \"binary\": \"$binary\", \"dynamic_batching\": \"$mode\", \"result\": $result}"
      done
      kill -TERM "$server"; wait "$server" || true
      server=
    done
  done
done
