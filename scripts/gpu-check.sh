#!/usr/bin/env bash
# The CUDA check of docs/benchmarks.md, in two halves (the GPU machine has no Rust toolchain and
# no internet, so the binary is built here and carried there):
#
#   scripts/gpu-check.sh prepare       here: builds bert-native --features cuda (release) and packs
#                                      it (stripped, xz) into gpu-carry/ (which keeps a
#                                      kernel-cache.tar.xz put there from an earlier run's output)
#   scripts/gpu-check.sh run [OUTDIR]  on the GPU machine, from the repository root with gpu-carry/:
#     0. start-up (kernel compilation, cold and with the kernel caches warm), NCCL's
#        all-reduce on burn-cuda's buffers (bench allreduce, checked sums), and the fused NVLAMB
#        kernels against the plain tensor step (bench optimizer: timings and largest difference);
#     1. correctness at tf32, bf16 and fp16: the PyTorch reference's 4-step pretraining trajectory
#        (tests/fixtures/pretrain) on CUDA (bench/gpu/trajectory.py), and the golden forward cases'
#        inputs through a BERT-base on CUDA against the CPU backend's float32 (bench/gpu/compare.py);
#     2. SQuAD inference (BERT-large, seq 384, batch 8) and BERT-large phase-1 pretraining steps
#        (seq 128, batch $PRETRAIN_BATCH, 20 masked positions) per precision, then PyTorch on the
#        same card with torch.autocast (bench/gpu/torch_bert.py), one JSON line each, and the ratios.
# Every command has its own time limit, so one failure or hang does not cost the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: scripts/gpu-check.sh prepare|run [OUTDIR]}

if [ "$MODE" = prepare ]; then
    set -e
    TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    cargo build --release -p bert-native --features cuda
    mkdir -p gpu-carry && rm -f gpu-carry/bert-native gpu-carry/bert-native.xz
    strip -o gpu-carry/bert-native "$TARGET/release/bert-native"
    xz -T0 -6 gpu-carry/bert-native
    du -sh gpu-carry
    exit 0
fi
[ "$MODE" = run ] || { echo "unknown mode $MODE: prepare or run" >&2; exit 2; }

