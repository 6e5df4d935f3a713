"""Train the built-in shapes VQGAN (the tokenizer every engine draws through).

    python -m lab.train.vqgan --out presets/weights/shapes-vqgan --steps 3600

The model is the taming-compatible `pipelines.models.vqgan.VQGAN`, so the result loads
like any taming checkpoint. Training differs from taming in three ways that suit a
small CPU budget:
  1. the codebook is learnt by exponential moving averages of the encoder outputs
     assigned to each code (VQ-VAE-2), with dead codes restarted from the batch, which
     keeps most of the codebook in use;
  2. no GAN and no LPIPS (no hub weights here); instead the loss adds L1 and an
     edge term (L1 between image gradients), which keeps the corners of small stars,
     crosses and diamonds that a plain MSE blurs;
  3. the learning rate follows a warm-up and cosine decay.
`--eval-only` scores an exported folder: PSNR on fresh scenes, codebook use, how
well the mask of each small shape survives reconstruction, and how often the
attribute judge (lab.eval.judge) still finds a scene's full caption true.

`--decoder-from DIR` fine-tunes only the decoder of an exported VQGAN: encoder and
codebook stay frozen, so every code keeps its meaning and models trained on the
codes (DALL-E) or latents (diffusion) keep working, while pictures get sharper.
`--object-weight` adds loss weight on pixels that are not background, where
small shapes lose their corners. `--hard-share` fills part of every batch with
scenes of mostly small objects, drawn by `--hard-shapes` (stars and crosses most):
in the general stream a small star is a few pixels in one image of ten, too rare
for the decoder to learn to draw it rather than a blob, although the codes already
tell it apart (a small CNN reads the shape of a small object from its 8x8 codes
99 % of the time).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import shapes
from pipelines.models.vqgan import VQGAN, VQGANConfig, count_parameters, psnr
from pipelines.models.vqgan_files import from_pretrained, save_pretrained
from lab.train import common

log = logging.getLogger("atelier.train.vqgan")

SIZE = 32
EVAL_SEED = 10_000  # fresh scenes: a seed no training step uses


def to_tensor(batch_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(batch_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def to_u8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


HARD_SHAPES = "circle:1,square:1,triangle:2,diamond:2,star:6,cross:4"  # how often hard_batch draws each shape


def shape_weights(text: str) -> dict[str, float]:
    """'star:6,cross:4' -> {'star': 6.0, 'cross': 4.0, every other shape: 0.0}."""
    w = dict.fromkeys(shapes.SHAPES, 0.0)
    for part in text.split(","):
        name, _, value = part.partition(":")
        if name.strip() not in w:
            raise ValueError(f"unknown shape {name.strip()!r} in {text!r} (shapes: {', '.join(shapes.SHAPES)})")
        w[name.strip()] = float(value)
    if sum(w.values()) <= 0:
        raise ValueError(f"{text!r} gives every shape weight 0")
    return w


def hard_batch(n: int, rng: np.random.Generator, weights: dict[str, float]) -> np.ndarray:
    """Scenes the tokenizer finds hard: 1-2 objects, small 80 % of the time, shapes drawn by `weights`."""
    pairs = shapes.pairs(shapes.HELD_OUT)
    p = np.array([weights[sh] for _, sh in pairs], dtype=np.float64)
    p /= p.sum()
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        objs = tuple(shapes.ObjectSpec(*pairs[rng.choice(len(pairs), p=p)],
                                       "small" if rng.random() < 0.8 else "large")
                     for _ in range(1 + int(rng.random() < 0.5)))
        relation = shapes.RELATIONS[rng.integers(len(shapes.RELATIONS))] if len(objs) == 2 else None
        out[i] = np.asarray(shapes.render(shapes.Scene(objs, relation=relation), SIZE, rng))
    return out


def edge_loss(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences of two images."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(x_rec), dx(x)) + F.l1_loss(dy(x_rec), dy(x))


class EMACodebook:
    """EMA updates of `quantize.embedding.weight` with dead-code restarts."""

    def __init__(self, model: VQGAN, decay: float = 0.99, dead_below: float = 0.02):
        w = model.quantize.embedding.weight
        w.requires_grad_(False)
        self.w, self.decay, self.dead_below = w, decay, dead_below
        self.count = torch.ones(w.shape[0])
        self.sum = w.detach().clone()

    @torch.no_grad()
    def update(self, h: torch.Tensor, idx: torch.Tensor, rng: torch.Generator) -> int:
        h_flat = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # (N, C)
        K = self.w.shape[0]
        # 1. decayed counts and sums of the vectors assigned to each code
        self.count.mul_(self.decay).add_(torch.bincount(idx, minlength=K).float(), alpha=1 - self.decay)
        self.sum.mul_(self.decay).index_add_(0, idx, h_flat, alpha=1 - self.decay)
        # 2. Laplace-smoothed means become the codebook
        n = self.count.sum()
        smoothed = (self.count + 1e-5) / (n + K * 1e-5) * n
        self.w.copy_(self.sum / smoothed[:, None])
        # 3. restart codes nobody chose lately at random encoder outputs of this batch
        dead = (self.count < self.dead_below).nonzero().squeeze(1)
        if len(dead):
            pick = torch.randint(len(h_flat), (len(dead),), generator=rng)
            self.w[dead] = h_flat[pick]
            self.sum[dead] = h_flat[pick]
            self.count[dead] = 1.0
        return len(dead)

    def state(self):
        return {"count": self.count, "sum": self.sum}

    def load(self, st):
        self.count.copy_(st["count"])
        self.sum.copy_(st["sum"])


def default_config() -> VQGANConfig:
    # f4 at 32 px: an 8x8 token grid. Width 32/64 keeps the CPU budget; 1024 codes of
    # width 16 (a narrow code space keeps the codebook well used).
    return VQGANConfig(embed_dim=16, n_embed=1024, z_channels=64, resolution=SIZE, ch=32, ch_mult=(1, 2, 2),
                       num_res_blocks=1, attn_resolutions=())


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def _mask(img_u8: np.ndarray, color: str) -> np.ndarray:
    """Pixels whose nearest palette colour is `color`."""
    pal = np.array(list(shapes.PALETTE.values()), dtype=np.float32)
    d = ((img_u8[..., None, :].astype(np.float32) - pal) ** 2).sum(-1)
    return d.argmin(-1) == list(shapes.PALETTE).index(color)


def small_shape_scene(shape: str, seed, size: int = SIZE) -> tuple[np.ndarray, str]:
    """One small `shape` of a seeded random colour (no held-out pair), placed at random: (image, colour)."""
    r = np.random.default_rng(seed)
    color = str(next(c for c in r.permutation(list(shapes.PALETTE)) if (c, shape) not in shapes.HELD_OUT))
    scene = shapes.Scene(objects=(shapes.ObjectSpec(color, shape, "small"),))
    return np.asarray(shapes.render(scene, size, r)), color


@torch.no_grad()
def evaluate(model: VQGAN, n: int = 512, size: int = SIZE) -> dict:
    """PSNR on fresh scenes, share of the codebook used, and mask IoU of small shapes."""
    model.eval()
    rng = np.random.default_rng(EVAL_SEED)
    imgs, _ = shapes.sample_batch(n, size, rng)
    x = to_tensor(imgs)
    rec, used = [], set()
    for i in range(0, n, 64):
        x_rec, _, idx = model(x[i:i + 64])
        rec.append(x_rec)
        used.update(idx.tolist())
    x_rec = torch.cat(rec)
    out = {"psnr_db": round(psnr((x_rec + 1) / 2, (x + 1) / 2), 2),
           "codebook_used": round(len(used) / model.config.n_embed, 3)}
    # every shape drawn small, one per scene, on random colours and positions
    ious = {}
    for shape in shapes.SHAPES:
        vals = []
        for k in range(24):
            img, color = small_shape_scene(shape, [EVAL_SEED, k, shapes.SHAPES.index(shape)], size)
            rec_u8 = to_u8(model(to_tensor(img[None]))[0])[0]
            a, b = _mask(img, color), _mask(rec_u8, color)
            vals.append((a & b).sum() / max(1, (a | b).sum()))
        ious[shape] = round(float(np.mean(vals)), 3)
    out["small_shape_mask_iou"] = ious
    out["small_shape_judged"] = small_shapes_judged(model)
    out["judge_correct"] = judged_correct(model, n=min(300, n), size=size)
    return out


@torch.no_grad()
def judged_correct(model: VQGAN, n: int = 300, size: int = SIZE) -> float:
    """Share of reconstructed fresh scenes (every caption part stated) the judge finds correct."""
    from lab.eval.judge import judge

    rng = np.random.default_rng(EVAL_SEED + 2)
    scenes = [shapes.full_caption_scene(rng, exclude=()) for _ in range(n)]
    imgs = np.stack([np.asarray(shapes.render(sc, size, rng)) for sc in scenes])
    rec = np.concatenate([to_u8(model(to_tensor(imgs[i:i + 64]))[0]) for i in range(0, n, 64)])
    return round(float(np.mean([judge(r, sc).correct for r, sc in zip(rec, scenes)])), 3)


@torch.no_grad()
def small_shapes_judged(model: VQGAN, per_shape: int = 24, size: int = SIZE) -> dict:
    """Per shape: share of reconstructed one-small-object scenes whose object the judge names rightly."""
    from lab.eval.judge import analyse

    model.eval()
    out = {}
    for shape in shapes.SHAPES:
        imgs, colours = zip(*(small_shape_scene(shape, [EVAL_SEED, 7, k, shapes.SHAPES.index(shape)], size)
                              for k in range(per_shape)))
        rec = to_u8(model(to_tensor(np.stack(imgs)))[0])
        hits = [any(o.shape == shape and o.color == c for o in analyse(im).objects) for im, c in zip(rec, colours)]
        out[shape] = round(float(np.mean(hits)), 3)
    return out


def object_mask(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): 1 where a pixel differs from the background (the top-left pixel's colour)."""
    return ((x - x[:, :, :1, :1]).abs().amax(1, keepdim=True) > 0.1).float()


