#!/usr/bin/env bash
# The tiny-cpu recipe from a fresh checkout in one command, from the repository root:
#
#   bash recipes/tiny-cpu.sh [--set KEY=VALUE ...]
#
# It builds what the recipe reads and is not there yet, under runs/demo: the demo corpus (the
# Python standard library), its 8192-token tokenizer, the shards and the start pruned from Gemma 3
# 270M (about a minute on 2 cores). Then it trains in two processes of one thread each (23.5
# minutes on 2 AVX2 cores, the final evaluation included). Arguments go to `train run`: on a CPU
# with bf16 arithmetic, --set train.precision=bf16 --set train.steps=1500 fits three times the
# tokens in the half hour (tiny-cpu.toml, docs/experiments).
set -euo pipefail
demo=runs/demo
if [ ! -d "$demo/corpus" ]; then
    codegemma data demo-corpus "$demo/corpus" --max-mb 12
fi
if [ ! -f "$demo/tokenizer/tokenizer.json" ]; then
    codegemma train tokenizer "$demo/corpus" --ext .py --vocab-size 8192 --out "$demo/tokenizer/tokenizer.json"
fi
# cached: returns at once when the shards were built with these settings
codegemma train demo-data --fim-rate 0.5 --fim-chunk-chars 500
if [ ! -f "$demo/gemma3-270m-pruned/config.json" ]; then
    codegemma train prune --tokenizer "$demo/tokenizer/tokenizer.json" --calibration "$demo/shards/train" \
        --layers 0-5 --d-ff 384 --out "$demo/gemma3-270m-pruned"
fi
exec torchrun --nproc_per_node 2 -m codegemma train run recipes/tiny-cpu.toml --set train.batch_size=4 "$@"
