"""Train the built-in shapes DALL-E: a small GPT over caption tokens and VQGAN codes.

    python -m lab.train.dalle --out presets/weights/shapes-dalle --steps 2000

1. The text tokenizer is the byte-level BPE that `lab.train.clip` learns from
   shapes captions (every caption word is one token); it is saved as tokenizer.json.
2. Every step draws fresh scenes (held-out colour+shape pairs excluded) with every
   optional part decided, renders them, and turns them into 8x8 codes with the frozen
   built-in VQGAN. Each image is then captioned with a random subset of its parts, each
   stated with probability 0.5 as in the training stream (an unstated part was drawn at
   random, so the shorter caption is still true), and `--p-uncond` of the captions are
   replaced by the empty caption, which teaches the unconditional model that
   classifier-free guidance needs.
3. The loss is the cross-entropy of the 64 codes given the caption and the codes before.
4. Sample grids (one row per caption, held-out pairs included) are written while
   training; `evaluate` reports the validation loss on fresh scenes of seen pairs and of
   held-out pairs. Correctness of the pictures is measured by `python -m lab.eval`.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

import shapes
from pipelines.models.dalle import DALLE, DalleConfig, from_pretrained, save_pretrained
from pipelines.models.vqgan_files import from_pretrained as load_vqgan
from lab.train import common
from lab.train.clip import train_tokenizer
from lab.train.vqgan import to_tensor, to_u8

log = logging.getLogger("atelier.train.dalle")

SIZE = 32
EVAL_SEED = 30_000   # fresh scenes: a seed no training step uses
SAMPLE_CAPTIONS = [
    "a red circle",
    "a large yellow diamond above a small blue circle",
    "a small green square on the left on a white background",
    "a large white star at the top",
    "a black cross to the right of a purple triangle on a yellow background",
    "a purple star",                        # held-out pair
    "a green triangle below an orange square",  # held-out pair in the first slot
]


def partial_caption(scene: shapes.Scene, rng: np.random.Generator, p: float = 0.5) -> str:
    """The caption of a fully stated scene with each optional part kept with probability p."""
    objects = tuple(shapes.ObjectSpec(o.color, o.shape, o.size if rng.random() < p else None) for o in scene.objects)
    position = scene.position if scene.position and rng.random() < p else None
    background = scene.background if rng.random() < p else None
    return shapes.Scene(objects, position, scene.relation, background).caption()


def make_batch(n: int, rng: np.random.Generator, exclude=shapes.HELD_OUT, held_out_only: bool = False):
    """n fresh (uint8 image, fully stated scene) pairs; held_out_only keeps scenes with a held-out pair."""
    images, scenes = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8), []
    while len(scenes) < n:
        scene = shapes.full_caption_scene(rng, exclude=exclude)
        if held_out_only and not any((o.color, o.shape) in shapes.HELD_OUT for o in scene.objects):
            continue
        images[len(scenes)] = np.asarray(shapes.render(scene, SIZE, rng))
        scenes.append(scene)
    return images, scenes


def draw_batch(seed: int, n: int, p_uncond: float, step: int) -> tuple[np.ndarray, list[str]]:
    """The renders and captions of one training step (a share of captions emptied for guidance)."""
    images, scenes = make_batch(n, common.batch_rng(seed, step))
    rng = common.batch_rng(seed + 1, step)
    return images, [partial_caption(s, rng) if rng.random() >= p_uncond else "" for s in scenes]


@torch.no_grad()
def encode(vqgan, images: np.ndarray) -> torch.Tensor:
    """uint8 (B, 32, 32, 3) -> codes (B, 64) in raster order."""
    return vqgan.encode(to_tensor(images).to(vqgan.codebook.device))[2].view(len(images), -1)


@torch.no_grad()
def evaluate(model: DALLE, vqgan, scenes: int = 512) -> dict:
    """Validation loss (nats per code) on fresh scenes, captions as the stream states them."""
    model.eval()
    out = {}
    batch = min(scenes, 128)
    for name, held in (("val_loss_seen", False), ("val_loss_heldout", True)):
        losses = []
        for b in range(max(1, scenes // batch)):
            rng = np.random.default_rng([EVAL_SEED, b, held])
            images, drawn = make_batch(batch, rng, exclude=frozenset() if held else shapes.HELD_OUT,
                                       held_out_only=held)
            text, _ = model.text([partial_caption(s, rng) for s in drawn])
            losses.append(model.loss(text, encode(vqgan, images)).item())
        out[name] = round(float(np.mean(losses)), 4)
    return out


@torch.no_grad()
def sample_grid(model: DALLE, vqgan, path: Path, n: int = 6, seed: int = 0) -> None:
    """One row per caption of SAMPLE_CAPTIONS: n samples each (temperature 1, no filtering)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for caption in SAMPLE_CAPTIONS:
        text, _ = model.text([caption] * n)
        *_, codes = model.sample(text, generator=gen)
        g = model.config.grid
        rows.append(to_u8(vqgan.decode_indices(codes, (n, g, g))))
    common.save_grid(rows, path)