def recon_grid(model: VQGAN, path: Path, n: int = 12) -> None:
    imgs, _ = shapes.sample_batch(n, SIZE, np.random.default_rng(EVAL_SEED + 1))
    with torch.no_grad():
        rec = to_u8(model(to_tensor(imgs))[0])
    common.save_grid([imgs, rec], path)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def train(args) -> None:
    accelerator, run_dir = common.setup(args, "vqgan")
    decoder_only = bool(args.decoder_from)
    model = from_pretrained(args.decoder_from) if decoder_only else VQGAN(default_config())
    log.info("VQGAN with %d parameters, factor %d%s", count_parameters(model), model.factor,
             ", training the decoder only" if decoder_only else "")
    if decoder_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("decoder.", "post_quant_conv.")))
    codebook = EMACodebook(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    model, opt, raw, start, extra, metrics = common.start(args, accelerator, run_dir, model, opt)
    if extra:
        codebook.load(extra["codebook"])
    gen = torch.Generator().manual_seed(args.seed)
    hard_weights = shape_weights(args.hard_shapes)

    for step in range(start, args.steps):
        model.train()
        common.set_lr(opt, step, args)
        rng = common.batch_rng(args.seed, step)
        n_hard = round(args.batch * args.hard_share)
        imgs, _ = shapes.sample_batch(args.batch - n_hard, SIZE, rng)
        if n_hard:
            imgs = np.concatenate([imgs, hard_batch(n_hard, rng, hard_weights)])
        x = to_tensor(imgs).to(accelerator.device)
        # 1. encode, quantize, decode with the straight-through estimator
        with torch.set_grad_enabled(not decoder_only):
            h = raw.encode_latent(x)
            idx = raw.quantize.nearest(h)
            z_q = raw.quantize.lookup(idx, (h.shape[0], h.shape[2], h.shape[3]))
        if step == start == 0 and not decoder_only:  # seed the codebook with real encoder outputs
            with torch.no_grad():
                flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
                raw.quantize.embedding.weight.copy_(flat[torch.randint(len(flat), (raw.config.n_embed,), generator=gen)])
                codebook.sum.copy_(raw.quantize.embedding.weight)
        x_rec = raw.decode(h + (z_q - h).detach())
        # 2. reconstruction + edges + commitment
        l_mse, l_l1, l_edge = F.mse_loss(x_rec, x), F.l1_loss(x_rec, x), edge_loss(x_rec, x)
        l_commit = F.mse_loss(h, z_q.detach())
        loss = l_mse + 0.5 * l_l1 + args.edge_weight * l_edge + (0.0 if decoder_only else 0.25 * l_commit)
        if args.object_weight:
            loss = loss + args.object_weight * ((x_rec - x).abs() * object_mask(x)).mean()
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        # 3. codebook by EMA (frozen when only the decoder trains)
        restarted = 0 if decoder_only else codebook.update(h, idx, gen)

        if (step + 1) % args.log_every == 0:
            with torch.no_grad():
                p = psnr((x_rec + 1) / 2, (x + 1) / 2)
            metrics.write(step + 1, loss=loss.item(), mse=l_mse.item(), edge=l_edge.item(), commit=l_commit.item(),
                          psnr=p, codes_in_batch=len(torch.unique(idx)), restarted=restarted,
                          lr=opt.param_groups[0]["lr"])
        if args.sample_every > 0 and (step + 1) % args.sample_every == 0:
            recon_grid(raw, run_dir / f"samples_{step + 1:06d}.png")
            metrics.write(step + 1, judge_correct=judged_correct(raw, n=128), **{
                f"small_{k}": v for k, v in small_shapes_judged(raw, per_shape=16).items()})
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            common.save_checkpoint(run_dir, step + 1, raw, opt, {"codebook": codebook.state()})

    raw.eval()
    raw.quantize.embedding.weight.requires_grad_(True)
    save_pretrained(raw, args.out)
    result = evaluate(raw, n=args.eval_scenes)
    recon_grid(raw, Path(args.out) / "reconstructions.png")
    common.write_record(Path(args.out), args, result, parameters=count_parameters(raw))
    log.info("final: %s", json.dumps(result))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--edge-weight", type=float, default=1.0)
    p.add_argument("--object-weight", type=float, default=0.0, help="extra L1 weight on non-background pixels")
    p.add_argument("--decoder-from", default=None, help="exported VQGAN folder: train only its decoder")
    p.add_argument("--hard-share", type=float, default=0.0,
                   help="share of each batch drawn from hard scenes (mostly small objects; see hard_batch)")
    p.add_argument("--hard-shapes", default=HARD_SHAPES, help="how often hard scenes draw each shape")
    p.add_argument("--eval-only", action="store_true", help="score the folder given by --out and exit")
    p.add_argument("--eval-scenes", type=int, default=512, help="fresh scenes scored at the end")
    args = common.parse(p, "lab.train.vqgan", argv)
    if args.eval_only:
        logging.basicConfig(level=logging.INFO)
        torch.set_num_threads(args.threads)
        print(json.dumps(evaluate(from_pretrained(args.out), n=args.eval_scenes), indent=2))
        return
    train(args)


if __name__ == "__main__":
    main()
