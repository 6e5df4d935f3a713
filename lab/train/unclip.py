"""Train the built-in unCLIP pair: the diffusion prior, then the decoder (they train independently).

    python -m lab.train.unclip prior   --out presets/weights/shapes-unclip-prior   --steps 4000
    python -m lab.train.unclip decoder --out presets/weights/shapes-unclip-decoder --steps 1800 --cache 16384

Both draw fresh scenes from the shapes stream each step (held-out colour+shape pairs
excluded) and read them with a frozen CLIP (--clip; the decoder may read its text token
states from another, --text-clip, such as the one the diffusion UNet it starts from read).

prior:   1. captions -> packed CLIP conditioning (token states + text embedding); 10 % of
            captions become the empty caption, which guidance subtracts at sampling time;
         2. renders -> unit-norm CLIP image embeddings e, scaled to x0 = sqrt(D) e;
         3. noise x0 at a uniform timestep of the cosine schedule and regress x0 itself (MSE),
            as the DALL-E 2 paper's prior does.
         Every --sample-every steps it samples embeddings for 256 fresh captions with the
         app's loop and logs their cosine to the true image embeddings and R@1 among them.
decoder: 1. renders -> the VQGAN's normalised latents z0 (statistics measured first) and
            CLIP image embeddings e; 10 % of e become zeros (the unconditional input);
            with --text-cond the caption's CLIP token states come too (the paper's optional
            text input), replaced by the empty caption's for --text-dropout of the scenes
            and for every unconditional one, so the decoder learns to paint from e alone;
         2. DDPM's objective with min-SNR weights, as `lab/train/diffusion.py`
            (noise, or with --prediction-type v_prediction the velocity);
         3. sample grids: fresh renders on the top row, then decodes of their embeddings.
         --init-diffusion DIR starts from the diffusion engine's trained text-to-image UNet
         (same widths, prediction type and latent statistics; the embedding's new inputs start
         at zero), so the decoder begins as a working painter and only learns the embedding.
         With --cache N it trains on N scenes encoded once (kept in the run dir) instead of
         fresh ones: on a shared CPU the VQGAN and CLIP encoders cost as much as the UNet's step.
An exponential moving average of the weights is kept for both and exported.
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
import torch.nn.functional as F

import shapes
from pipelines.diffusion_sampling import denoise, make_scheduler
from pipelines.models.clip import load_clip
from pipelines.models.diffusion import parse_text_inputs, text_states, with_text_inputs
from pipelines.models.diffusion import from_pretrained as load_diffusion
from pipelines.models.unclip import (DecoderConfig, DiffusionPrior, PriorConfig, UnCLIPDecoder, encode_prompt,
                                     decoder_cond, image_embedding, pack_cond, sampling_denoiser,
                                     save_pretrained)
from pipelines.models.unclip import from_pretrained as load_unclip
from pipelines.models.vqgan_files import from_pretrained as load_vqgan
from lab.train import common
from lab.train.diffusion import (SIZE, latent_stats, min_snr_weight, optimise_step, regression_target,
                                 start_denoiser, to_x)

log = logging.getLogger("atelier.train.unclip")


# ---------------------------------------------------------------------------
# Sampling with the app's loop (grids and evaluation while training)
# ---------------------------------------------------------------------------


@torch.no_grad()
def sample_prior(prior, clip, captions: list[str], seed: int, steps: int = 16, guidance: float = 2.0) -> torch.Tensor:
    """Unit-norm image embeddings (N, D) for captions, drawn with DDIM like the engine's default."""
    gen = torch.Generator().manual_seed(seed)
    scheduler = make_scheduler("DDIM", prior.scheduler_config)
    scheduler.set_timesteps(steps)
    cond = encode_prompt(clip, captions, prior.config.text_len)
    null = encode_prompt(clip, [""] * len(captions), prior.config.text_len)
    x = torch.randn((len(captions), *prior.sample_shape), generator=gen)
    for s in denoise(prior, scheduler, x, cond, null, guidance, gen):
        x = s.x_next
    return F.normalize(x, dim=-1)


