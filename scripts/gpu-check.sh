#!/usr/bin/env bash
# The CUDA check of docs/benchmarks.md, in two halves (the GPU machine has no Rust toolchain and
# no internet, so the binary is built here and carried there):
#
#   scripts/gpu-check.sh prepare       here: builds bert-native --features cuda (release) and packs
#                                      it (stripped, xz) into gpu-carry/ (which keeps a
#                                      kernel-cache.tar.xz and ptx-cache.tar.xz put there from an
#                                      earlier run's output)
#   scripts/gpu-check.sh run [OUTDIR]  on the GPU machine, from the repository root with gpu-carry/:
#     A. at the same time, one process each (burn-cuda compiles every kernel with NVRTC and
#        autotunes every new product shape, single-threaded per process, so a cold start costs
#        minutes; the 16 cores do it in parallel and fill the shared kernel caches):
#        correctness at tf32, bf16 and fp16 (the PyTorch reference's 4-step pretraining
#        trajectory, tests/fixtures/pretrain, via bench/gpu/trajectory.py; the golden forward
#        cases through a BERT-base on CUDA against the CPU backend's float32, bench/gpu/compare.py,
#        also with burn's fused attention at bf16)
#        and one cold pass of every timed benchmark below (its first-pass time is the cold
#        start-up figure; NCCL's all-reduce, sums checked, thus runs early too). A monitor
#        samples each process's CPU time and the GPU every 15 s.
#     B. one at a time, caches warm, most wanted first: SQuAD inference (BERT-large, seq 384,
#        batch 8; explicit and fused attention) and BERT-large phase-1 pretraining steps (seq 128, batch $PRETRAIN_BATCH, 20
#        masked positions) per precision, PyTorch on the same card with torch.autocast
#        (bench/gpu/torch_bert.py), a kernel profile of one bf16 SQuAD pass, the fused NVLAMB
#        kernels against the plain tensor step (bench optimizer), a kernel profile of one bf16
#        pretraining step (time per kernel: bench/gpu/profile_summary.py), NCCL's all-reduce on
#        burn-cuda's buffers (bench allreduce, sums checked); one JSON line each, and the ratios.
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
# The whole run stops by this many seconds (device time is scarce), phase A after PHASE_A_S of
# them: each command gets at most its own limit and never more than what is left, and the last
# PACK_S are kept for packing the results (the first H200 run lost its logs to the call's limit
# while packing 165 MB of compiled kernels).
DEADLINE=$((SECONDS + ${BUDGET_S:-555} - ${PACK_S:-40}))
WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$LOGS"
BIN=$WORK/bert-native
"$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    gpu-carry/bert-native.xz "$BIN" && chmod +x "$BIN"
RESULTS=$OUTDIR/results.jsonl
: > "$RESULTS"
log() { echo "== $* ($SECONDS s) ==" | tee -a "$LOGS/progress.txt" >&2; }
record() { tee -a "$RESULTS"; }
limited() {  # limited NAME CAP_SECONDS COMMAND...: runs COMMAND for at most CAP or what is left
    local name=$1 cap=$2 left=$((DEADLINE - SECONDS)) started=$SECONDS status=0
    shift 2
    [ "$cap" -gt 5 ] && [ "$left" -gt 5 ] || { echo "skipped (out of time): $name" >&2; return 124; }
    # -k: bert-native finishes its current step on SIGTERM; a step stuck compiling must still end.
    timeout -k 5 $((cap < left ? cap : left)) "$@" 2>>"$LOGS/$name.err" || status=$?
    # Wall time of every command (start-up and kernel compilation included), for the record.
    printf '{"name": "%s", "started": %d, "seconds": %d, "status": %d, "command": "%s"}\n' \
        "$name" "$started" $((SECONDS - started)) "$status" "$*" >> "$OUTDIR/timings.jsonl"
    return "$status"
}
phase_a_left() { echo $((PHASE_A_END - SECONDS)); }
cold() { sed 's/^{/{"cold": true, /'; }  # a first pass in a cold process, not a timing

log device
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    nproc
} | tee "$OUTDIR/summary.txt"