OUTDIR=${2:-${OUT:-gpu-out}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
PRETRAIN_BATCH=${PRETRAIN_BATCH:-64}
# The whole run stops by this many seconds (device time is scarce): each command gets at most its
# own limit and never more than what is left.
DEADLINE=$((SECONDS + ${BUDGET_S:-480}))
WORK=$(mktemp -d)
BIN=$WORK/bert-native
"$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    gpu-carry/bert-native.xz "$BIN" && chmod +x "$BIN"
RESULTS=$OUTDIR/results.jsonl
: > "$RESULTS"
log() { echo "== $* ($SECONDS s) ==" >&2; }
record() { tee -a "$RESULTS"; }
limited() {  # limited CAP_SECONDS COMMAND...: runs COMMAND for at most CAP or what is left
    local cap=$1 left=$((DEADLINE - SECONDS)) started=$SECONDS status=0
    shift
    [ "$left" -gt 5 ] || { echo "skipped (out of time): $*" >&2; return 124; }
    # -k: bert-native finishes its current step on SIGTERM; a step stuck compiling must still end.
    timeout -k 10 $((cap < left ? cap : left)) "$@" 2>>"$OUTDIR/stderr.txt" || status=$?
    # Wall time of every command (start-up and kernel compilation included), for the record.
    printf '{"seconds": %d, "status": %d, "command": "%s"}\n' $((SECONDS - started)) "$status" "$*" \
        >> "$OUTDIR/timings.jsonl"
    return "$status"
}

log device
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/device.txt"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUTDIR/device.txt"

FAILED=0
log "start-up probe: one small forward pass per precision, kernel compilations logged"
# burn-cuda compiles each fused kernel (NVRTC) and autotunes products on first use, per process;
# on the first H200 run that start-up took minutes. Count it before anything is timed.
mkdir -p "$WORK/tiny"
cp tests/fixtures/pretrain/config.json "$WORK/tiny/"
cp tests/fixtures/pretrain/init.safetensors "$WORK/tiny/model.safetensors"
"$PY" bench/gpu/compare.py write-input tests/fixtures/forward/cases/padded_batch.safetensors "$WORK/probe.json"
# The kernel caches (compiled PTX, autotune results) start from the last GPU session's when
# gpu-carry/kernel-cache.tar.xz holds them (copy a run's $OUTDIR/kernel-cache.tar.xz there; the
# caches sit in a folder per GPU architecture, so an H100 reuses an H200's choices: autotuning only
# picks among correct kernels, so a stale choice costs speed, never results); the second tf32
# probe shows what a warm cache saves a later process.
export BERT_RS_KERNEL_CACHE=$WORK/kernels
mkdir -p "$BERT_RS_KERNEL_CACHE"
if [ -f gpu-carry/kernel-cache.tar.xz ]; then
    tar -xJf gpu-carry/kernel-cache.tar.xz -C "$BERT_RS_KERNEL_CACHE" && echo "kernel caches: carried in" | tee -a "$OUTDIR/probe.txt" >&2
else
    echo "kernel caches: cold" | tee -a "$OUTDIR/probe.txt" >&2
fi
for precision in tf32 tf32-again bf16; do
    PROBE_LOG=$WORK/cubecl-probe-$precision.log
    CUBECL_DEBUG_LOG=$PROBE_LOG limited 60 "$BIN" encode --model "$WORK/tiny" \
        --input "$WORK/probe.json" --backend cuda --precision "${precision%-again}" --output "$WORK/probe.safetensors"
    # The full log holds every kernel's source: keep its size, a count and its beginning.
    echo "$precision probe: $(wc -c < "$PROBE_LOG" 2>/dev/null || echo 0) bytes of log," \
        "$(grep -ci compil "$PROBE_LOG" 2>/dev/null || echo 0) lines mentioning compilation" | tee -a "$OUTDIR/probe.txt" >&2
    head -c 200000 "$PROBE_LOG" > "$OUTDIR/cubecl-probe-$precision-head.log" 2>/dev/null
done

log "NCCL: the gradient all-reduce of BERT-large on the device buffers (world size 1), checked"
# PyTorch's wheel carries NCCL as libnccl.so.2; cudarc looks for libnccl.so.
NCCL_LIB=$("$PY" -c 'import glob, os, torch; print(next(iter(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "nccl", "lib", "libnccl.so*"))), ""))')
if [ -n "$NCCL_LIB" ]; then
    mkdir -p "$WORK/nccl" && ln -sf "$(realpath "$NCCL_LIB")" "$WORK/nccl/libnccl.so"
    export LD_LIBRARY_PATH=$WORK/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
for half in "" --half; do
    limited 60 "$BIN" bench allreduce --backend cuda --collective nccl --iterations 10 $half | record || FAILED=1
done

log "fused NVLAMB (bert-shaders) against plain tensor operations: one step over BERT-large's parameters"
limited 120 "$BIN" bench optimizer --backend cuda --config large --steps 5 --warmup 2 | record || FAILED=1

log "correctness: the reference's pretraining trajectory on CUDA"
G=tests/fixtures/pretrain
for precision in tf32 bf16 fp16; do
    # A fixed loss scale for fp16 here: a dynamic one may skip the first steps, and then the
    # steps would see other batches than the reference's.
    SCALE=(); [ "$precision" = fp16 ] && SCALE=(--loss-scale 4096)
    rm -rf "$WORK/trajectory"
    if limited 90 "$BIN" pretrain --config-file $G/config.json --init-checkpoint $G/init.safetensors \
        --input-dir $G/data --output-dir "$WORK/trajectory" --train-batch-size 16 --gradient-accumulation-steps 2 \
        --max-steps 4 --learning-rate 1e-3 --warmup-proportion 0.5 --max-seq-length 128 --max-predictions-per-seq 20 \
        --seed 1 --no-shuffle --disable-progress-bar --skip-checkpoint --backend cuda --precision "$precision" "${SCALE[@]}"; then
        "$PY" bench/gpu/trajectory.py "$WORK/trajectory/dllogger.json" $G/manifest.json "$precision" | record || FAILED=1
    else
        echo "{\"check\": \"pretrain-trajectory\", \"precision\": \"$precision\", \"pass\": false, \"error\": \"pretrain failed\"}" | record
        FAILED=1
    fi
done

log "correctness: BERT-base forward on CUDA against the CPU backend"
"$PY" bench/gpu/random_bert.py "$WORK/base" --config base
for case in padded_batch squad_384; do
    CASE=tests/fixtures/forward/cases/$case.safetensors
    "$PY" bench/gpu/compare.py write-input "$CASE" "$WORK/$case.json"
    limited 120 "$BIN" encode --model "$WORK/base" --input "$WORK/$case.json" \
        --backend ndarray --output "$WORK/$case.cpu.safetensors"
    for precision in tf32 bf16 fp16; do
        if limited 90 "$BIN" encode --model "$WORK/base" --input "$WORK/$case.json" \
            --backend cuda --precision "$precision" --output "$WORK/$case.$precision.safetensors"; then
            "$PY" bench/gpu/compare.py compare "$CASE" "$WORK/$case.cpu.safetensors" \
                "$WORK/$case.$precision.safetensors" "$precision" | sed "s/^{/{\"case\": \"$case\", /" | record \
                || FAILED=1
        else
            echo "{\"case\": \"$case\", \"precision\": \"$precision\", \"pass\": false, \"error\": \"encode failed\"}" | record
            FAILED=1
        fi
    done
done

log "squad inference (large, seq 384, batch 8)"
for precision in tf32 bf16 fp16; do
    limited 90 "$BIN" bench squad-inference --config large --seq 384 --batch 8 --iterations 10 --warmup 3 \
        --backend cuda --precision "$precision" | record
done
limited 90 "$PY" bench/gpu/torch_bert.py squad-inference --config large --seq 384 --batch 8 --steps 10 \
    --warmup 3 --precision fp32,tf32,bf16,fp16 | record

log "pretraining steps (large, seq 128, batch $PRETRAIN_BATCH)"
limited 120 "$PY" bench/gpu/torch_bert.py pretrain --config large --seq 128 --batch "$PRETRAIN_BATCH" --max-pred 20 \
    --steps 5 --warmup 2 --precision fp32,tf32,bf16,fp16 | record
for precision in bf16 fp16 tf32; do
    limited 120 "$BIN" bench pretrain --config large --seq 128 --batch "$PRETRAIN_BATCH" --max-pred 20 --steps 5 \
        --warmup 2 --backend cuda --precision "$precision" | record
done

log ratios
"$PY" - "$RESULTS" <<'PY' | tee "$OUTDIR/ratios.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
speed = lambda r: r.get("training_sequences_per_second") or r.get("inference_sequences_per_second")
for bench in ("squad-inference", "pretrain"):
    ours = {r["precision"]: speed(r) for r in rows if r.get("benchmark") == bench and not r["backend"].startswith("pytorch")}
    theirs = {r["precision"]: speed(r) for r in rows if r.get("benchmark") == bench and r["backend"].startswith("pytorch")}
    for precision in ("tf32", "bf16", "fp16"):
        if precision in ours and precision in theirs:
            print(f"{bench} {precision}: bert-native {ours[precision]:.1f} seq/s, PyTorch {theirs[precision]:.1f} seq/s, ratio {ours[precision] / theirs[precision]:.2f}")
PY
# This run's kernel caches, for the next session's gpu-carry/ (the PTX only while it stays small).
tar -cJf "$OUTDIR/kernel-cache.tar.xz" -C "$BERT_RS_KERNEL_CACHE" . 2>/dev/null
if [ "$(stat -c %s "$OUTDIR/kernel-cache.tar.xz" 2>/dev/null || echo 0)" -gt 20000000 ]; then
    tar -cJf "$OUTDIR/kernel-cache.tar.xz" -C "$BERT_RS_KERNEL_CACHE" --exclude=./ptx . 2>/dev/null
fi
cp "$OUTDIR/stderr.txt" "$OUTDIR/stderr-full.txt" 2>/dev/null
exit $FAILED
