#!/usr/bin/env bash
# Fuzzes one reader (or all of them) with libFuzzer: seeds its corpus from the golden files of
# tests/fixtures (and the test model's vocabulary), runs it for SECONDS, and appends one JSON line
# per target to fuzz/results.jsonl (executions, coverage, corpus size, what it found). Crashing
# inputs land in fuzz/targets/artifacts/<target>/: copy each into fuzz/regressions/<target>/ once
# fixed, where the normal test command replays it (bert-fuzz's test).
#
#   fuzz/run.sh TARGET|all [SECONDS]        (default 600)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Limits: 2 GB of RSS,
# 10 s an input, 2 MB inputs.
set -euo pipefail
cd "$(dirname "$0")"
TARGET=${1:?usage: fuzz/run.sh TARGET|all [SECONDS]}
SECONDS_EACH=${2:-600}
MINILM=${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}
FIXTURES=$(cd ../tests/fixtures && pwd)
MAIN_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/../target}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/bert-rs/fuzz-target}

targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' targets/Cargo.toml | grep -v bert-fuzz-targets || true)
[ "$TARGET" = all ] || targets=$TARGET

seed() {
  local target=$1 dir=corpus/$1
  mkdir -p "$dir"
  case "$target" in
    safetensors_checkpoint)
      cp "$FIXTURES"/checkpoints/*.safetensors "$FIXTURES"/pipelines/classifier_head.safetensors "$dir"/ ;;
    pytorch_checkpoint)
      cp "$FIXTURES"/checkpoints/pytorch_model.bin "$FIXTURES"/checkpoints/nvidia_ckpt.pt "$FIXTURES"/checkpoints/model.safetensors "$dir"/ ;;
    training_checkpoint)
      # One step of a one-layer, two-wide model on the golden shards: a real checkpoint of 1.1 MB.
      local run
      run=$(mktemp -d)
      python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c.update(hidden_size=2, num_hidden_layers=1, num_attention_heads=1, intermediate_size=2); json.dump(c, open(sys.argv[2], "w"))' \
        "$FIXTURES"/pretrain/config.json "$run"/config.json
      (cd .. && CARGO_TARGET_DIR=$MAIN_TARGET_DIR cargo run -q -p bert-native -- pretrain \
        --config-file "$run"/config.json --input-dir "$FIXTURES"/pretrain/data --output-dir "$run"/out \
        --train-batch-size 2 --gradient-accumulation-steps 1 --max-steps 1 --max-seq-length 128 \
        --max-predictions-per-seq 20 --seed 1 --num-steps-per-checkpoint 1 --disable-progress-bar) >/dev/null
      cp "$run"/out/ckpt_1.safetensors "$dir"/tiny-step-1.safetensors
      rm -rf "$run" ;;
    config_json)
      cp "$FIXTURES"/checkpoints/config.json "$dir"/hf.json
      cp "$FIXTURES"/checkpoints/bert_config.json "$dir"/nvidia.json ;;
    vocab_txt)
      { printf '\001'; head -n 3000 "$MINILM/vocab.txt"; } > "$dir"/minilm-head.txt ;;
    tokenizer_json|tokenize)
      python3 - "$MINILM/tokenizer.json" "$FIXTURES"/tokenize/tokenize_cases.json "$dir" "$target" <<'PY'
import json, sys
tokenizer_path, cases_path, out, target = sys.argv[1:]
if target == "tokenizer_json":
    tokenizer = json.load(open(tokenizer_path))
    vocab = tokenizer["model"]["vocab"]
    tokenizer["model"]["vocab"] = {k: v for k, v in vocab.items() if v < 1500}
    tokenizer["added_tokens"] = [t for t in tokenizer.get("added_tokens", []) if t["id"] < 1500]
    json.dump(tokenizer, open(f"{out}/minilm-small.json", "w"))
else:
    cases = json.load(open(cases_path))
    texts = []
    def walk(x):
        if isinstance(x, dict):
            for key, value in x.items():
                if key in ("text", "input") and isinstance(value, str):
                    texts.append(value)
                else:
                    walk(value)
        elif isinstance(x, list):
            for value in x:
                walk(value)
    walk(cases)
    for i, text in enumerate(texts[:200]):
        open(f"{out}/case-{i}.txt", "w").write(text)
PY
      ;;
    squad_json)
      cp "$FIXTURES"/squad/dev-mini-v1.1.json "$dir"/ ;;
    glue_tsv)
      printf 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tThe cat sat.\tA cat was sitting.\n0\t3\t4\tIt rained.\tThe sun shone.\n' > "$dir"/mrpc.tsv
      printf 'sentence\tlabel\na fine film \t1\ndull and long \t0\n' > "$dir"/sst2.tsv ;;
    wikitext)
      python3 -c 'import html, re, sys
for i, text in enumerate(re.findall(r"<text[^>]*>(.*?)</text>", open(sys.argv[1]).read(), re.S)):
    open(f"{sys.argv[2]}/article-{i}.txt", "w").write(html.unescape(text))' \
        "$FIXTURES"/corpus/wiki/enwiki-mini.xml "$dir" ;;
    wiki_xml)
      cp "$FIXTURES"/corpus/wiki/enwiki-mini.xml "$dir"/ ;;
    hdf5_shard)
      cp "$FIXTURES"/hdf5/*.hdf5 "$dir"/
      cp "$FIXTURES"/hdf5/bad/missing_next_sentence_labels.hdf5 "$FIXTURES"/hdf5/bad/wrong_dtype_input_ids_i8.hdf5 "$dir"/ ;;
    kserve_request)
      printf '\000{"inputs": [{"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [[1, 5, 2], [1, 6, 2]]}, {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 0]}], "outputs": [{"name": "start_logits"}]}' > "$dir"/json.bin
      python3 -c 'import json, struct, sys
head = json.dumps({"inputs": [{"name": "input_ids", "shape": [2, 3], "datatype": "INT32", "parameters": {"binary_data_size": 24}},
                              {"name": "token_type_ids", "shape": [2, 3], "datatype": "INT64", "data": [0, 0, 0, 0, 0, 0]}],
                   "outputs": [{"name": "last_hidden_state", "parameters": {"binary_data": True}}]}).encode()
open(sys.argv[1], "wb").write(b"\x01" + struct.pack("<H", len(head)) + head + struct.pack("<6i", 1, 5, 2, 1, 6, 2))' "$dir"/binary.bin ;;
    collective_messages)
      # Rank 1 of 2 greeting rank 0, then two messages of 3 values, in float32 and in float16.
      python3 -c 'import struct, sys
greeting = b"bert-rs1" + struct.pack("<II", 1, 2)
open(sys.argv[1] + "/float32.bin", "wb").write(bytes([3 << 1]) + greeting + 2 * (struct.pack("<Q", 3 << 1) + struct.pack("<3f", 1.0, -2.5, 1e30)))
open(sys.argv[1] + "/float16.bin", "wb").write(bytes([3 << 1 | 1]) + greeting + 2 * (struct.pack("<Q", 3 << 1 | 1) + struct.pack("<3e", 1.0, -2.5, 6e4)))' "$dir" ;;
    *) echo "no seeds for $target" >&2; exit 2 ;;
  esac
}

mkdir -p corpus
for target in $targets; do
  seed "$target"
  log=$(mktemp)
  status=0
  # libhdf5 1.10 segfaults on some crafted files within minutes (bert-native reads shards in a
  # child process for that reason): this target keeps going past crashes, each saved as usual.
  past_crashes=()
  [ "$target" = hdf5_shard ] && past_crashes=(-fork=1 -ignore_crashes=1)
  (cd targets && cargo +nightly fuzz run --fuzz-dir . -s none "$target" "../corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
      -max_len=2097152 -print_final_stats=1 "${past_crashes[@]}") >"$log" 2>&1 || status=$?
  grep -v '^\s*at \|^ *[0-9]*: ' "$log" | cut -c1-300 | tail -n 25
  python3 - "$log" "$target" "$SECONDS_EACH" "$status" >> results.jsonl <<'PY'
import json, re, sys
log, target, seconds, status = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text = open(log, errors="replace").read()
def last(pattern):
    found = re.findall(pattern, text)
    return int(found[-1]) if found else None
summary = re.findall(r"SUMMARY: libFuzzer: ([^\n]*)", text)
panic = re.findall(r"panicked at ([^\n]*)\n([^\n]*)", text)
finding = None
if summary:
    finding = summary[-1].strip()
    if panic:
        finding += f": {panic[-1][1].strip()} at {panic[-1][0].strip()}"
print(json.dumps({"target": target, "seconds": seconds, "exit_status": status,
                  "executions": last(r"stat::number_of_executed_units:\s*(\d+)"),
                  "coverage": last(r"cov: (\d+)"), "features": last(r"ft: (\d+)"),
                  "corpus": last(r"corp: (\d+)"), "finding": finding}))
PY
  tail -n 1 results.jsonl
  rm -f "$log"
done
