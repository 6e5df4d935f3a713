"""VQGAN+CLIP speed: Atelier's loop against a plain reference loop, side by side in one run.

    .venv/bin/python bench/vqgan_clip_bench.py            # both cases
    .venv/bin/python bench/vqgan_clip_bench.py --case shapes --iters 60

The reference loop is written straight from shared/reference/vqgan_clip.md (the
nerdyrodent/VQGAN-CLIP `generate.py` loop) over the same models: one-hot matmul
quantisation, the "latest" cutouts pooled once per cutout, a PNG written to disk every
iteration for the video (`-vid`), a check-in every `display_freq` iterations that
decodes z again, and ffmpeg (libx264, -preset veryslow) over the PNGs at the end; its
augmentations are kornia's modules, one resampling per code.
Atelier's loop is `pipelines.vqgan_clip.optimise` with previews every N iterations
fed to the in-memory H.264 writer; its CLIP pass (`pipelines.models.clip._image_features`)
runs the vision tower's last layer for the class token only, fuses each layer's query, key
and value projections and turns quick-GELU into a fused SiLU, where the reference runs
transformers' `get_image_features` on every token; its Af/Pe augmentations are one
resampling (`pipelines.vqgan_clip_cutouts.WarpAugment`).

Cases:
  shapes    the built-in shapes preset (32 px, the committed weights)
  imagenet  256x256 with random-init models of the real architectures: the ImageNet
            f16 16384 VQGAN and CLIP ViT-B/32 (random weights are fine for timing)
Each case runs in its own process so its peak resident memory is its own.
Prints iterations/s of both loops, their ratio, the preview+video overhead (the time the run
spends making previews and feeding them to the video writer, timed inside the run: the
difference of two whole runs was lost in this machine's +-10 % noise) and peak RSS, and
Atelier's loop again at float32: its default precision "auto" uses bfloat16 autocast for the
decoder and CLIP passes on a CPU with native bfloat16, where a pass's images hold 64x64 pixels or
more together (at the shapes preset: CLIP's 16 cutouts of 32 px, not the 32 px decoder), with
the attention as explicit products around a float32 softmax (`pipelines.models.clip._attention`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# The reference loop, from the notes
# ---------------------------------------------------------------------------


def reference_loop(vqgan, clip, prompt: str, W: int, H: int, iters: int, cutn: int, augments, display_freq: int,
                   out_dir: Path) -> float:
    import imageio.v2 as imageio
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pipelines.media import ffmpeg_exe
    from pipelines.vqgan_clip_cutouts import augment_from_code
    from pipelines.vqgan_clip_ops import PromptLoss, clamp_with_grad, replace_grad

    def vector_quantize(x, codebook):  # §5.2a: distances, argmin, one-hot matmul, straight-through
        d = x.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * x @ codebook.T
        indices = d.argmin(-1)
        x_q = F.one_hot(indices, codebook.shape[0]).to(d.dtype) @ codebook
        return replace_grad(x_q, x)

    codebook = vqgan.codebook.detach()
    z_min, z_max = codebook.min(0).values[None, :, None, None], codebook.max(0).values[None, :, None, None]

    def synth(z):
        z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        return clamp_with_grad(vqgan.decode(z_q).add(1).div(2), 0, 1)

    f = vqgan.factor
    toks_y, toks_x = H // f, W // f
    one_hot = F.one_hot(torch.randint(codebook.shape[0], [toks_y * toks_x]), codebook.shape[0]).float()
    z = (one_hot @ codebook).view(1, toks_y, toks_x, -1).permute(0, 3, 1, 2).clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    size = (clip.image_size, clip.image_size)

    def pooled(x):
        return (F.adaptive_avg_pool2d(x, size) + F.adaptive_max_pool2d(x, size)) / 2

    augment = torch.nn.Sequential(*[augment_from_code(c, clip.image_size, "latest") for c in augments])  # kornia's
    with torch.no_grad():
        prompts = [PromptLoss(clip.encode_text([prompt]).float(), 1.0, float("-inf"))]
    steps = out_dir / "steps"
    steps.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    for i in range(iters):
        opt.zero_grad(set_to_none=True)
        out = synth(z)
        # "latest": every cutout is the whole image pooled, computed once per cutout, then augmented
        cuts = torch.cat([pooled(out) for _ in range(cutn)])
        cuts = augment(cuts) if augments else cuts
        cuts = cuts + torch.rand(cutn, 1, 1, 1) * 0.1 * torch.randn_like(cuts)
        # perceptor.encode_image(normalize(cuts)): the whole vision tower through transformers
        pixels = ((cuts - clip.mean) / clip.std).to(clip.model.dtype)
        iii = clip.model.get_image_features(pixel_values=pixels).pooler_output.float()
        loss = sum(p(iii) for p in prompts)
        frame = (out[0].detach().clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        imageio.imwrite(steps / f"{i}.png", frame)  # -vid: one PNG per iteration
        if i % display_freq == 0:  # check-in: decode again and save the current image
            with torch.inference_mode():
                img = synth(z.detach())
            imageio.imwrite(out_dir / "output.png", (img[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy())
        loss.backward()
        opt.step()
        with torch.inference_mode():
            z.copy_(z.maximum(z_min).minimum(z_max))
    # the video: PNGs read back and piped to ffmpeg
    fps = min(max(iters / 10, 10), 60)
    cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "image2pipe", "-vcodec", "png", "-r", str(fps), "-i", "-",
           "-vcodec", "libx264", "-r", str(fps), "-pix_fmt", "yuv420p", "-crf", "17", "-preset", "veryslow",
           str(out_dir / "output.mp4")]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(1, iters):
        p.stdin.write((steps / f"{i}.png").read_bytes())
    p.stdin.close()
    p.wait()
    return iters / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# Atelier's loop
# ---------------------------------------------------------------------------


def atelier_loop(vqgan, clip, prompt, W, H, iters, cutn, augments, preview_every, out_dir: Path,
                 precision: str = "auto") -> tuple[float, float]:
    """Iterations/s, and the share of the run's time spent making previews and writing the video."""
    import torch

    from pipelines import media
    from pipelines.events import Step
    from pipelines.vqgan_clip import VQGANCLIPRequest, optimise

    req = VQGANCLIPRequest(prompt=prompt, width=W, height=H, iterations=iters, cutn=cutn, augments=tuple(augments),
                           preview_every=preview_every, precision=precision)
    spent = [0.0]
    to_pil = media.to_pil

    def timed(fn):
        def inner(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t
        return inner

    media.to_pil = timed(to_pil)   # the engine makes each preview with it
    try:
        t0 = time.perf_counter()
        writer = media.VideoWriter(out_dir / "atelier.mp4", fps=10) if preview_every else None
        append = timed(writer.append) if writer else None
        for ev in optimise(req, vqgan, clip, torch.device("cpu")):
            if writer and isinstance(ev, Step) and "current" in ev.previews:
                append(ev.previews["current"])
        if writer:
            timed(writer.close)()
        total = time.perf_counter() - t0
    finally:
        media.to_pil = to_pil
    return iters / total, spent[0] / total


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


def load_models(case: str):
    import torch

    if case == "shapes":
        from pipelines.presets import load_preset
        from pipelines.registry import Registry

        reg = Registry(device="cpu")
        pre = load_preset("shapes")
        return reg.get(pre.components["vqgan"]), reg.get(pre.components["clip"]), 32
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from pipelines.models.clip import CLIP
    from pipelines.models.vqgan import VQGAN, VQGANConfig
    from lab.train.clip import train_tokenizer

    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig(n_embed=16384)).eval().requires_grad_(False)  # ImageNet f16 16384 architecture
    clip_model = CLIPModel(CLIPConfig()).eval().requires_grad_(False)        # defaults are ViT-B/32
    tok = train_tokenizer(n_captions=500)
    assert isinstance(tok, CLIPTokenizer)
    return vqgan, CLIP(clip_model, tok), 256


