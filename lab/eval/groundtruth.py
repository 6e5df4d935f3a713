"""Holding the judge to ground truth: degraded renders and one-attribute-wrong captions.

``judge_accuracy`` measures, on fresh seeded renders, how often the judge
calls a true caption correct (clean and degraded) and how often it rejects
the same caption with one stated attribute changed. The tests hold it to
the targets; ``python -m lab.eval judge`` prints the numbers.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

import shapes
from lab.eval.judge import analyse, check

# Degradations, per image, drawn uniformly up to these (blur in pixels at 32 px, scaled with S).
MAX_BLUR = 0.8
MAX_NOISE = 10.0         # gaussian noise sigma, RGB units
MAX_BRIGHTNESS = 0.10    # multiplied by 1 +- this
MAX_SHIFT = 12.0         # added per channel, RGB units


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur, noise and colour jitter, the kind of damage a generated image shows."""
    s = image.size[0]
    blur = rng.uniform(0, MAX_BLUR) * s / 32
    out = image.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.05 else image
    a = np.asarray(out, dtype=np.float64)
    a = a * (1 + rng.uniform(-MAX_BRIGHTNESS, MAX_BRIGHTNESS)) + rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=3)
    a = a + rng.normal(0, rng.uniform(0, MAX_NOISE), size=a.shape)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def mutate(scene: shapes.Scene, rng: np.random.Generator) -> tuple[shapes.Scene, str]:
    """The scene with one stated attribute changed to another valid value; also what changed."""
    options = []
    for i, o in enumerate(scene.objects):
        options += [("colour", i), ("shape", i)] + ([("size", i)] if o.size else [])
    options += [(k, None) for k in ("position", "relation", "background") if getattr(scene, k)]
    while True:
        what, i = options[rng.integers(len(options))]
        objs = list(scene.objects)
        kw = {"position": scene.position, "relation": scene.relation, "background": scene.background}
        if what == "colour":
            choices = [c for c in shapes.PALETTE if c not in (objs[i].color, scene.background)]
            objs[i] = shapes.ObjectSpec(str(rng.choice(choices)), objs[i].shape, objs[i].size)
        elif what == "shape":
            choices = [x for x in shapes.SHAPES if x != objs[i].shape]
            objs[i] = shapes.ObjectSpec(objs[i].color, str(rng.choice(choices)), objs[i].size)
        elif what == "size":
            objs[i] = shapes.ObjectSpec(objs[i].color, objs[i].shape, "large" if objs[i].size == "small" else "small")
        elif what == "position":
            kw["position"] = str(rng.choice([p for p in shapes.POSITIONS if p != scene.position]))
        elif what == "relation":
            kw["relation"] = str(rng.choice([r for r in shapes.RELATIONS if r != scene.relation]))
        else:
            used = {o.color for o in objs} | {scene.background}
            kw["background"] = str(rng.choice([c for c in shapes.PALETTE if c not in used]))
        try:
            return shapes.Scene(tuple(objs), **kw), what
        except ValueError:  # e.g. two objects' colours made equal to the background: draw again
            continue


@dataclass
class JudgeAccuracy:
    n: int = 0
    correct: int = 0
    attributes: int = 0
    attributes_held: int = 0
    rejected: int = 0
    failures: Counter = field(default_factory=Counter)     # attribute -> times wrongly failed
    missed: Counter = field(default_factory=Counter)       # changed attribute -> times accepted

    def as_dict(self) -> dict:
        return {"n": self.n, "correct": self.correct / self.n, "attribute_accuracy": self.attributes_held / self.attributes,
                "rejects_one_change": self.rejected / self.n, "false_failures": dict(self.failures),
                "accepted_changes": dict(self.missed)}


def judge_accuracy(n: int, size: int, degraded: bool = False, seed: int = 0,
                   full_captions: bool = False) -> JudgeAccuracy:
    """The judge on n fresh renders of training-stream captions (or captions with every part stated)."""
    rng = np.random.default_rng(seed)
    acc = JudgeAccuracy()
    for _ in range(n):
        scene = shapes.full_caption_scene(rng, exclude=()) if full_captions else shapes.random_scene(rng, exclude=())
        image = shapes.render(scene, size, rng)
        if degraded:
            image = degrade(image, rng)
        wrong, what = mutate(scene, rng)
        seen = analyse(image)
        v = check(seen, scene)
        acc.n += 1
        acc.correct += v.correct
        acc.attributes += len(v.checks)
        acc.attributes_held += sum(ok for _, ok in v.checks)
        acc.failures.update(v.failed)
        if check(seen, wrong).correct:
            acc.missed[what] += 1
        else:
            acc.rejected += 1
    return acc
