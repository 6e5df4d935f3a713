#!/usr/bin/env bash
# One round of GPU training for the diffusion and unCLIP engines (issues 4 and 6), sized for a
# 15-minute device lease: both fine-tunes side by side, then the evaluation harness on each, and
# everything packed into $OUT (two tarballs of weights, the reports, the logs).
#
#   device run (carry .whl):  bash lab/train/gpu_round.sh
#   a dry run on a CPU:       OUT=/tmp/gpu STEPS=2 EVAL=1 PY=.venv/bin/python bash lab/train/gpu_round.sh
#
# The device image has torch, transformers and accelerate but not diffusers: carry its wheels in
# .whl/ (ignored by git; see the device notes: pip download --no-deps diffusers==0.42.1 importlib_metadata).
# Both runs start from the committed weights, which already read CLIP's token embeddings beside its
# last layer and name the top or left object first (both kept from the --init export); both keep the
# last CPU fine-tunes' caption mix (--p-optional 0.9), and the decoder drops the caption more often
# so that its embedding-only path (variations) gets more of the training.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder the results go to}
STEPS=${STEPS:-3000}        # of 256 images each: 0.77M images per model, about 5 minutes side by side on an H200
EVAL=${EVAL:-100}           # diffusion captions per category (unCLIP: a third of it)
source lab/train/gpu_env.sh      # PY, offline Python, the carried wheels, $OUT, env.txt
mkdir -p runs/gpu
common="--batch 256 --lr 3e-4 --workers 4 --threads 2 --ema 0.999 --ema-start 0 --log-every 100 --sample-every 0 --ckpt-every 1000 --steps $STEPS"
$PY -m lab.train.diffusion --init presets/weights/shapes-diffusion --p-optional 0.9 --seed 31 $common \
    --out runs/gpu/dif --run-dir runs/gpu/run_dif > "$OUT/train_dif.log" 2>&1 &
dif=$!
$PY -m lab.train.unclip decoder --init presets/weights/shapes-unclip-decoder --text-cond --text-dropout 0.7 --p-optional 0.9 --seed 33 $common \
    --out runs/gpu/dec --run-dir runs/gpu/run_dec > "$OUT/train_dec.log" 2>&1 &
dec=$!
wait $dif
wait $dec
tail -n 2 "$OUT/train_dif.log" "$OUT/train_dec.log"

# the harness on each, through a preset that swaps in the new weights (removed again at the end)
$PY - <<'PY'
import json
p = json.load(open("presets/shapes.json"))
p.update(name="shapesgpu", label="GPU round")
p["components"]["diffusion"] = {"kind": "diffusion", "path": "runs/gpu/dif"}
p["components"]["unclip_decoder"] = {"kind": "unclip_decoder", "path": "runs/gpu/dec"}
json.dump(p, open("presets/shapesgpu.json", "w"))
PY
trap 'rm -f presets/shapesgpu.json' EXIT
$PY -m lab.eval diffusion --preset shapesgpu --per-category "$EVAL" --samples 2 --out runs/gpu/eval-dif-25 2>&1 | tail -n 4
$PY -m lab.eval diffusion --preset shapesgpu --per-category "$EVAL" --samples 2 --set steps=10 --out runs/gpu/eval-dif-10 2>&1 | tail -n 4
$PY -m lab.eval unclip --preset shapesgpu --per-category $(( (EVAL + 2) / 3 )) --samples 2 --out runs/gpu/eval-unc 2>&1 | tail -n 4
tar -czf "$OUT/dif.tgz" -C runs/gpu dif eval-dif-25 eval-dif-10
tar -czf "$OUT/dec.tgz" -C runs/gpu dec eval-unc
ls -la "$OUT"
