#!/usr/bin/env bash
# Every measurement for a lent GPU in one call (the device tool's `run`, carry [".whl"]).
# STEPS picks them, in order (default "vlevers levers gpu"):
#   vlevers the tiled VAE's levers (GroupNorm moments, window copies; benchmarks/vae_levers.py)
#   levers  the UNet levers against the plain evaluation at 1K and 4K (benchmarks/unet_levers.py)
#   gpu     the 1K -> 16K job and its projection (benchmarks/gpu.py; extra arguments go to it,
#           e.g. --no-levers)
#   vae     the tiled VAE's profile at 8K (benchmarks/vae_profile.py)
#   resize  the stage resize on the host's cores (benchmarks/resize.py)
#   unet    the UNet's profile at 1K and 4K (benchmarks/unet_profile.py)
# Each step has its own time limit (VLEVERS_S, LEVERS_S, GPU_S, VAE_S, RESIZE_S, UNET_S), so a
# slow one leaves the others their time; results go to $OUT (the device tool brings back 8
# files: the default steps write 7, in at most 565 s of a call's 600). See benchmarks/gpu.py
# for the wheels in .whl/; without any there, it runs on the packages python3 has.
# SMOKE=1: the same on CPU, small, to know it works first.
set -u
SMOKE=${SMOKE:+--smoke}
wheels=(.whl/*.whl)
if [ -e "${wheels[0]}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" || exit 1
else
    echo "no wheels in .whl/: running on the packages python3 has" >&2
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the results folder}
[ -n "$SMOKE" ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    > "$OUT/gpu-info.csv"
for step in ${STEPS:-vlevers levers gpu}; do
    case $step in
    vlevers) timeout "${VLEVERS_S:-45}" python3 benchmarks/vae_levers.py $SMOKE --out "$OUT" \
                 2>&1 | tail -16 ;;
    levers) timeout "${LEVERS_S:-230}" python3 benchmarks/unet_levers.py $SMOKE \
                --latents 128 512 --out "$OUT" 2>&1 | tail -14 | tee "$OUT/unet-levers.log" ;;
    gpu) timeout "${GPU_S:-290}" python3 benchmarks/gpu.py $SMOKE --no-attention \
             --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log" ;;
    vae) timeout "${VAE_S:-120}" python3 benchmarks/vae_profile.py $SMOKE --size 8192 \
             --out "$OUT" 2>&1 | tail -5 | tee "$OUT/vae-profile.log" ;;
    resize) timeout "${RESIZE_S:-60}" python3 benchmarks/resize.py --out "$OUT/resize.json" \
                2>&1 | tail -8 | tee "$OUT/resize.log" ;;
    unet) timeout "${UNET_S:-90}" python3 benchmarks/unet_profile.py $SMOKE --latents 128 512 \
              --out "$OUT" 2>&1 | tail -5 | tee "$OUT/unet-profile.log" ;;
    *) echo "unknown step: $step (vlevers, levers, gpu, vae, resize or unet)" >&2; exit 2 ;;
    esac
done