# The kernel caches (compiled PTX, autotune results) start from the last GPU session's when
# gpu-carry/kernel-cache.tar.xz holds them (copy a run's $OUTDIR/kernel-cache.tar.xz there; the
# caches sit in a folder per GPU architecture: autotuning only picks among correct kernels, so a
# stale choice costs speed, never results).
export BERT_RS_KERNEL_CACHE=$WORK/kernels CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
mkdir -p "$BERT_RS_KERNEL_CACHE"
# The compiled PTX (ptx-cache) serves only the build that compiled it.
for archive in kernel-cache ptx-cache; do
    if [ -f "gpu-carry/$archive.tar.xz" ]; then
        "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "gpu-carry/$archive.tar.xz" "$BERT_RS_KERNEL_CACHE" && echo "$archive: carried in"
    else
        echo "$archive: cold"
    fi
done | tee -a "$OUTDIR/summary.txt"
# PyTorch's wheel carries NCCL as libnccl.so.2; cudarc looks for libnccl.so.
NCCL_LIB=$("$PY" -c 'import glob, os, torch; print(next(iter(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "nccl", "lib", "libnccl.so*"))), ""))')
if [ -n "$NCCL_LIB" ]; then
    mkdir -p "$WORK/nccl" && ln -sf "$(realpath "$NCCL_LIB")" "$WORK/nccl/libnccl.so"
    export LD_LIBRARY_PATH=$WORK/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

G=tests/fixtures/pretrain
trajectory() {  # the reference's 4-step trajectory at one precision
    local precision=$1 scale=()
    # A fixed loss scale for fp16: a dynamic one may skip the first steps, and then the steps
    # would see other batches than the reference's.
    [ "$precision" = fp16 ] && scale=(--loss-scale 4096)
    if limited "trajectory-$precision" "$(phase_a_left)" "$BIN" pretrain --config-file $G/config.json \
        --init-checkpoint $G/init.safetensors --input-dir $G/data --output-dir "$WORK/trajectory-$precision" \
        --train-batch-size 16 --gradient-accumulation-steps 2 --max-steps 4 --learning-rate 1e-3 \
        --warmup-proportion 0.5 --max-seq-length 128 --max-predictions-per-seq 20 --seed 1 --no-shuffle \
        --disable-progress-bar --skip-checkpoint --backend cuda --precision "$precision" "${scale[@]}" > /dev/null; then
        "$PY" bench/gpu/trajectory.py "$WORK/trajectory-$precision/dllogger.json" $G/manifest.json "$precision" | record
    else
        echo "{\"check\": \"pretrain-trajectory\", \"precision\": \"$precision\", \"pass\": false, \"error\": \"pretrain failed or ran out of time\"}" | record
    fi
}
CASES="padded_batch squad_384"
# What the CUDA forward is checked at: precision, or precision-fused for burn's fused attention.
VARIANTS="tf32 bf16 fp16 bf16-fused"
forward() {  # the golden forward cases' inputs through the BERT-base on one backend and variant
    local backend=$1 variant=$2 attention=explicit
    [ "$variant" != "${variant%-fused}" ] && attention=fused
    for case in $CASES; do
        limited "forward-$case-$backend-$variant" "$(phase_a_left)" "$BIN" encode --model "$WORK/base" \
            --input "$WORK/$case.json" --backend "$backend" --precision "${variant%-fused}" \
            --attention "$attention" --output "$WORK/$case.$backend-$variant.safetensors"
    done
}
monitor() {  # each bert-native's CPU time (compiling) and the GPU's use, every 15 s
    while sleep 15; do
        echo "-- $SECONDS s"
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
        ps -C bert-native -o pid=,etime=,time=,rss=,args= | cut -c1-160
    done >> "$LOGS/monitor.txt" 2>&1
}

log "A: correctness and cold first passes, all at once (for at most ${PHASE_A_S:-300} s)"
"$PY" bench/gpu/random_bert.py "$WORK/base" --config base > /dev/null
for case in $CASES; do
    "$PY" bench/gpu/compare.py write-input "tests/fixtures/forward/cases/$case.safetensors" "$WORK/$case.json"
