#!/usr/bin/env bash
# Disk faults against real filesystems (docs/reliability.md): a checkpoint written into a full
# tmpfs, the same run on the filesystem remounted read-only, and `prep` filling a tmpfs. Each must
# stop with an error naming the file and the problem, leave no partial file under a final name,
# and keep the previous checkpoint intact and resumable. Needs root (it mounts tmpfs); skips with a
# message otherwise. The unprivileged case (a file-size limit) runs in the test command
# (`a_full_disk_stops_the_run_and_keeps_the_last_checkpoint`).
#
#   scripts/disk-faults.sh            (builds bert-native in release first; or BERT_NATIVE=path/to/bert-native)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "disk-faults: skipped, needs root to mount a small tmpfs"
  exit 0
fi
work=$(mktemp -d)
disk=$work/disk
mkdir -p "$disk"
if ! mount -t tmpfs -o size=20m tmpfs "$disk" 2>/dev/null; then
  echo "disk-faults: skipped, this machine does not allow mounting tmpfs"
  rm -rf "$work"
  exit 0
fi
trap 'umount "$disk" 2>/dev/null || true; rm -rf "$work"' EXIT

bin=${BERT_NATIVE:-}
if [ -z "$bin" ]; then
  cargo build --release -q -p bert-native
  bin=${CARGO_TARGET_DIR:-target}/release/bert-native
fi
fixtures=tests/fixtures
failures=0
check() { # what, condition...
  local what=$1
  shift
  if "$@"; then echo "  ok: $what"; else echo "  FAILED: $what"; failures=$((failures + 1)); fi
}
no_partial_files() { [ -z "$(find "$1" -name '.*.tmp-*')" ]; }

# The tests' small model (vocabulary 30522, hidden 32): a checkpoint of about 12 MB, so the first
# fits in 20 MB and the second does not.
python3 -c 'import json, sys; json.dump({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128}, open(sys.argv[1], "w"))' "$work/config.json"
pretrain() { # output dir, extra flags...
  local out=$1
  shift
  RAYON_NUM_THREADS=1 "$bin" pretrain --config-file "$work/config.json" --input-dir "$fixtures/pretrain/data" \
    --output-dir "$out" --train-batch-size 16 --gradient-accumulation-steps 2 --max-steps 3 \
    --learning-rate 1e-3 --warmup-proportion 0.3 --max-seq-length 128 --max-predictions-per-seq 20 \
    --seed 7 --disable-progress-bar --num-steps-per-checkpoint 1 "$@"
}

echo "1. a checkpoint written into a full filesystem (20 MB tmpfs)"
status=0
pretrain "$disk/run" >"$work/full.log" 2>&1 || status=$?
tail -n 3 "$work/full.log" | sed 's/^/  | /'
check "the run fails" [ "$status" != 0 ]
check "the error names the checkpoint and the problem" \
  grep -q "cannot write $disk/run/ckpt_2.safetensors: No space left on device" "$work/full.log"
check "no partial file" no_partial_files "$disk"
check "ckpt_1 is still there" [ -s "$disk/run/ckpt_1.safetensors" ]
sum=$(sha256sum <"$disk/run/ckpt_1.safetensors")

echo "2. the same run resumed on the filesystem remounted read-only"
mount -o remount,ro "$disk"
status=0
pretrain "$disk/run" --resume-from-checkpoint >"$work/ro.log" 2>&1 || status=$?
tail -n 3 "$work/ro.log" | sed 's/^/  | /'
check "the run fails" [ "$status" != 0 ]
check "the error names a file and the problem" grep -q "$disk/run.*Read-only file system" "$work/ro.log"
check "ckpt_1 is unchanged" [ "$(sha256sum <"$disk/run/ckpt_1.safetensors")" = "$sum" ]

echo "3. resumed from the surviving checkpoint on a disk with room"
cp -r "$disk/run" "$work/run"
status=0
pretrain "$work/run" --resume-from-checkpoint >"$work/resume.log" 2>&1 || status=$?
check "the resumed run finishes" [ "$status" = 0 ]
check "it resumed from step 1" grep -q "resumed from .*ckpt_1.safetensors at step 1" "$work/resume.log"

vocab=${BERT_RS_MINILM_DIR:-$HOME/.cache/bert-rs/models/all-minilm-l6-v2}/vocab.txt
if [ -f "$vocab" ]; then
  # Each stage on a disk with room for the ones before it and not its own output: formatting
  # (4 KB), segmenting, sharding, then the HDF5 shards.
  for size in 4k 8k 12k 16k 20k 28k; do
    echo "4. prep filling a $size tmpfs"
    umount "$disk"
    mount -t tmpfs -o size=$size tmpfs "$disk"
    status=0
    "$bin" prep all --input "$fixtures/corpus/wiki/enwiki-mini.xml" --output-dir "$disk/prep" \
      --vocab-file "$vocab" --lower-case --dupe-factor 20 --n-training-shards 1 --n-test-shards 0 \
      >"$work/prep.log" 2>&1 || status=$?
    tail -n 1 "$work/prep.log" | sed 's/^/  | /'
    check "prep fails" [ "$status" != 0 ]
    check "the error names a file and the problem" grep -q "$disk/prep.*No space left on device" "$work/prep.log"
    check "no partial file" no_partial_files "$disk"
  done
else
  echo "4. prep: skipped, no vocabulary at $vocab (scripts/fetch-test-model.sh fetches it)"
fi

if [ "$failures" = 0 ]; then echo "disk-faults: all checks passed"; else echo "disk-faults: $failures check(s) failed"; exit 1; fi