@torch.no_grad()
@torch.no_grad()
def sample_decoder(decoder, vqgan, text_clip, image_emb: torch.Tensor, seed: int, steps: int = 20,
                   guidance: float = 3.0) -> np.ndarray:
    """uint8 (N, 32, 32, 3) pictures painted from unit-norm image embeddings (N, D), no text
    (text_cond decoders read the empty caption's token states from text_clip)."""
    gen = torch.Generator().manual_seed(seed)
    scheduler = make_scheduler("DPM-Solver++", decoder.scheduler_config)
    scheduler.set_timesteps(steps)
    z = torch.randn((len(image_emb), *decoder.sample_shape), generator=gen)
    cond = decoder_cond(decoder, text_clip, image_emb)
    null = decoder_cond(decoder, text_clip, torch.zeros_like(image_emb))
    for s in denoise(sampling_denoiser(decoder), scheduler, z, cond, null, guidance, gen):
        z = s.x_next
    x = vqgan.decode(vqgan.quantize(decoder.denormalize(z))[0])
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def prior_metrics(prior, clip, n: int, seed: int, steps: int = 16) -> dict:
    """Sampled embeddings against the true image embeddings of n fresh scenes: mean cosine, R@1
    among the n, and the same cosine for the text embedding itself (what no prior would give)."""
    imgs, captions = shapes.sample_batch(n, SIZE, np.random.default_rng([seed, 7, 7]))
    e_img = image_embedding(clip, to_x(imgs))
    e_pred = sample_prior(prior, clip, captions, seed)
    e_txt = F.normalize(clip.encode_text(captions), dim=-1)
    sim = e_pred @ e_img.t()
    return {"cos": sim.diag().mean().item(), "r_at_1": (sim.argmax(1) == torch.arange(n)).float().mean().item(),
            "cos_text": (e_txt * e_img).sum(-1).mean().item()}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def new_model(args, clip, vqgan, text_clip) -> DiffusionPrior | UnCLIPDecoder:
    """A prior or decoder of the sizes the options give (the decoder maybe from the diffusion UNet);
    the decoder paints from clip's image embeddings and reads text_clip's token states."""
    emb_dim = clip.embed_dim
    if args.part == "prior":
        return DiffusionPrior(PriorConfig(embed_dim=emb_dim, text_dim=clip.model.config.text_config.hidden_size,
                                          text_len=clip.context_length, n_layer=args.layers, n_head=args.heads,
                                          n_embd=args.width, clip=Path(args.clip).name))
    base = load_diffusion(args.init_diffusion) if args.init_diffusion else None
    top_left_first = False
    if base is not None:   # the text-to-image model's architecture, schedule, text reading and latent statistics
        args.channels = ",".join(str(c) for c in base.config.block_out_channels)
        args.layers, args.prediction_type = base.config.layers_per_block, base.config.prediction_type
        # its cross-attention's width (the text states it reads) and its caption form
        args.text_inputs = args.text_inputs or base.config.text_inputs
        top_left_first = base.config.top_left_first
    model = UnCLIPDecoder(DecoderConfig(
        block_out_channels=tuple(int(c) for c in args.channels.split(",")), layers_per_block=args.layers,
        latent_channels=vqgan.config.embed_dim, latent_size=SIZE // vqgan.factor, image_size=SIZE,
        text_dim=text_clip.model.config.text_config.hidden_size, text_len=text_clip.context_length,
        vqgan=Path(args.vqgan).name, clip=Path(args.text_clip or args.clip).name,
        image_clip=Path(args.clip).name if args.text_clip else "", image_dim=emb_dim, image_tokens=args.image_tokens,
        prediction_type=args.prediction_type, text_cond=args.text_cond, text_inputs=args.text_inputs or ("last",),
        top_left_first=top_left_first))
    if base is not None:
        if tuple(model.config.text_inputs) != tuple(base.config.text_inputs):
            base = with_text_inputs(base, model.config.text_inputs)
        model.init_from_diffusion(base)
        log.info("decoder UNet initialised from %s", args.init_diffusion)
    else:
        model.set_latent_stats(*latent_stats(vqgan, args.stat_images, args.seed))
    return model