done
PHASE_A_END=$((SECONDS + ${PHASE_A_S:-300}))
monitor &
MONITOR=$!
for variant in $VARIANTS; do
    forward cuda "$variant" &
done
for precision in tf32 bf16 fp16; do
    trajectory "$precision" &
    limited "cold-squad-$precision" "$(phase_a_left)" "$BIN" bench squad-inference --config large --seq 384 \
        --batch 8 --iterations 1 --warmup 0 --backend cuda --precision "$precision" | cold | record &
    limited "cold-pretrain-$precision" "$(phase_a_left)" "$BIN" bench pretrain --config large --seq 128 \
        --batch "$PRETRAIN_BATCH" --max-pred 20 --steps 1 --warmup 0 --backend cuda --precision "$precision" \
        | cold | record &
done
forward ndarray fp32 &
limited cold-optimizer "$(phase_a_left)" "$BIN" bench optimizer --backend cuda --config large --steps 1 \
    --warmup 0 | cold | record &
# NCCL on burn-cuda's buffers, sums checked: it compiles little, and the end of phase B, where its
# timed runs are, has not been reached yet.
limited cold-allreduce "$(phase_a_left)" "$BIN" bench allreduce --backend cuda --collective nccl \
    --iterations 2 | cold | record &
wait $(jobs -p | grep -vx "$MONITOR")
for case in $CASES; do
    for variant in $VARIANTS; do
        if [ -f "$WORK/$case.cuda-$variant.safetensors" ] && [ -f "$WORK/$case.ndarray-fp32.safetensors" ]; then
            "$PY" bench/gpu/compare.py compare "tests/fixtures/forward/cases/$case.safetensors" \
                "$WORK/$case.ndarray-fp32.safetensors" "$WORK/$case.cuda-$variant.safetensors" "${variant%-fused}" \
                | sed "s/^{/{\"case\": \"$case\", \"variant\": \"$variant\", /" | record
        else
            echo "{\"case\": \"$case\", \"variant\": \"$variant\", \"pass\": false, \"error\": \"encode failed or ran out of time\"}" | record
        fi
    done
done

log "B: timings one at a time, caches warm"
squad() {  # squad PRECISION CAP [ATTENTION]
    local attention=${3:-explicit}
    limited "squad-$1-$attention" "$2" "$BIN" bench squad-inference --config large --seq 384 --batch 8 \
        --iterations 10 --warmup 3 --backend cuda --precision "$1" --attention "$attention" | record
}
pretrain() {
    limited "pretrain-$1" "$2" "$BIN" bench pretrain --config large --seq 128 --batch "$PRETRAIN_BATCH" \
        --max-pred 20 --steps 5 --warmup 2 --backend cuda --precision "$1" | record
}
squad bf16 60
# burn's fused attention (flash attention where its autotuner picks it) against the explicit
# softmax just timed: it compiles and tunes only the attention kernels anew.
squad bf16 60 fused
limited torch-squad 90 "$PY" bench/gpu/torch_bert.py squad-inference --config large --seq 384 --batch 8 \
    --steps 10 --warmup 3 --precision fp32,tf32,bf16,fp16 | record
# Every kernel's time in one bf16 SQuAD pass after a warm-up pass (cubecl's profiling log),
# summed per kernel into summary.txt.
profile() {  # profile NAME CAP COMMAND...
    local name=$1
    CUBECL_DEBUG_LOG=$LOGS/$name.log CUBECL_DEBUG_OPTION=profile limited "$@" > /dev/null
    { echo "kernel time, $name:"; "$PY" bench/gpu/profile_summary.py "$LOGS/$name.log"; } 2>&1 | tee -a "$OUTDIR/summary.txt"
}
profile profile-squad-bf16 45 "$BIN" bench squad-inference --config large --seq 384 --batch 8 --iterations 1 \
    --warmup 1 --backend cuda --precision bf16
# Training compiles its own kernels (the backward pass's products are new autotune keys): the
# first H200 runs spent minutes in NVRTC before a first step, so the training steps get long limits.
pretrain bf16 150
limited torch-pretrain 120 "$PY" bench/gpu/torch_bert.py pretrain --config large --seq 128 \
    --batch "$PRETRAIN_BATCH" --max-pred 20 --steps 5 --warmup 2 --precision fp32,tf32,bf16,fp16 | record