def train(args) -> None:
    accelerator, run_dir = common.setup(args, "dalle")
    # a resumed run reads the captions with the ids its first run learnt them with (saved in the run
    # dir), whatever train_tokenizer does now
    tok_path = run_dir / "tokenizer.json"
    if args.init:   # an exported model: its architecture, tokenizer and weights
        model = from_pretrained(args.init).train()
        config = model.config
        model.text.tok.save(str(tok_path))
        log.info("initial model %s", args.init)
    else:
        if args.resume and tok_path.exists():
            from tokenizers import Tokenizer
            tokenizer = Tokenizer.from_file(str(tok_path))
        else:
            tokenizer = train_tokenizer(n_captions=args.tokenizer_captions, seed=args.seed).backend_tokenizer
            tokenizer.save(str(tok_path))
        config = DalleConfig(text_vocab=tokenizer.get_vocab_size(), text_len=args.text_len,
                             pad_id=tokenizer.token_to_id("<|endoftext|>"), n_layer=args.layers, n_embd=args.width,
                             n_head=args.heads)
        model = DALLE(config, tokenizer)
    vqgan = load_vqgan(args.vqgan).eval().requires_grad_(False)
    assert vqgan.config.n_embed == config.n_codes, "the GPT's image vocabulary must match the VQGAN's codebook"
    log.info("DALL-E GPT with %d parameters, text vocabulary %d, sequence %d", model.num_parameters,
             config.text_vocab, config.block_size)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    model, opt, raw, start, extra, metrics = common.start(args, accelerator, run_dir, model, opt)
    seconds = extra.get("seconds", 0.0)
    t0 = time.time()

    device = accelerator.device
    vqgan.to(device)
    batches = common.step_batches(functools.partial(draw_batch, args.seed, args.batch, args.p_uncond),
                                  start, args.steps, args.workers)
    for step, (images, captions) in zip(range(start, args.steps), batches):
        raw.train()
        common.set_lr(opt, step, args)
        # 1. fresh scenes -> codes; captions state a random subset of each scene's parts
        text, _ = raw.text(captions)
        codes = encode(vqgan, images)
        # 2. cross-entropy of the codes
        loss = raw.loss(text.to(device), codes.to(device))
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(raw.parameters(), 1.0)
        opt.step()
        done = step + 1
        if done % args.log_every == 0:
            elapsed = seconds + time.time() - t0
            metrics.write(done, loss=loss.item(), lr=opt.param_groups[0]["lr"], sequences=done * args.batch,
                          seq_per_s=(done - start) * args.batch / (time.time() - t0), train_s=elapsed)
        if args.sample_every > 0 and (done % args.sample_every == 0 or done == args.steps):
            common.place("cpu", raw, vqgan)
            sample_grid(raw, vqgan, run_dir / f"samples_{done:06d}.png")
            common.place(device, raw, vqgan)
        if done % args.ckpt_every == 0 or done == args.steps:
            common.save_checkpoint(run_dir, done, raw, opt, {"seconds": seconds + time.time() - t0})

    raw.eval()
    common.place("cpu", raw, vqgan)
    save_pretrained(raw, args.out)
    result = evaluate(raw, vqgan, args.eval_scenes)
    sample_grid(raw, vqgan, Path(args.out) / "samples.png")
    common.write_record(Path(args.out), args, result, parameters=raw.num_parameters,
                        sequences_seen=args.steps * args.batch,
                        train_seconds=round(seconds + time.time() - t0, 1), sample_captions=SAMPLE_CAPTIONS)
    log.info("final: %s", json.dumps(result))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--vqgan", default="presets/weights/shapes-vqgan", help="the VQGAN folder whose codes are learnt")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--text-len", type=int, default=24)
    p.add_argument("--p-uncond", type=float, default=0.1, help="share of captions replaced by the empty caption")
    p.add_argument("--tokenizer-captions", type=int, default=20_000, help="captions the BPE is learnt from")
    p.add_argument("--eval-scenes", type=int, default=512, help="fresh scenes per validation loss")
    p.add_argument("--init", help="an exported model folder to start from (architecture, tokenizer and weights)")
    p.add_argument("--eval-only", action="store_true", help="score the folder given by --out and exit")
    args = common.parse(p, "lab.train.dalle", argv)
    if args.eval_only:
        logging.basicConfig(level=logging.INFO)
        torch.set_num_threads(args.threads)
        print(json.dumps(evaluate(from_pretrained(args.out), load_vqgan(args.vqgan), args.eval_scenes), indent=2))
        return
    train(args)


if __name__ == "__main__":
    main()
