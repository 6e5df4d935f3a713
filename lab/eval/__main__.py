"""``python -m lab.eval ENGINE --preset NAME``: score an engine; ``... judge``: score the judge.

Examples:
  python -m lab.eval tokenizer --preset shapes --per-category 100 --samples 4
  python -m lab.eval vqgan_clip --preset shapes --set iterations=100
  python -m lab.eval judge --n 1000
  python -m lab.eval table          # the numbers table (README, docs/model-history.md), from reports/eval/*/results.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from lab.eval.engines import ENGINES

REPORTS = Path(__file__).resolve().parents[2] / "reports" / "eval"


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes key=value, got {pair!r}")
        if "," in value:
            out[key.strip()] = [_value(v) for v in value.split(",") if v]
        else:
            out[key.strip()] = _value(value)
    return out


def _judge_main(a) -> int:
    from lab.eval.groundtruth import judge_accuracy

    rows = {}
    for size in (64, 32):
        for degraded in (False, True):
            acc = judge_accuracy(a.n, size, degraded=degraded, seed=a.seed).as_dict()
            name = f"{size} px {'degraded' if degraded else 'clean'}"
            rows[name] = acc
            print(f"{name:18s} correct {100 * acc['correct']:5.1f} %   attribute accuracy "
                  f"{100 * acc['attribute_accuracy']:5.1f} %   rejects one-attribute change {100 * acc['rejects_one_change']:5.1f} %",
                  flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"command": "python -m lab.eval " + " ".join(sys.argv[1:]),
                                           "n": a.n, "seed": a.seed, "results": rows}, indent=1) + "\n")
    return 0


def table(folder: Path = REPORTS) -> str:
    """A Markdown table of every saved report: correct per category, R-precision, Frechet, speed, command."""
    rows = ["| engine | preset | one object | two objects | held-out pairs | attributes | CLIP R-precision "
            "| Frechet (CLIP) | s/image | images | command |", "|---" * 11 + "|"]
    order = {"reference": 0, "tokenizer": 1}
    results = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*/results.json"))]
    for r in sorted(results, key=lambda r: (order.get(r["engine"], 2), r["engine"], r["preset"])):
        c = r["categories"]
        pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
        rows.append(f"| {r['engine']} | {r['preset']} | {pct(c['one object']['correct'])} | "
                    f"{pct(c['two objects']['correct'])} | {pct(c['held-out pairs']['correct'])} | "
                    f"{pct(r['all']['attribute_accuracy'])} | {pct(r['all']['clip_r_precision'])} | "
                    f"{r['frechet_distance_clip']:.4f} | {r['seconds_per_image']:.2f} | {r['all']['images']} | "
                    f"`{r['command'] or ''}` |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", choices=sorted(ENGINES) + ["judge", "table"])
    p.add_argument("--preset", default="shapes")
    p.add_argument("--per-category", type=int, default=10, help="captions per category (of 100)")
    p.add_argument("--samples", type=int, default=2, help="images per caption")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one of the engine's preset settings (repeatable; a,b for a list)")
    p.add_argument("--out", default=None, help="report folder (default reports/eval/ENGINE-PRESET)")
    p.add_argument("--n", type=int, default=500, help="judge: renders per condition")
    p.add_argument("--seed", type=int, default=0, help="judge: seed of the renders")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=1, help="processes drawing the captions side by side "
                   "(each with --threads threads, default 1; the report is the same, but for s/image)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.engine == "judge":
        return _judge_main(a)
    if a.engine == "table":
        print(table())
        return 0

    from tqdm import tqdm

    from lab.eval.run import evaluate, write_report
    from pipelines.registry import ModelUnavailable, Registry

    try:
        overrides = parse_overrides(a.overrides)
        bar = tqdm(total=a.per_category * a.samples * 3, unit="img", desc=a.engine)
        if a.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {a.workers}")
        ev = evaluate(a.engine, a.preset, Registry(device=a.device), a.per_category, a.samples, overrides,
                      progress=lambda done, total: bar.update(done - bar.n), workers=a.workers,
                      worker_threads=a.threads or 1)
        bar.close()
    except (ValueError, FileNotFoundError, ModelUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else REPORTS / f"{a.engine}-{a.preset}"
    report = write_report(ev, out)
    r = ev.results
    for name, c in [*r["categories"].items(), ("all", r["all"])]:
        print(f"{name:15s} correct {100 * c['correct']:5.1f} %  attributes {100 * c['attribute_accuracy']:5.1f} %  "
              f"CLIP R-precision {100 * c['clip_r_precision']:5.1f} %  ({c['images']} images)")
    print(f"Frechet distance (CLIP) {r['frechet_distance_clip']:.4f} (real vs real {r['frechet_distance_clip_real_vs_real']:.4f})  "
          f"diversity {r['diversity']:.4f} (real {r['diversity_real']:.4f})  {r['seconds_per_image']:.2f} s/image")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
