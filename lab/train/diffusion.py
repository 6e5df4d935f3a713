"""Train the built-in shapes diffusion model: a text-conditioned UNet over VQGAN latents.

    python -m lab.train.diffusion --out presets/weights/shapes-diffusion --steps 3000

1. Each step draws fresh scenes from the shapes stream (held-out colour+shape pairs
   excluded), encodes them with the built-in VQGAN to pre-quantisation latents h and
   normalises them per channel (statistics measured on --stat-images scenes first).
2. Captions go through the built-in CLIP's text encoder (frozen); a share of them
   (--caption-dropout) is replaced by the empty caption, which is what classifier-free
   guidance subtracts at sampling time.
3. DDPM's objective: noise z at a uniform timestep t and regress the velocity v
   (Salimans & Ho, 2022; --prediction-type epsilon regresses the noise), each timestep
   weighted by min-SNR-gamma (Hang et al., 2023), which stops the nearly clean
   timesteps dominating the gradient. With eps-prediction and DDPM's linear schedule,
   x0 = (z_t - sqrt(1 - a) eps) / sqrt(a) multiplies the network's error by ~150 at
   t = 999, and samplers that start there (DPM-Solver++) diverge; v does not.
4. An exponential moving average of the weights is kept (--ema); grids and the export
   use it. Sample grids are drawn with the app's own loop (DPM-Solver++, 20 steps).
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import shapes
from pipelines.diffusion_sampling import denoise, make_scheduler
from pipelines.models.clip import load_clip
from pipelines.models.diffusion import (DiffusionConfig, LatentDiffusion, text_states, fit_preview_rgb,
                                       from_pretrained, parse_text_inputs, save_pretrained, with_text_inputs)
from pipelines.models.vqgan_files import from_pretrained as load_vqgan
from lab.train import common

log = logging.getLogger("atelier.train.diffusion")

SIZE = 32
GRID_CAPTIONS = [
    "a red circle", "a large blue star at the top on a white background", "a small green square to the left of a large purple cross",
    "a yellow diamond above a black circle on a blue background", "a purple star", "a green triangle on the left",
    "a orange circle", "a white cross below a red square",
]


def to_x(batch_u8: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(batch_u8)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@torch.no_grad()
def latent_stats(vqgan, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of h over n training scenes."""
    hs = []
    rng = np.random.default_rng([seed, 10**6])
    for k in range(0, n, 256):
        imgs, _ = shapes.sample_batch(min(256, n - k), SIZE, rng)
        hs.append(vqgan.encode_latent(to_x(imgs)))
    h = torch.cat(hs)
    return h.mean(dim=(0, 2, 3)), h.std(dim=(0, 2, 3))


@torch.no_grad()
def sample_images(model, vqgan, clip, captions: list[str], seed: int, steps: int = 20, guidance: float = 4.0) -> np.ndarray:
    """uint8 (N, 32, 32, 3) images for captions, drawn with the engine's loop."""
    gen = torch.Generator().manual_seed(seed)
    scheduler = make_scheduler("DPM-Solver++", model.scheduler_config)
    scheduler.set_timesteps(steps)
    text = text_states(model, clip, captions)
    null = text_states(model, clip, [""] * len(captions))
    z = torch.randn((len(captions), *model.sample_shape), generator=gen)
    for s in denoise(model, scheduler, z, text, null, guidance, gen):
        z = s.x_next
    x = vqgan.decode(vqgan.quantize(model.denormalize(z))[0])
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


def preview_images(seed: int, n: int = 1024) -> torch.Tensor:
    """Fresh scenes to fit the cheap preview colour map on."""
    return to_x(shapes.sample_batch(n, SIZE, np.random.default_rng([seed, 10**6 + 1]))[0])


