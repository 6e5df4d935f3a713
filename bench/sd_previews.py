"""Stable Diffusion previews' cost against sampling, at the real architectures' sizes.

    .venv/bin/python bench/sd_previews.py --side 256 --steps 8 --threads 2

No hub here, so the parts are randomly initialised at exactly Stable Diffusion 1.5's configs
(UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M) and TAESD's (2.4M): the pictures are noise,
but every pass costs what the real one does. The same seeded request runs, in one process, with
previews off, on every step, and auto (-1: under 5 % of the run), guidance on (two UNet passes a step).
It prints each run's seconds per step and the previews' share of the run (median of --rounds),
and the cost of one preview of each kind against one step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipelines import diffusion as engine
from pipelines.events import AUTO, Step


def sd15_sized(seed: int = 0):
    """Stable Diffusion 1.5's architecture with random weights, as the engine's model, and TAESD's."""
    from diffusers import AutoencoderKL, AutoencoderTiny, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lab.standin_builders.common import tiny_clip_tokenizer
    from pipelines.models.stable_diffusion import StableDiffusion, TinyDecoder

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    sched = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                          steps_offset=1, set_alpha_to_one=False)
    model = StableDiffusion(unet, vae, text, tokenizer, dict(sched.config)).eval().requires_grad_(False)
    model.fit_preview_rgb(pictures=4)
    return model, TinyDecoder(AutoencoderTiny()).eval().requires_grad_(False)


def timed(model, taesd, every: int, side: int, steps: int):
    req = engine.DiffusionRequest(prompt="a lighthouse at dusk", preset="sd-v1-5", steps=steps, guidance=7.5,
                                  width=side, height=side, preview_every=every, seed=1)
    t0 = time.perf_counter()
    events = list(engine.sample(req, model, None, None, torch.device("cpu"), taesd=taesd))
    seconds = time.perf_counter() - t0
    shown = sum(1 for e in events if isinstance(e, Step) and e.previews)
    return seconds, shown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, taesd = sd15_sized()
    z = torch.randn(1, 4, a.side // 8, a.side // 8)
    text = model.encode_text([""] * 2)
    with torch.no_grad():
        one = {}
        for name, fn in [("UNet step (guided, 2 passes)", lambda: model(torch.cat([z, z]), torch.tensor([500, 500]), text)),
                         ("x_t preview (latent-to-RGB map)", lambda: model.preview_rgb(z)),
                         ("x0 preview (TAESD)", lambda: taesd(z)),
                         ("full VAE decode (the result)", lambda: model.decode(z))]:
            fn()
            t0 = time.perf_counter()
            fn()
            one[name] = time.perf_counter() - t0
    step = one["UNet step (guided, 2 passes)"]
    print(f"Stable Diffusion 1.5 sizes, {a.side}x{a.side}, {torch.get_num_threads()} CPU threads")
    for name, s in one.items():
        print(f"  {name:34s} {s * 1000:9.1f} ms  = {s / step:6.1%} of a step")
    runs = {"off": 0, "every step": 1, "auto (-1)": AUTO}
    times = {k: [] for k in runs}
    shown = {}
    for _ in range(a.rounds):
        for k, every in runs.items():
            s, shown[k] = timed(model, taesd, every, a.side, a.steps)
            times[k].append(s)
    base = statistics.median(times["off"])
    print(f"\n{a.steps} steps, median of {a.rounds} rounds each, run side by side:")
    for k in runs:
        m = statistics.median(times[k])
        print(f"  previews {k:11s} {m:7.2f} s  {shown[k]:3d} previews  cost {(m - base) / m:6.1%} of the run")


if __name__ == "__main__":
    main()