limited optimizer 90 "$BIN" bench optimizer --backend cuda --config large --steps 5 --warmup 2 | record
profile profile-pretrain-bf16 45 "$BIN" bench pretrain --config large --seq 128 --batch "$PRETRAIN_BATCH" \
    --max-pred 20 --steps 1 --warmup 1 --backend cuda --precision bf16
squad fp16 45
squad tf32 45
squad fp16 45 fused
pretrain fp16 90
pretrain tf32 90
for half in "" --half; do
    limited "allreduce$half" 40 "$BIN" bench allreduce --backend cuda --collective nccl --iterations 10 $half | record
done
kill "$MONITOR" 2>/dev/null

log ratios
"$PY" - "$RESULTS" <<'PY' | tee -a "$OUTDIR/summary.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
rows = [r for r in rows if not r.get("cold")]
speed = lambda r: r.get("training_sequences_per_second") or r.get("inference_sequences_per_second")
for bench in ("squad-inference", "pretrain"):
    ours = {(r["precision"], r.get("attention", "explicit")): speed(r) for r in rows
            if r.get("benchmark") == bench and not r["backend"].startswith("pytorch")}
    theirs = {r["precision"]: speed(r) for r in rows if r.get("benchmark") == bench and r["backend"].startswith("pytorch")}
    for (precision, attention), speed_ours in sorted(ours.items()):
        if precision in theirs:
            print(f"{bench} {precision} ({attention} attention): bert-native {speed_ours:.1f} seq/s, "
                  f"PyTorch {theirs[precision]:.1f} seq/s, ratio {speed_ours / theirs[precision]:.2f}")
PY
# Failed or cut commands: the end of what they printed.
for err in "$LOGS"/*.err; do
    [ -s "$err" ] && { echo "--- $(basename "$err")"; tail -c 600 "$err"; echo; }
done
# This run's autotune results and every log, then the compiled PTX when it packs small enough to
# come back (165 MB unpacked after the first H200 run), all for the next session's gpu-carry/
# (packed by Python: the GPU machine may have no xz). bert-native keeps PTX per build
# (ptx-<fingerprint>) and drops other builds' at start, so carried PTX serves only the same build.
pack() {  # pack ARCHIVE FOLDER [SKIPPED_NAME_PATTERN...]
    "$PY" - "$@" <<'PY'
import fnmatch, os, sys, tarfile
archive, folder, skipped = sys.argv[1], sys.argv[2], sys.argv[3:]
def keep(member):
    name = os.path.basename(member.name)
    return None if any(fnmatch.fnmatch(name, pattern) for pattern in skipped) else member
with tarfile.open(archive, "w:xz", preset=1) as tar:
    tar.add(folder, arcname=".", filter=keep)
PY
}
pack "$OUTDIR/kernel-cache.tar.xz" "$BERT_RS_KERNEL_CACHE" cuda 'ptx-*'
for profile_log in "$LOGS"/profile-*.log; do truncate -c -s '<30M' "$profile_log"; done
pack "$OUTDIR/logs.tar.xz" "$LOGS"
"$PY" - "$OUTDIR/ptx-cache.tar.xz" "$BERT_RS_KERNEL_CACHE" <<'PY' | tee -a "$OUTDIR/summary.txt"
import glob, os, sys, tarfile
archive, root = sys.argv[1:]
with tarfile.open(archive, "w:xz", preset=0) as tar:
    for folder in glob.glob(os.path.join(root, "*", "ptx-*")):
        tar.add(folder, arcname=os.path.relpath(folder, root))
size = os.path.getsize(archive)
if size > 15 << 20:  # a file that comes back from the device holds at most 16 MiB
    os.remove(archive)
    print(f"compiled PTX: {size >> 20} MiB packed, too large to bring back")
else:
    print(f"compiled PTX: {size >> 20} MiB packed (copy ptx-cache.tar.xz to gpu-carry/)")
PY
grep -q '"pass": false' "$RESULTS" && exit 1
exit 0
