#!/usr/bin/env bash
# The checks that need a GPU, in one run: bf16 training speed against transformers and MFU at the
# sizes of Gemma 3 270M and CodeGemma 2B, and the trainer's GPU code paths (bf16 autocast, fused
# AdamW, torch.compile, activation checkpointing, FSDP2 and DDP over NCCL) on the demo shards.
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Needs the demo shards and tokenizer (runs/demo/shards/{train,eval,heldout}, runs/demo/tokenizer;
# docs/training.md says how to build them). Each step logs to OUT_DIR/log.txt and goes on if
# another failed; the results are OUT_DIR/*.json and the trainer runs' metrics.jsonl files.
# Sizes can be shrunk for a dry run on a CPU: DEVICE=cpu SMALL=1 bash bench/gpu_check.sh OUT_DIR;
# ONLY="fsdp ddp" runs only the steps named.
set -u -o pipefail
OUT=$(mkdir -p "${1:?usage: bench/gpu_check.sh OUT_DIR}" && cd "$1" && pwd)
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RUNS=${RUNS:-runs/gpu-check}
rm -rf "$RUNS"

if [ "${SMALL:-0}" = 1 ]; then  # dry run: tiny presets, few steps
    SMALL_PRESET=tiny-gemma3; LARGE_PRESET=tiny-gemma; SEQ=64; LONG_SEQ=128; BATCH=2; ROUNDS=1
    TINY_STEPS=20; TINY_EVAL=10; WIDE="d_model=64 n_layers=2 n_heads=2 head_dim=32 d_ff=128"
    WIDE_BATCH=4; WIDE_STEPS=6
else
    SMALL_PRESET=gemma3-270m; LARGE_PRESET=codegemma-2b; SEQ=2048; LONG_SEQ=8192; BATCH=4; ROUNDS=5
    TINY_STEPS=1500; TINY_EVAL=750; WIDE="d_model=1024 n_layers=12 n_heads=8 head_dim=128 d_ff=4096"
    WIDE_BATCH=64; WIDE_STEPS=60
fi

step() {  # step NAME COMMAND...: run, log, note the exit status
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $1 "* ]]; then return; fi
    echo "== $1: ${*:2}" | tee -a "$OUT/log.txt"
    local start=$SECONDS
    "${@:2}" 2>&1 | tee -a "$OUT/log.txt" | grep -v "it/s\]" | tail -n 25
    echo "== $1: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
}

wide_overrides() {  # the wider model for the distributed checks, as recipe overrides
    for kv in $WIDE; do printf -- '--set model.overrides.%s ' "$kv"; done
}

if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee -a "$OUT/log.txt"
fi
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/log.txt"

# 1. One training step, ours vs transformers (same weights, same loss), bf16 autocast.
step speed-small $PY bench/train.py --preset $SMALL_PRESET --device $DEVICE --precision bf16 --batch $BATCH \
    --seq-len $SEQ --rounds $ROUNDS --steps 3 --sequential --json "$OUT/train-$SMALL_PRESET.json"
step speed-large $PY bench/train.py --preset $LARGE_PRESET --device $DEVICE --precision bf16 --batch 1 \
    --seq-len $LONG_SEQ --rounds 3 --steps 2 --sequential --json "$OUT/train-$LARGE_PRESET.json"

# 2. The tiny-cpu-scratch recipe as written, on the GPU (bf16 autocast): its losses should track the
#    float32 CPU run's.
step recipe-tiny $PY -m codegemma train run recipes/tiny-cpu-scratch.toml --no-resume --set train.device=$DEVICE \
    --set train.steps=$TINY_STEPS --set eval.every=$TINY_EVAL --set out_dir=$RUNS/tiny
cp "$RUNS/tiny/metrics.jsonl" "$OUT/tiny-metrics.jsonl" 2>/dev/null

# 3. FSDP2 (one process still forms an NCCL group and shards) + compile + activation checkpointing,
#    then DDP, on a 187M-parameter model.
common="--no-resume --set train.device=$DEVICE $(wide_overrides) --set train.batch_size=$WIDE_BATCH
        --set train.steps=$WIDE_STEPS --set eval.every=0 --set eval.infill_examples=16 --set log.every=10
        --set checkpoint.every=$((WIDE_STEPS / 2))"
# shellcheck disable=SC2086
step fsdp $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m codegemma train run recipes/tiny-cpu-scratch.toml \
    $common --set distributed.strategy=fsdp --set train.compile=true --set train.activation_checkpointing=true \
    --set out_dir=$RUNS/fsdp
cp "$RUNS/fsdp/metrics.jsonl" "$OUT/fsdp-metrics.jsonl" 2>/dev/null

# 3b. The FSDP run again from its mid-run checkpoint, which each process wrote as its own shards
#     (torch.distributed.checkpoint, coordinated on the gloo group beside NCCL): the resumed steps
#     should follow the first run's (up to the GPU's nondeterministic sums).
fsdp_resume() {
    local ckpts=$RUNS/fsdp/checkpoints mid
    mid=$(printf 'step_%08d' $((WIDE_STEPS / 2)))
    [ -f "$ckpts/$mid/.metadata" ] || { echo "no sharded checkpoint $ckpts/$mid"; return 1; }
    rm -rf "$ckpts/$(printf 'step_%08d' "$WIDE_STEPS")" && echo "$mid" > "$ckpts/latest"
    # shellcheck disable=SC2086
    $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m codegemma train run recipes/tiny-cpu-scratch.toml \
        ${common/--no-resume/} --set distributed.strategy=fsdp --set train.compile=true \
        --set train.activation_checkpointing=true --set out_dir=$RUNS/fsdp || return 1
    $PY - "$OUT/fsdp-metrics.jsonl" "$RUNS/fsdp/metrics.jsonl" <<'PYTHON'
import sys
from codegemma.train import metrics
first, resumed = (metrics.read(path) for path in sys.argv[1:])
gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(first, resumed))
print(f"{len(resumed)} steps; largest loss difference from the uninterrupted run: {gap:.2e}")
sys.exit(0 if len(first) == len(resumed) and gap < 1e-2 else 1)
PYTHON
}
step fsdp-resume fsdp_resume
cp "$RUNS/fsdp/metrics.jsonl" "$OUT/fsdp-resumed-metrics.jsonl" 2>/dev/null
# shellcheck disable=SC2086
step ddp $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m codegemma train run recipes/tiny-cpu-scratch.toml \
    $common --set distributed.strategy=ddp --set out_dir=$RUNS/ddp
cp "$RUNS/ddp/metrics.jsonl" "$OUT/ddp-metrics.jsonl" 2>/dev/null

# 4. Compiled training step, ours vs transformers.
step speed-small-compiled timeout 200 $PY bench/train.py --preset $SMALL_PRESET --device $DEVICE --precision bf16 --compile \
    --batch $BATCH --seq-len $SEQ --rounds $ROUNDS --steps 3 --sequential --json "$OUT/train-$SMALL_PRESET-compiled.json"

grep "^== .*exit" "$OUT/log.txt"
