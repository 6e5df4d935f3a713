"""Previews, per engine: what watching costs, and whether the picture visibly forms into the result.

    .venv/bin/python bench/previews.py                  # every engine, built-in shapes preset
    .venv/bin/python bench/previews.py --engines diffusion unclip --rounds 5

For each engine of the table the same request runs with previews off, on every step and on
"auto" (-1), in turn, `--rounds` times; the median times give the previews' cost as a share of
the run. Along the every-step run it prints the mean absolute difference (0..1) between each
preview (diffusion and unCLIP: the predicted x_0; VQGAN+CLIP: the current picture; DALL-E: the
grids filling) and the finished picture, at the start, a quarter, half and three quarters of
the way, and at the last preview, which must be 0; and how many times it rose on the way
(a picture forming steadily rises seldom).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pipelines.dalle import tile
from pipelines.engines import ENGINES
from pipelines.events import AUTO, Step
from pipelines.presets import load_preset
from pipelines.registry import Registry

PROMPT = "a large blue star at the top on a white background"
# per engine: the preview that becomes the picture, and the request's work
RUNS = {
    "vqgan_clip": ("current", dict(iterations=60)),
    "diffusion": ("x0_pred", dict(steps=25)),
    "dalle": ("partial", dict(candidates=4, rerank=False)),
    "unclip": ("x0_pred", dict(prior_steps=10, steps=25)),
}


def run(engine, registry, preset, settings: dict, every: int | None):
    """The run's events, and its seconds; `every` None leaves the engine's previews as they are (DALL-E)."""
    if every is not None:
        settings = {**settings, "preview_every": every}
    req = engine.make_request(preset, prompt=PROMPT, seed=0, **settings)
    t0 = time.perf_counter()
    events = list(engine.run(req, registry))
    return events, time.perf_counter() - t0


def picture(engine_name: str, final) -> np.ndarray:
    """The finished picture in the previews' layout: a row of the batch, or DALL-E's tile."""
    if engine_name == "dalle":
        return np.asarray(tile(final.images), dtype=float)
    return np.concatenate([np.asarray(im, dtype=float) for im in final.images], axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", nargs="*", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    registry, preset = Registry(device="cpu"), load_preset("shapes")
    rows = []
    for name in a.engines:
        engine, (key, settings) = ENGINES[name], RUNS[name]
        has_every = "preview_every" in engine.fields
        run(engine, registry, preset, settings, 0 if has_every else None)          # warm up: loads, caches
        times = {"off": [], "every step": [], "auto": []}
        for _ in range(a.rounds):
            for label, every in (("off", 0), ("every step", 1), ("auto", AUTO)):
                if not has_every and label != "every step":
                    continue
                events, seconds = run(engine, registry, preset, settings, every if has_every else None)
                times[label].append(seconds)
                if label == "every step":
                    shown = [e.previews[key] for e in events if isinstance(e, Step) and key in e.previews]
                    want = picture(name, events[-1])
                    mad = [float(np.abs(np.asarray(s, dtype=float) - want).mean() / 255) for s in shown]
                if label == "auto":
                    steps = [e for e in events if isinstance(e, Step)]
                    auto_n = int(steps[-1].metrics.get("preview_every", 0))
        med = {k: statistics.median(v) for k, v in times.items() if v}
        cost = (med["every step"] - med["off"]) / med["every step"] if "off" in med else float("nan")
        auto_cost = (med["auto"] - med["off"]) / med["auto"] if "auto" in med else float("nan")
        at = [mad[round(f * (len(mad) - 1))] for f in (0, 0.25, 0.5, 0.75)] + [mad[-1]]
        rises = sum(b > a_ + 1e-6 for a_, b in zip(mad, mad[1:]))
        rows.append((name, len(mad), cost, auto_cost, auto_n if has_every else "-", at, rises))
    print(f"\nprompt: {PROMPT!r}; {a.rounds} rounds, {a.threads} thread(s); cost = (previews on - off) / on")
    print("| engine | previews | cost, every step | cost, auto (every N) | MAD to the result: start, 1/4, 1/2, 3/4, "
          "last | rises |")
    print("|---|---|---|---|---|---|")
    for name, n, cost, auto_cost, auto_n, at, rises in rows:
        auto = f"{auto_cost:.1%} ({auto_n})" if auto_n != "-" else "-"
        every = f"{cost:.1%}" if cost == cost else "always on"
        print(f"| {name} | {n} | {every} | {auto} | {', '.join(f'{v:.3f}' for v in at)} | {rises} |")


if __name__ == "__main__":
    main()
