"""DALL-E's reranking by two or more CLIPs on the same candidates, so that their difference is paired.

    python -m lab.eval.rerank_pairs N [CLIP_DIR ...]

For the first N captions of each category of the evaluation set, 2 seeds each (as `python -m lab.eval dalle
--samples 2`), DALL-E draws the preset's candidates once with reranking off; the judge checks every candidate,
and each CLIP's top pick is looked up. Prints, per category, each CLIP's share of right picks (which equals what
`lab.eval dalle` reports for a preset with that CLIP), the share of captions with any right candidate, and for
the first two CLIPs how often only one of them picked right. Default CLIPs: the conv and factored built-ins.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from lab.eval import evalset
from lab.eval.judge import judge
from pipelines.engines import ENGINES
from pipelines.events import generate
from pipelines.media.pixels import to_tensor
from pipelines.models.clip import load_clip
from pipelines.presets import load_preset
from pipelines.registry import Registry


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not argv[0].isdigit():
        raise SystemExit("usage: python -m lab.eval.rerank_pairs N [CLIP_DIR ...]  (N: captions per category)")
    n = int(argv[0])
    dirs = argv[1:] or ["presets/weights/shapes-clip-conv", "presets/weights/shapes-clip-factored"]
    torch.set_num_threads(1)
    spec, registry, preset = ENGINES["dalle"], Registry(device="cpu"), load_preset("shapes")
    clips = {d: load_clip(d).eval() for d in dirs}
    sets = evalset.load()
    for category in evalset.CATEGORIES:
        right = {d: [] for d in dirs}
        any_right = []
        for entry in sets[category][:n]:
            for i in range(2):
                req = spec.make_request(preset, prompt=entry["caption"], preset="shapes", seed=entry["seed"] + i,
                                        rerank=False)
                images = [im.convert("RGB") for im in generate(spec.run(req, registry)).images]
                ok = [judge(im, entry["caption"]).correct for im in images]
                any_right.append(any(ok))
                x = to_tensor(images, (0, 1))
                with torch.no_grad():
                    for d, clip in clips.items():
                        right[d].append(ok[int(clip.similarity(x, [entry["caption"]])[:, 0].argmax())])
        a, b = right[dirs[0]], right[dirs[-1]]
        print(f"{category}: {len(a)} runs; " + ", ".join(f"{d} {100 * np.mean(r):.1f} %" for d, r in right.items())
              + f"; any candidate right {100 * np.mean(any_right):.1f} %; only the first right "
              f"{sum(x and not y for x, y in zip(a, b))}, only the last {sum(y and not x for x, y in zip(a, b))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
