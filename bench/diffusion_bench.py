"""Diffusion speed and accuracy: Atelier's fast path against the classic plain DDPM loop, side by side.

    .venv/bin/python bench/diffusion_bench.py                       # 12 captions, both loops
    .venv/bin/python bench/diffusion_bench.py --captions 24 --plain-steps 1000

Both run the committed shapes model on the same captions (the first of each category
of the evaluation set, in turn) and seeds:
  plain   the loop of the classic diffusers tutorial, written out here: DDPMScheduler,
          ancestral sampling through every one of --plain-steps steps, one image at a
          time, classifier-free guidance as two separate model calls per step;
  fast    `pipelines.diffusion.sample`: DPM-Solver++ at 25 and at 10 steps, the guided
          pair in one batch, --batch images at a time, previews off;
  previews  the fast path at 25 steps with x_t/x0 previews every step and at the
          preset's preview_every, against previews off (the cost of watching).
Every image is scored by the evaluation judge (`lab.eval.judge`). Prints seconds
per image, the speed-up over the plain loop, `correct` of each, and the process's
peak resident memory with the models loaded and after the loops. The loops take turns
caption by caption, and each preview setting keeps its median of 7 rounds.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def captions(n: int) -> list[str]:
    from lab.eval import evalset

    cats = list(evalset.load().values())
    return [cats[i % len(cats)][i // len(cats)]["caption"] for i in range(n)]


def plain_loop(model, vqgan, clip, caption: str, steps: int, guidance: float, seed: int):
    """The classic tutorial loop: every timestep, two model calls, one image."""
    import torch
    from diffusers import DDPMScheduler

    from pipelines.models.diffusion import text_states

    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cond = text_states(model, clip, [caption])
        uncond = text_states(model, clip, [""])
        latents = torch.randn((1, *model.sample_shape), generator=gen)
        for t in scheduler.timesteps:
            tt = torch.tensor([int(t)])
            eps_u = model(latents, tt, uncond)
            eps_c = model(latents, tt, cond)
            eps = eps_u + guidance * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents, generator=gen).prev_sample
        x = vqgan.decode(vqgan.quantize(model.denormalize(latents))[0]).clamp(-1, 1)
    from pipelines.media import to_pil

    return to_pil(x[0])


def fast_path(model, vqgan, clip, caps: list[str], steps: int, guidance: float, seed: int, batch: int,
              preview_every: int = 0):
    """pipelines.diffusion.sample, `batch` samples per caption."""
    from pipelines.diffusion import DiffusionRequest, sample
    from pipelines.events import generate

    out = []
    for k, c in enumerate(caps):
        req = DiffusionRequest(prompt=c, steps=steps, guidance=guidance, seed=seed + k, batch=batch,
                               preview_every=preview_every)
        out.append(generate(sample(req, model, vqgan, clip, "cpu")).images)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--captions", type=int, default=12)
    p.add_argument("--plain-steps", type=int, default=100, choices=[100, 1000])
    p.add_argument("--batch", type=int, default=4, help="fast path: samples per caption (one batch)")
    p.add_argument("--guidance", type=float, default=None, help="default: the preset's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)

    import torch

    from pipelines.diffusion import ENGINE_SPEC
    from lab.eval.judge import judge
    from pipelines.presets import load_preset
    from pipelines.registry import Registry

    torch.set_num_threads(a.threads)
    preset = load_preset("shapes")
    guidance = a.guidance if a.guidance is not None else preset.defaults["diffusion"]["guidance"]
    reg = Registry(device="cpu")
    parts = {role: reg.get(spec) for role, spec in ENGINE_SPEC.components(preset).items()}
    model, vqgan, clip = parts["diffusion"], parts["vqgan"], parts["clip"]
    caps = captions(a.captions)
    res = {"captions": a.captions, "guidance": guidance, "threads": a.threads, "peak_rss_mb": {}}
    res["peak_rss_mb"]["models loaded"] = peak_rss_mb()
    fast_path(model, vqgan, clip, caps[:1], 2, guidance, 0, 1)  # warm-up

    # 1-2. the plain loop (one image per caption) and the fast path at 25 and 10 steps, taking turns
    #      caption by caption, so a shared CPU's drift over the minutes falls on all three alike
    loops = {"plain": lambda c, k: [plain_loop(model, vqgan, clip, c, a.plain_steps, guidance, k)],
             "fast25": lambda c, k: fast_path(model, vqgan, clip, [c], 25, guidance, k, a.batch)[0],
             "fast10": lambda c, k: fast_path(model, vqgan, clip, [c], 10, guidance, k, a.batch)[0]}
    spent, images = dict.fromkeys(loops, 0.0), {name: [] for name in loops}
    for k, c in enumerate(caps):
        for name, loop in loops.items():
            t0 = time.perf_counter()
            images[name].append(loop(c, k))
            spent[name] += time.perf_counter() - t0
    for name, steps in (("plain", a.plain_steps), ("fast25", 25), ("fast10", 10)):
        scored = [judge(im, c).correct for ims, c in zip(images[name], caps) for im in ims]
        res[name] = {"steps": steps, "s_per_image": spent[name] / len(scored),
                     "correct": sum(scored) / len(scored), "images": len(scored)}
    res["peak_rss_mb"]["after both loops"] = peak_rss_mb()

    # 3. previews: the fast path at 25 steps watched every step and every preview_every steps; the
    #    settings take turns for 7 rounds and each keeps its median (this CPU's speed swings by a
    #    third from one run to the next, either way, so neither one run nor the fastest will do)
    every = preset.defaults["diffusion"].get("preview_every", 5)
    rounds = {}
    for _ in range(7):
        for pe in sorted({0, 1, every}):
            t0 = time.perf_counter()
            fast_path(model, vqgan, clip, caps[:4], 25, guidance, 0, 1, preview_every=pe)
            rounds.setdefault(pe, []).append(time.perf_counter() - t0)
    timing = {pe: statistics.median(ts) for pe, ts in rounds.items()}
    res["preview_overhead"] = {f"every {pe}": timing[pe] / timing[0] - 1 for pe in timing if pe}

    plain_t = res["plain"]["s_per_image"]
    print(f"{'loop':28s} {'s/image':>8s} {'speed-up':>9s} {'correct':>8s}")
    print(f"{'plain DDPM, ' + str(a.plain_steps) + ' steps':28s} {plain_t:8.3f} {1:9.1f} {100 * res['plain']['correct']:7.1f}%")
    for steps in (25, 10):
        r = res[f"fast{steps}"]
        r["speedup"] = plain_t / r["s_per_image"]
        print(f"{'DPM-Solver++, ' + str(steps) + ' steps':28s} {r['s_per_image']:8.3f} {r['speedup']:9.1f} "
              f"{100 * r['correct']:7.1f}%")
    for k, v in res["preview_overhead"].items():
        print(f"previews {k} step(s): {100 * v:+.1f} % sampling time (median of 7 rounds each)")
    print("peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in res["peak_rss_mb"].items()))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