def run_case(case: str, iters: int, cutn: int, threads: int, repeats: int = 2) -> dict:
    import torch

    from pipelines.registry import compute_dtype, native_bfloat16

    torch.set_num_threads(threads)
    vqgan, clip, side = load_models(case)
    augments = ("Af", "Pe")
    prompt = "a red circle on a blue background"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # warm-up, then alternate so both loops see the same machine load
        atelier_loop(vqgan, clip, prompt, side, side, 2, cutn, augments, 0, tmp)
        ref, ours, fp32 = [], [], []
        for _ in range(repeats):
            ref.append(reference_loop(vqgan, clip, prompt, side, side, iters, cutn, augments, 50, tmp / "ref"))
            ours.append(atelier_loop(vqgan, clip, prompt, side, side, iters, cutn, augments, 10, tmp))
            fp32.append(atelier_loop(vqgan, clip, prompt, side, side, iters, cutn, augments, 10, tmp, "float32")[0])
    r, f = max(ref), max(fp32)
    o, share = max(ours)   # the fastest run, and its preview+video share
    cpu = torch.device("cpu")
    used = {"decoder": str(compute_dtype(cpu, "auto", side * side)).removeprefix("torch."),
            "clip": str(compute_dtype(cpu, "auto", clip.image_size ** 2 * cutn)).removeprefix("torch.")}
    return {"case": case, "size": f"{side}x{side}", "iters": iters, "cutn": cutn, "threads": threads,
            "native_bf16": native_bfloat16(cpu), "auto_precision": used,
            "reference_it_s": round(r, 3), "atelier_it_s": round(o, 3), "speedup": round(o / r, 2),
            "atelier_float32_it_s": round(f, 3), "speedup_float32": round(f / r, 2),
            "preview_video_overhead_pct": round(100 * share, 2),
            "runs_it_s": {"reference": [round(x, 2) for x in ref], "atelier": [round(x[0], 2) for x in ours],
                          "atelier_float32": [round(x, 2) for x in fp32]},
            "round_ratios": [round(o_[0] / r_, 2) for o_, r_ in zip(ours, ref)],   # each round's own ratio
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=["shapes", "imagenet", "all"], default="all")
    ap.add_argument("--iters", type=int, default=None, help="default: 150 for shapes, 3 for imagenet")
    ap.add_argument("--cutn", type=int, default=None, help="default: 16 for shapes, 8 for imagenet")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("ATELIER_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=3, help="runs of each loop, alternating; the fastest counts")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        iters = a.iters or (150 if a.case == "shapes" else 3)
        cutn = a.cutn or (16 if a.case == "shapes" else 8)
        print(json.dumps(run_case(a.case, iters, cutn, a.threads, a.repeats)))
        return
    cases = ["shapes", "imagenet"] if a.case == "all" else [a.case]
    rows = []
    for case in cases:
        cmd = [sys.executable, __file__, "--child", "--case", case, "--threads", str(a.threads),
               "--repeats", str(a.repeats)]
        cmd += ["--iters", str(a.iters)] if a.iters else []
        cmd += ["--cutn", str(a.cutn)] if a.cutn else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| case | size | precision (auto) | reference it/s | Atelier it/s | ratio | Atelier float32 it/s | ratio "
          "| preview+video overhead | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        prec = "decoder {decoder}, CLIP {clip}".format(**r["auto_precision"])
        print(f"| {r['case']} | {r['size']} | {prec} | {r['reference_it_s']} | {r['atelier_it_s']} | {r['speedup']}x | "
              f"{r['atelier_float32_it_s']} | {r['speedup_float32']}x | {r['preview_video_overhead_pct']} % | "
              f"{r['peak_rss_mb']} MB |")


if __name__ == "__main__":
    main()
