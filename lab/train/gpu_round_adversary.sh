#!/usr/bin/env bash
# The GPU round of issue 27: the built-in CLIP fine-tuned against the VQGAN+CLIP loop itself, then unCLIP's
# prior and decoder moved onto its embedding; sized for one call of a 15-minute lease.
#
#   device run (carry .whl):  bash lab/train/gpu_round_adversary.sh
#   a dry run on a CPU:       OUT=/tmp/gpua CLIP_STEPS=3 PAIR_STEPS=3 CHAINS=8 LOOP=6 PY=.venv/bin/python bash lab/train/gpu_round_adversary.sh
#
# Why: the CLIP reads every attribute of clean pictures (lone-object probes 100 %), yet the loop finds
# pictures it scores highly that show little of the caption (VQGAN+CLIP 20 / 0 / 0 % on the harness). Here
# CHAINS loops run beside the training (lab/train/clip.py, LoopChains: the preset's settings, 300 iterations,
# staggered), each picture a negative for its caption and the batch's; their judged accuracy on training
# captions is logged as loop_correct. A loop picture costs a CPU thread about 8 s, so this needs the GPU.
# Each stage stops at its --minutes and records steps_done; the weights, logs and records land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder the results go to}
CLIP_INIT=${CLIP_INIT:-presets/weights/shapes-clip-factored}   # the preset's CLIP (its first GPU round);
                                  # a later round: the last round's CLIP (carried)
CLIP_NAME=$(basename "$CLIP_INIT")   # the weights come back under the name they went out with
CLIP_STEPS=${CLIP_STEPS:-900}     # the schedule's length; --minutes may stop it earlier
SEED=${SEED:-27}
CLIP_MINUTES=${CLIP_MINUTES:-3.5}
CHAINS=${CHAINS:-1024}
LOOP=${LOOP:-300}                 # a loop's iterations (the preset's default)
PAIR_STEPS=${PAIR_STEPS:-4000}
PAIR_MINUTES=${PAIR_MINUTES:-2.5}
PAIR=${PAIR:-1}                   # 0: the CLIP alone (the pair then follows on the CPU)
source lab/train/gpu_env.sh      # PY, offline Python, the carried wheels, $OUT, env.txt
G=runs/gpu_adv
mkdir -p "$G"

# 1. the CLIP: the committed one's recipe (lab/logs/shapes-clip-factored), fine-tuned with the loops beside it
$PY -m lab.train.clip --init "$CLIP_INIT" --vqgan presets/weights/shapes-vqgan --augment Af \
    --hard-negatives --negatives shape,colour,size,position,relation,background --fragments 0.2 --attribute-loss 3.0 \
    --adversary "$CHAINS" --adversary-iterations "$LOOP" --adversary-advance 2 --adversary-batch 256 --adversary-min-age 20 \
    --steps "$CLIP_STEPS" --minutes "$CLIP_MINUTES" --batch 256 --lr 5e-4 --seed "$SEED" --workers 6 --threads 4 \
    --log-every 10 --sample-every 0 --ckpt-every 100000 \
    --out "$G/$CLIP_NAME" --run-dir "$G/run_clip" > "$OUT/train_clip.log" 2>&1
tail -n 3 "$OUT/train_clip.log"
cp "$G/run_clip/log.jsonl" "$OUT/clip.jsonl"
tar -czf "$OUT/clip.tgz" -C "$G" "$CLIP_NAME"
[ "$PAIR" = 1 ] || exit 0

# 2. the prior (from scratch, as on the CPU) and the decoder (carried over) on the new embedding, side by side
pair="--p-optional 0.9 --workers 5 --threads 2 --log-every 100 --sample-every 0 --ckpt-every 100000 --steps $PAIR_STEPS --minutes $PAIR_MINUTES"
$PY -m lab.train.unclip prior --clip "$G/$CLIP_NAME" --batch 256 --lr 1e-3 --seed 0 --ema 0.995 $pair \
    --out "$G/shapes-unclip-prior" --run-dir "$G/run_prior" > "$OUT/train_prior.log" 2>&1 &
prior=$!
$PY -m lab.train.unclip decoder --init presets/weights/shapes-unclip-decoder --clip "$G/$CLIP_NAME" \
    --text-clip presets/weights/shapes-clip --text-cond --text-dropout 0.7 --batch 256 --lr 2e-4 --seed 47 \
    --ema 0.998 --ema-start 0 $pair --out "$G/shapes-unclip-decoder" --run-dir "$G/run_decoder" > "$OUT/train_decoder.log" 2>&1 &
decoder=$!
wait $prior
wait $decoder
tail -n 2 "$OUT/train_prior.log" "$OUT/train_decoder.log"

# 3. the pair's weights and records back in one tarball (a file comes back under 16 MiB), the logs beside it
cp "$G/run_prior/log.jsonl" "$OUT/prior.jsonl"
cp "$G/run_decoder/log.jsonl" "$OUT/decoder.jsonl"
tar -czf "$OUT/pair.tgz" -C "$G" shapes-unclip-prior shapes-unclip-decoder
ls -la "$OUT"