def train(args) -> None:
    accelerator, run_dir = common.setup(args, f"unclip_{args.part}")
    clip = load_clip(args.clip).eval().requires_grad_(False)
    if args.text_clip and not (args.part == "decoder" and args.text_cond):
        raise SystemExit("--text-clip is for the decoder with --text-cond")
    text_clip = load_clip(args.text_clip).eval().requires_grad_(False) if args.text_clip else clip
    vqgan = load_vqgan(args.vqgan).eval().requires_grad_(False) if args.part == "decoder" else None
    if args.part == "decoder" and args.text_cond and args.cache:
        raise SystemExit("--text-cond needs the captions of fresh scenes: drop --cache")
    if args.init:   # an exported prior or decoder: its architecture, statistics and weights
        model = load_unclip(args.init, kind=args.part).train()
        if args.part == "decoder" and args.text_inputs and args.text_inputs != model.config.text_inputs:
            model = with_text_inputs(model, args.text_inputs)     # new text states, read through zero weights at first
        # the CLIPs it now learns from (another --clip: a new embedding space, read through the same layers)
        if args.part == "prior":
            model.config.clip = Path(args.clip).name
        else:
            model.config.clip = Path(args.text_clip or args.clip).name
            model.config.image_clip = Path(args.clip).name if args.text_clip else ""
        log.info("initial model %s", args.init)
    else:
        model = new_model(args, clip, vqgan, text_clip)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("unCLIP %s with %d parameters", args.part, n_params)
    model, opt, raw, ema, start, metrics = start_denoiser(args, accelerator, run_dir, model)
    noise_sched = make_scheduler("DDPM", raw.scheduler_config)
    kind = raw.config.prediction_type if args.part == "decoder" else "sample"
    weight = min_snr_weight(noise_sched.alphas_cumprod, args.snr_gamma if args.part == "decoder" else 0, kind)
    device = accelerator.device
    clip.to(device), text_clip.to(device), ema.to(device)
    if vqgan is not None:
        vqgan.to(device)
    T = raw.config.num_train_timesteps
    cache = decoder_cache(raw, vqgan, clip, args, run_dir) if args.part == "decoder" and args.cache else None

    batches = common.step_batches(functools.partial(draw_batch, args.seed, args.batch, cache is None, args.p_optional),
                                  start, args.steps, args.workers)
    began, done = time.monotonic(), start
    for step, (imgs, captions, rng) in zip(range(start, args.steps), batches):
        raw.train()
        common.set_lr(opt, step, args)
        drop = torch.from_numpy(rng.random(args.batch) < args.cond_dropout)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        # 1. the clean sample and its conditioning
        with torch.no_grad():
            if cache is not None:                                                # scenes encoded once
                idx = torch.from_numpy(rng.choice(len(cache["z0"]), args.batch, replace=False))
                x0, e_img = cache["z0"][idx].to(device), cache["e"][idx].to(device)
            else:
                x = to_x(imgs).to(device)
                e_img = image_embedding(clip, x)                                   # (B, D)
            if args.part == "prior":
                captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
                cond = encode_prompt(clip, captions, raw.config.text_len)        # (B, T + D/W, W)
                x0 = e_img * raw.scale                                           # (B, D)
            else:
                cond = e_img.masked_fill(drop[:, None].to(device), 0.0)          # zeros: unconditional
                if raw.config.text_cond:                                         # + the caption, or the empty one
                    no_text = drop.numpy() | (rng.random(args.batch) < args.text_dropout)
                    cond = pack_cond(cond, text_states(raw, text_clip, ["" if d else c for c, d in zip(captions, no_text)]))
                if cache is None:
                    x0 = raw.normalize(vqgan.encode_latent(x))                   # (B, 16, 8, 8)
        # 2. noise at uniform timesteps
        eps = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, T, (len(x0),), generator=gen)
        x_t = noise_sched.add_noise(x0, eps, t.to(device))
        # 3. the prior regresses x0, the decoder eps or v (min-SNR weighted)
        pred = model(x_t, t.to(device), cond)
        target = x0 if args.part == "prior" else regression_target(noise_sched, x0, eps, t.to(device), kind)
        per_sample = F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)
        optimise_step(accelerator, model, raw, ema, opt, per_sample, weight[t].to(device), step, args, metrics,
                      run_dir)
        if args.sample_every > 0 and ((step + 1) % args.sample_every == 0 or step + 1 == args.steps):
            ema.eval()
            common.place("cpu", ema, vqgan, clip, text_clip)
            if args.part == "prior":
                metrics.write(step + 1, **{f"eval_{k}": v for k, v in prior_metrics(ema, clip, max(2, args.eval_scenes // 4), args.seed).items()})
            else:
                write_decoder_grid(ema, vqgan, clip, text_clip, run_dir / f"samples_{step + 1:06d}.png", args)
            common.place(device, ema, vqgan, clip, text_clip)
        done = step + 1
        if common.out_of_time(args, began):
            log.info("--minutes %g reached: stopping after step %d of %d", args.minutes, done, args.steps)
            break

    ema.eval()
    common.place("cpu", ema, vqgan, clip, text_clip)
    save_pretrained(ema, args.out)
    out = Path(args.out)
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    final = {k: v for rec in lines for k, v in rec.items() if k in ("loss", "mse")}
    if args.part == "prior":
        final.update(prior_metrics(ema, clip, args.eval_scenes, args.seed + 1))
    else:
        write_decoder_grid(ema, vqgan, clip, text_clip, out / "samples.png", args)
    common.write_record(out, args, final, parameters=n_params, images_seen=done * args.batch, steps_done=done,
                        distinct_scenes=args.cache or done * args.batch,
                        held_out_excluded=sorted(" ".join(p) for p in shapes.HELD_OUT))


def draw_batch(seed: int, n: int, fresh: bool, p_optional: float, step: int):
    """One step's scenes and captions (None with a cache; each optional caption part stated with
    p_optional), and the step's generator, which goes on to draw the dropped conditions."""
    rng = common.batch_rng(seed, step)
    imgs, captions = shapes.sample_batch(n, SIZE, rng, p_optional=p_optional) if fresh else (None, None)
    return imgs, captions, rng


@torch.no_grad()
def decoder_cache(decoder, vqgan, clip, args, run_dir: Path) -> dict:
    """--cache scenes encoded once (normalised latents z0 and image embeddings e), kept in the run dir so
    a resumed run reuses them: on a shared CPU the encoders cost as much as the UNet's training step."""
    path = run_dir / f"cache_{args.cache}_{args.seed}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    rng = np.random.default_rng([args.seed, 5, 5])
    z0, e = [], []
    for k in range(0, args.cache, 256):
        imgs, _ = shapes.sample_batch(min(256, args.cache - k), SIZE, rng)
        x = to_x(imgs)
        z0.append(decoder.normalize(vqgan.encode_latent(x)))
        e.append(image_embedding(clip, x))
    cache = {"z0": torch.cat(z0), "e": torch.cat(e)}
    torch.save(cache, path)
    log.info("cached %d scenes in %s", args.cache, path)
    return cache


def write_decoder_grid(decoder, vqgan, clip, text_clip, path: Path, args, n: int = 8) -> None:
    imgs, _ = shapes.sample_batch(n, SIZE, np.random.default_rng([args.seed, 8, 8]))
    e = image_embedding(clip, to_x(imgs))
    rows = [imgs] + [sample_decoder(decoder, vqgan, text_clip, e, seed, args.grid_steps) for seed in range(2)]
    common.save_grid(rows, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("part", choices=["prior", "decoder"])
    common.add_common_args(p)
    common.add_minutes_arg(p)
    common.add_caption_args(p)
    p.set_defaults(lr=5e-4, batch=64)
    p.add_argument("--vqgan", default="presets/weights/shapes-vqgan")
    p.add_argument("--clip", default="presets/weights/shapes-clip",
                   help="the CLIP whose embeddings the prior maps between and the decoder paints from")
    p.add_argument("--text-clip", default=None,
                   help="decoder with --text-cond: the CLIP whose text token states it reads (default: --clip), "
                        "e.g. the diffusion UNet's for --init-diffusion")
    p.add_argument("--layers", type=int, default=None, help="prior: transformer blocks (4); decoder: layers per UNet block (1)")
    p.add_argument("--width", type=int, default=128, help="prior: transformer width")
    p.add_argument("--heads", type=int, default=4, help="prior: attention heads")
    p.add_argument("--channels", default="64,128", help="decoder: UNet block widths, one per level")
    p.add_argument("--image-tokens", type=int, default=4, help="decoder: cross-attention tokens from the embedding")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"], help="decoder's target")
    p.add_argument("--text-cond", action="store_true", help="decoder: also read the caption's CLIP token states")
    p.add_argument("--text-inputs", type=parse_text_inputs, default=None, metavar="last[,embed]",
                   help="decoder with --text-cond: CLIP text states it reads, comma-separated (last, embed; see "
                        "lab.train.diffusion); with --init, new ones are added with zero weights")
    p.add_argument("--text-dropout", type=float, default=0.5,
                   help="decoder with --text-cond: share of scenes shown without their caption")
    p.add_argument("--init", default=None, help="an exported prior or decoder folder to start from (its "
                   "architecture and weights; the size options are then ignored)")
    p.add_argument("--init-diffusion", default=None,
                   help="decoder: start from this diffusion-engine folder's UNet (sets widths, layers, target)")
    p.add_argument("--cond-dropout", type=float, default=0.1, help="share of empty captions / zeroed embeddings")
    p.add_argument("--snr-gamma", type=float, default=5.0, help="decoder: min-SNR weighting; 0 for plain MSE")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--ema-start", type=int, default=200, help="copy the weights until this step, then average")
    p.add_argument("--stat-images", type=int, default=2048)
    p.add_argument("--eval-scenes", type=int, default=512, help="prior: fresh scenes for the final cosine and R@1 "
                   "(a quarter of them while training)")
    p.add_argument("--cache", type=int, default=0, help="decoder: train on this many scenes encoded once "
                   "(0: fresh scenes every step)")
    p.add_argument("--grid-steps", type=int, default=20, help="DPM-Solver++ steps for the decoder's grids")
    args = common.parse(p, "lab.train.unclip", argv)
    if args.layers is None:
        args.layers = 4 if args.part == "prior" else 1
    train(args)


if __name__ == "__main__":
    main()
