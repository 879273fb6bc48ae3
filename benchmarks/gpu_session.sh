#!/usr/bin/env bash
# Every measurement for a lent GPU in one call (the device tool's `run`, carry [".whl"]):
# the 1K -> 16K job with the memory levers (benchmarks/gpu.py), then profiles of the tiled VAE
# at 8K, the stage resize on the host's cores, and a guided UNet evaluation at 1K and 4K. Each
# step has its own time limit, so a slow one leaves the others their time; results go to $OUT.
# See benchmarks/gpu.py for the wheels in .whl/. Extra arguments go to gpu.py (--no-levers).
# SMOKE=1: the same on CPU, small, to know it works first.
set -u
SMOKE=${SMOKE:+--smoke}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the results folder}
[ -n "$SMOKE" ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    > "$OUT/gpu-info.csv"
timeout "${GPU_S:-330}" python3 benchmarks/gpu.py $SMOKE --no-attention --out "$OUT/gpu.json" "$@" \
    2>&1 | tee "$OUT/gpu.log"
timeout "${VAE_S:-120}" python3 benchmarks/vae_profile.py $SMOKE --size 8192 --out "$OUT" 2>&1 \
    | tail -5 | tee "$OUT/vae-profile.log"
timeout "${RESIZE_S:-60}" python3 benchmarks/resize.py --out "$OUT/resize.json" 2>&1 \
    | tail -8 | tee "$OUT/resize.log"
timeout "${UNET_S:-90}" python3 benchmarks/unet_profile.py $SMOKE --latents 128 512 --out "$OUT" 2>&1 \
    | tail -5 | tee "$OUT/unet-profile.log"