def draw_batch(seed: int, n: int, caption_dropout: float, step: int,
               p_optional: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """The scenes and captions of one training step (a share of captions emptied for guidance);
    each optional part of a caption (size, position, background) is stated with p_optional."""
    rng = common.batch_rng(seed, step)
    imgs, captions = shapes.sample_batch(n, SIZE, rng, p_optional=p_optional)
    return imgs, ["" if rng.random() < caption_dropout else c for c in captions]


def min_snr_weight(alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-timestep loss weights (T,) of min-SNR-gamma: they turn the MSE of the network's target
    (eps or v) into min(SNR, gamma) x the MSE of x0. gamma <= 0: plain MSE (all ones)."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    if gamma <= 0:
        return torch.ones_like(snr)
    return snr.clamp(max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)


def regression_target(noise_sched, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: str):
    """What the network regresses: the noise eps, or the velocity v = sqrt(a) eps - sqrt(1 - a) z0."""
    return eps if prediction_type == "epsilon" else noise_sched.get_velocity(z0, eps, t)


def ema_update(ema, model, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def start_denoiser(args, accelerator, run_dir, model):
    """AdamW, an EMA copy, and the run's start (resumed from its checkpoint with its EMA where there is one):
    returns (model, opt, raw model, ema, first step, metrics log), as every denoiser trainer begins."""
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model, opt, raw, start, extra, metrics = common.start(args, accelerator, run_dir, model, opt)
    if "ema" in extra:
        ema.load_state_dict(extra["ema"])
    return model, opt, raw, ema, start, metrics


def optimise_step(accelerator, model, raw, ema, opt, per_sample: torch.Tensor, weight: torch.Tensor, step: int,
                  args, metrics, run_dir) -> None:
    """The end of every denoiser's training step (this one's and the unCLIP pair's): the weighted mean of
    the per-sample losses, backward, clipped step, EMA; the log line and checkpoint when due."""
    loss = (per_sample * weight).mean()
    opt.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema, raw, args.ema if step >= args.ema_start else 0.0)
    if (step + 1) % args.log_every == 0:
        metrics.write(step + 1, loss=loss.item(), mse=per_sample.mean().item(), grad_norm=float(grad_norm),
                      lr=opt.param_groups[0]["lr"], images=(step + 1) * args.batch)
    if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
        common.save_checkpoint(run_dir, step + 1, raw, opt, {"ema": ema.state_dict()})


def train(args) -> None:
    accelerator, run_dir = common.setup(args, "diffusion")
    vqgan = load_vqgan(args.vqgan).eval().requires_grad_(False)
    clip = load_clip(args.clip).eval().requires_grad_(False)
    cfg = DiffusionConfig(block_out_channels=tuple(int(c) for c in args.channels.split(",")),
                          layers_per_block=args.layers, latent_channels=vqgan.config.embed_dim,
                          latent_size=SIZE // vqgan.factor, image_size=SIZE,
                          text_dim=clip.model.config.text_config.hidden_size, text_len=clip.context_length,
                          vqgan=Path(args.vqgan).name, clip=Path(args.clip).name,
                          prediction_type=args.prediction_type, text_inputs=args.text_inputs or ("last",),
                          top_left_first=args.top_left_first)
    if args.init and Path(args.init).is_dir():  # an exported model: its architecture, statistics and weights
        model = from_pretrained(args.init).train()
        if args.text_inputs and args.text_inputs != model.config.text_inputs:  # e.g. add the token embeddings
            model = with_text_inputs(model, args.text_inputs)
        if args.top_left_first:
            model.config.top_left_first = True
        cfg = model.config
        log.info("initial model %s (text inputs %s%s)", args.init, ",".join(cfg.text_inputs),
                 ", top or left object first" if cfg.top_left_first else "")
    else:
        model = LatentDiffusion(cfg)
        model.set_latent_stats(*latent_stats(vqgan, args.stat_images, args.seed))
        if args.init:  # another run's checkpoint.pt (e.g. to switch the prediction target)
            model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=True)["model"])
            log.info("initial weights from %s", args.init)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("UNet with %d parameters; latent mean %s std %s", n_params,
             np.round(cfg.latent_mean, 2).tolist(), np.round(cfg.latent_std, 2).tolist())
    model, opt, raw, ema, start, metrics = start_denoiser(args, accelerator, run_dir, model)
    noise_sched = make_scheduler("DDPM", raw.scheduler_config)
    weight = min_snr_weight(noise_sched.alphas_cumprod, args.snr_gamma, cfg.prediction_type)
    device = accelerator.device
    vqgan.to(device), clip.to(device), ema.to(device)

    batches = common.step_batches(functools.partial(draw_batch, args.seed, args.batch, args.caption_dropout,
                                                     p_optional=args.p_optional),
                                  start, args.steps, args.workers)
    for step, (imgs, captions) in zip(range(start, args.steps), batches):
        raw.train()
        common.set_lr(opt, step, args)
        # 1. fresh scenes -> normalised latents z0; captions -> text states (some dropped)
        with torch.no_grad():
            z0 = raw.normalize(vqgan.encode_latent(to_x(imgs).to(device)))     # (B, 16, 8, 8)
            text_emb = text_states(raw, clip, captions)                     # (B, 32, 128 per text input)
        # 2. noise at uniform timesteps
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        eps = torch.randn(z0.shape, generator=gen).to(device)
        t = torch.randint(0, cfg.num_train_timesteps, (len(z0),), generator=gen)
        z_t = noise_sched.add_noise(z0, eps, t.to(device))
        # 3. predict the noise (eps) or the velocity v = sqrt(a) eps - sqrt(1 - a) z0; min-SNR weighted MSE
        target = regression_target(noise_sched, z0, eps, t.to(device), cfg.prediction_type)
        pred = model(z_t, t.to(device), text_emb)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        optimise_step(accelerator, model, raw, ema, opt, per_sample, weight[t].to(device), step, args, metrics,
                      run_dir)
        if args.sample_every > 0 and ((step + 1) % args.sample_every == 0 or step + 1 == args.steps):
            ema.eval()
            common.place("cpu", ema, vqgan, clip)
            rows = [sample_images(ema, vqgan, clip, GRID_CAPTIONS, seed, args.grid_steps) for seed in range(3)]
            common.save_grid(rows, run_dir / f"samples_{step + 1:06d}.png")
            common.place(device, ema, vqgan, clip)

    ema.eval()
    common.place("cpu", ema, vqgan, clip)
    fit_preview_rgb(ema, vqgan, preview_images(args.seed))
    save_pretrained(ema, args.out)
    out = Path(args.out)
    rows = [sample_images(ema, vqgan, clip, GRID_CAPTIONS, seed, args.grid_steps) for seed in range(4)]
    common.save_grid(rows, out / "samples.png")
    last = ([json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()] or [{}])[-1]
    common.write_record(out, args, {k: last[k] for k in ("loss", "mse") if k in last}, parameters=n_params,
                        images_seen=args.steps * args.batch, grid_captions=GRID_CAPTIONS,
                        init=args.init)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    common.add_caption_args(p)
    p.set_defaults(lr=5e-4, batch=64)
    p.add_argument("--vqgan", default="presets/weights/shapes-vqgan")
    p.add_argument("--clip", default="presets/weights/shapes-clip")
    p.add_argument("--channels", default="64,128", help="UNet block widths, one per level")
    p.add_argument("--layers", type=int, default=1, help="ResNet+attention layers per UNet block")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--prediction-type", default="v_prediction", choices=["epsilon", "v_prediction"],
                   help="v keeps x0 estimates sane at the noisiest steps, where eps-prediction amplifies errors")
    p.add_argument("--init", help="a checkpoint.pt whose model weights to start from, or an exported model folder "
                                  "(its architecture and latent statistics too)")
    p.add_argument("--text-inputs", type=parse_text_inputs, metavar="last[,embed]",
                   help="CLIP text states the UNet reads, comma-separated: last (the last layer; the default), embed "
                        "(the token embeddings, where shape words still differ). With --init of an exported model: "
                        "its own unless given; new ones are added with zero weights")
    p.add_argument("--top-left-first", action="store_true",
                   help="train (and so sample) on captions that name the top or left object first: 'A below B' "
                        "is read as 'B above A' (shapes.top_left_first)")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR weighting; 0 for plain MSE")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--ema-start", type=int, default=200, help="copy the weights until this step, then average")
    p.add_argument("--stat-images", type=int, default=2048)
    p.add_argument("--grid-steps", type=int, default=20, help="DPM-Solver++ steps for the sample grids")
    p.add_argument("--fit-preview-only", action="store_true",
                   help="only fit the cheap preview colour map of the folder given by --out, and save it")
    args = common.parse(p, "lab.train.diffusion", argv)
    if args.fit_preview_only:
        fit_preview(args)
        return
    train(args)


def fit_preview(args) -> None:
    torch.set_num_threads(args.threads)
    model, vqgan = from_pretrained(args.out), load_vqgan(args.vqgan).eval()
    fit_preview_rgb(model, vqgan, preview_images(args.seed))
    save_pretrained(model, args.out)


if __name__ == "__main__":
    main()
