"""Generate for the evaluation set with one engine, score it, write the report.

``evaluate`` drives an engine over the first ``per_category`` captions of each
category (``samples`` images per caption, from the caption's own seed), judges
every image, and measures CLIP R-precision, Frechet distance to real renders
of the same captions, diversity and time per image. ``write_report`` writes
``results.json`` (the numbers, the settings and the exact command), ``report.md``
and one labelled grid per category.
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import shapes
from lab.eval import evalset, metrics
from lab.eval.engines import ENGINES
from lab.eval.judge import judge
from pipelines.presets import load_preset

REFERENCE_SEED_OFFSET = 1_000_003    # real renders for the Frechet distance use other seeds than any sample


@dataclass
class Sample:
    category: str
    caption: str
    seed: int
    image: Image.Image
    correct: bool
    accuracy: float
    failed: list[str]
    checks: tuple = ()


@dataclass
class Evaluation:
    results: dict
    samples: list[Sample] = field(default_factory=list)


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"


_WORKER: dict = {}


def _worker_start(device: str | None, threads: int) -> None:
    """A harness worker process: its own registry and thread count."""
    import torch

    from pipelines.registry import Registry

    torch.set_num_threads(threads)
    _WORKER["registry"] = Registry(device=device)


def _worker_draw(engine: str, preset: str, caption: str, seed: int, samples: int, overrides: dict):
    t0 = time.perf_counter()
    images = ENGINES[engine](_WORKER["registry"], preset, caption, seed, samples, overrides)
    return [im.convert("RGB") for im in images], time.perf_counter() - t0


def evaluate(engine: str, preset: str, registry, per_category: int = 10, samples: int = 2,
             overrides: dict | None = None, clip_preset: str = "shapes",
             progress: Callable[[int, int], None] | None = None, workers: int = 1,
             worker_threads: int = 1) -> Evaluation:
    """Run ``engine`` on the evaluation set and measure it (see the module docstring). With ``workers`` > 1
    the captions are drawn by that many processes (each with its own registry on ``registry.device`` and
    ``worker_threads`` threads); each caption's pictures depend only on its caption and seed, so the
    report is the one a single process writes, but for the seconds per image."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(sorted(ENGINES))}")
    if not 1 <= per_category <= evalset.PER_CATEGORY:
        raise ValueError(f"per_category must be from 1 to {evalset.PER_CATEGORY}, got {per_category}")
    if not 1 <= samples <= 64:
        raise ValueError(f"samples must be from 1 to 64, got {samples}")
    load_preset(preset)                      # a clear error for an unknown preset, before any work
    overrides = dict(overrides or {})
    fn = ENGINES[engine]
    sets = evalset.load()
    pool = [e["caption"] for cat in evalset.CATEGORIES for e in sets[cat]]
    total, done = per_category * samples * len(sets), 0
    out: list[Sample] = []
    seconds = 0.0
    todo = [(category, entry) for category in evalset.CATEGORIES for entry in sets[category][:per_category]]
    workers_pool = None
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        workers_pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _worker_start,
                                           (str(registry.device), worker_threads))
        drawn = workers_pool.map(_worker_draw, *zip(*[(engine, preset, e["caption"], e["seed"], samples, overrides)
                                                      for _, e in todo]))
    else:
        def here():
            for _, entry in todo:
                t0 = time.perf_counter()
                images = fn(registry, preset, entry["caption"], entry["seed"], samples, overrides)
                yield images, time.perf_counter() - t0
        drawn = here()
    try:
        for (category, entry), (images, took) in zip(todo, drawn):
            seconds += took
            if len(images) != samples:
                raise RuntimeError(f"engine {engine!r} returned {len(images)} images for {samples} samples")
            for im in images:
                v = judge(im.convert("RGB"), entry["caption"])
                out.append(Sample(category, entry["caption"], entry["seed"], im.convert("RGB"), v.correct,
                                  v.accuracy, v.failed, v.checks))
            done += samples
            if progress:
                progress(done, total)
    finally:
        if workers_pool is not None:
            workers_pool.shutdown(cancel_futures=True)

    size = out[0].image.size[0]
    reference = [shapes.render(shapes.parse_caption(s.caption), size, s.seed + REFERENCE_SEED_OFFSET + i % samples)
                 for i, s in enumerate(out)]
    floor = [shapes.render(shapes.parse_caption(s.caption), size, s.seed + 2 * REFERENCE_SEED_OFFSET + i % samples)
             for i, s in enumerate(out)]
    # the reports' CLIP metrics are read with the preset's first CLIP, which the diffusion model reads as its text
    # encoder (`text_encoder` once the preset's `clip` became the one that sees shapes): one yardstick across reports
    components = load_preset(clip_preset).components
    clip_spec = components.get("text_encoder", components["clip"])
    with registry.use(clip_spec) as (clip,):
        gen_f = metrics.image_features(clip, [s.image for s in out])
        ref_f = metrics.image_features(clip, reference)
        floor_f = metrics.image_features(clip, floor)
        text_f = metrics.text_features(clip, pool)

    def numbers(idx: list[int]) -> dict:
        return {
            "images": len(idx),
            "correct": float(np.mean([out[i].correct for i in idx])),
            "attribute_accuracy": float(np.mean([out[i].accuracy for i in idx])),
            "clip_r_precision": metrics.r_precision(gen_f[idx], [pool.index(out[i].caption) for i in idx], text_f),
        }

    by_cat = {c: [i for i, s in enumerate(out) if s.category == c] for c in evalset.CATEGORIES}
    per_caption = [gen_f[i:i + samples] for i in range(0, len(out), samples)]
    ref_caption = [ref_f[i:i + samples] for i in range(0, len(out), samples)]
    kinds: dict[str, list[bool]] = {}
    for smp in out:
        for name, ok in smp.checks:
            kinds.setdefault(name.removeprefix("object 1 ").removeprefix("object 2 "), []).append(ok)
    results = {
        "engine": engine,
        "preset": preset,
        "overrides": overrides,
        "per_category": per_category,
        "samples_per_caption": samples,
        "categories": {c: numbers(idx) for c, idx in by_cat.items()},
        "all": numbers(list(range(len(out)))),
        "attribute_holds": {k: float(np.mean(v)) for k, v in sorted(kinds.items())},
        "frechet_distance_clip": metrics.frechet_distance(gen_f, ref_f),
        "frechet_distance_clip_real_vs_real": metrics.frechet_distance(floor_f, ref_f),
        "diversity": metrics.diversity(per_caption),
        "diversity_real": metrics.diversity(ref_caption),
        "seconds_per_image": seconds / len(out),
        "image_size": size,
        "evaluator_clip": clip_spec.label if hasattr(clip_spec, "label") else str(clip_spec),
        "device": str(registry.device),
        "command": " ".join(["python -m lab.eval", *sys.argv[1:]]) if sys.argv[0].endswith("__main__.py") else None,
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    return Evaluation(results, out)


# --- report ---------------------------------------------------------------------------------
_CELL = 96
_TEXT_W = 300


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def grid(samples: list[Sample], per_row: int) -> Image.Image:
    """Rows of one caption each: the caption, then its samples framed green (correct) or red."""
    rows = [samples[i:i + per_row] for i in range(0, len(samples), per_row)]
    row_h = _CELL + 36
    img = Image.new("RGB", (_TEXT_W + per_row * (_CELL + 8), len(rows) * row_h + 4), "white")
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        y = r * row_h + 4
        for k, line in enumerate(_wrap(row[0].caption, 44)[:6]):
            draw.text((6, y + 4 + 12 * k), line, fill=(20, 20, 20))
        for c, s in enumerate(row):
            x = _TEXT_W + c * (_CELL + 8)
            draw.rectangle((x, y, x + _CELL + 5, y + _CELL + 5), fill=(30, 150, 60) if s.correct else (200, 40, 40))
            img.paste(s.image.resize((_CELL, _CELL), Image.Resampling.NEAREST), (x + 3, y + 3))
            label = "correct" if s.correct else "wrong: " + ", ".join(f.replace("object ", "") for f in s.failed)
            for k, line in enumerate(_wrap(label, 17)[:2]):
                draw.text((x, y + _CELL + 7 + 11 * k), line, fill=(20, 20, 20))
    return img


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(results: dict, grids: dict[str, str]) -> str:
    r = results
    lines = [f"# Evaluation: {r['engine']} on preset {r['preset']}", "",
             f"- command: `{r['command'] or 'evaluate() from Python'}`",
             f"- commit {r['commit']}, {r['date']}, device {r['device']}, {r['image_size']} px images",
             f"- {r['per_category']} captions per category, {r['samples_per_caption']} samples each; "
             f"settings changed from the preset: {r['overrides'] or 'none'}", "",
             "| category | images | correct | attribute accuracy | CLIP R-precision (1 of 100) |",
             "|---|---|---|---|---|"]
    for name, c in [*r["categories"].items(), ("all", r["all"])]:
        lines.append(f"| {name} | {c['images']} | {_pct(c['correct'])} | {_pct(c['attribute_accuracy'])} | "
                     f"{_pct(c['clip_r_precision'])} |")
    if "attribute_holds" in r:
        lines += ["", "How often each kind of stated attribute holds: " +
                  ", ".join(f"{k} {_pct(v)}" for k, v in r["attribute_holds"].items()) + "."]
    lines += ["",
              f"- Frechet distance on CLIP image features to real renders of the same captions: "
              f"**{r['frechet_distance_clip']:.4f}** (real against real at this size: {r['frechet_distance_clip_real_vs_real']:.4f})",
              f"- diversity (mean cosine distance between samples of one caption): **{r['diversity']:.4f}** "
              f"(real renders: {r['diversity_real']:.4f})",
              f"- time per image: **{r['seconds_per_image']:.2f} s**", ""]
    for name, path in grids.items():
        lines += [f"## {name}", "", f"![{name}]({path})", ""]
    return "\n".join(lines)


GRID_CAPTIONS = 24   # captions shown per category grid (the numbers use every one)


def write_report(ev: Evaluation, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_row = ev.results["samples_per_caption"]
    grids = {}
    for category in evalset.CATEGORIES:
        name = "grid-" + category.replace(" ", "-") + ".png"
        shown = [s for s in ev.samples if s.category == category][:GRID_CAPTIONS * per_row]
        grid(shown, per_row).save(out_dir / name)
        grids[f"{category} (first {len(shown) // per_row} captions)"] = name
    (out_dir / "results.json").write_text(json.dumps(ev.results, indent=1) + "\n")
    (out_dir / "report.md").write_text(markdown(ev.results, grids))
    return out_dir / "report.md"
