"""How faithful unCLIP's variations are, and how much they vary.

    .venv/bin/python bench/unclip_variations.py --per-category 10 --variations 4

For the first --per-category captions of each evaluation-set category (`lab/eval/
captions.json`), the reference renderer draws the source picture at the caption's seed,
the engine makes --variations variations of it (preset defaults, decoder only), and
`lab.eval.judge` says whether the source caption is true of each variation. The
source pictures are judged too: a source the judge already rejects says nothing about the
decoder.

Faithfulness alone would reward copies, so it also prints how far the variations are from
their source and from each other (mean absolute pixel difference, 0..1), beside the same for
the domain's own variations: the renderer drawing the same caption at other seeds. A
variation that keeps the caption but differs from its source much less than a re-render
does is closer to a copy than to a variation. Writes a JSON report.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def distances(source, images) -> tuple[list[float], list[float]]:
    """Mean absolute pixel differences (0..1): each image to the source, and each pair of images."""
    import numpy as np

    def arr(im):
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255

    src, ims = arr(source), [arr(im) for im in images]
    return ([float(np.abs(x - src).mean()) for x in ims],
            [float(np.abs(x - y).mean()) for x, y in itertools.combinations(ims, 2)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="shapes")
    p.add_argument("--per-category", type=int, default=10)
    p.add_argument("--variations", type=int, default=4)
    p.add_argument("--strength", type=float, default=None, help="variation strength (default: the preset's)")
    p.add_argument("--guidance", type=float, default=None, help="decoder guidance (default: the preset's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="reports/eval/unclip-variations.json")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    import shapes
    from lab.eval import evalset
    from lab.eval.judge import judge
    from pipelines.events import generate
    from pipelines.presets import load_preset
    from pipelines.registry import Registry
    from pipelines.unclip import ENGINE, UnCLIPRequest, run

    torch.set_num_threads(a.threads)
    registry = Registry()
    settings = {**load_preset(a.preset).defaults.get(ENGINE, {}), "preview_every": 0}
    if a.guidance is not None:
        settings["guidance"] = a.guidance
    if a.strength is not None:
        settings["strength"] = a.strength
    t0 = time.time()
    report = {"preset": a.preset, "variations_per_source": a.variations, "settings": settings, "categories": {}}
    total = [0, 0]
    dist = {"variations": ([], []), "re-renders": ([], [])}   # (to the source, between each other)
    for category, items in evalset.load().items():
        rows, good, attrs = [], 0, []
        for item in items[:a.per_category]:
            scene = shapes.parse_caption(item["caption"])
            source = shapes.render(scene, 32, item["seed"])
            req = UnCLIPRequest(mode="variations", image=source, preset=a.preset, seed=item["seed"],
                                batch=a.variations, **settings)
            images = generate(run(req, registry)).images
            judged = [judge(im, item["caption"]) for im in images]
            verdicts = [v.correct for v in judged]
            attrs += [sum(ok for _, ok in v.checks) / len(v.checks) for v in judged]
            good += sum(verdicts)
            renders = [shapes.render(scene, 32, item["seed"] + 1000 * k) for k in range(1, a.variations + 1)]
            for key, ims in (("variations", images), ("re-renders", renders)):
                to_src, pairs = distances(source, ims)
                dist[key][0].extend(to_src)
                dist[key][1].extend(pairs)
            rows.append({"caption": item["caption"], "source_correct": judge(source, item["caption"]).correct,
                         "variations_correct": verdicts})
        n = len(rows) * a.variations
        report["categories"][category] = {"correct": round(good / n, 4), "attributes": round(sum(attrs) / n, 4),
                                          "n": n, "items": rows}
        total[0] += good
        total[1] += n
        print(f"{category}: {good}/{n} variations keep the source caption true ({100 * good / n:.1f} %); "
              f"{100 * sum(attrs) / n:.1f} % of its attributes")
    report["overall"] = round(total[0] / total[1], 4)
    report["distance"] = {k: {"to_source": round(float(np.mean(s)), 4),
                              "between": round(float(np.mean(b)), 4) if b else None}
                          for k, (s, b) in dist.items()}
    report["seconds"] = round(time.time() - t0, 1)
    print(f"overall: {100 * report['overall']:.1f} % of {total[1]} variations ({report['seconds']} s)")
    for k, d in report["distance"].items():
        print(f"mean pixel difference, {k}: {d['to_source']:.4f} to the source, {d['between']} between each other")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
