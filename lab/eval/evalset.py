"""The fixed evaluation set: seeded captions in three categories, stored in ``captions.json``.

- ``one object``: one-object captions with every optional part stated
  (size, position, background), no held-out pair;
- ``two objects``: two-object captions with every optional part stated
  (both sizes, background), no held-out pair;
- ``held-out pairs``: captions where one object is one of the six held-out
  colour+shape pairs (half with one object, half with two), every part stated.

Every entry carries its own seed, so an engine draws the same samples for it
on every run. ``python -m lab.eval.evalset`` rewrites the file from the
seed; a test checks that the committed file is exactly what the seed makes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import shapes

PATH = Path(__file__).with_name("captions.json")
CATEGORIES = ("one object", "two objects", "held-out pairs")
PER_CATEGORY = 100
SEED = 2026


def _held_out_scene(rng: np.random.Generator, two: bool) -> shapes.Scene:
    color, shape = sorted(shapes.HELD_OUT)[rng.integers(len(shapes.HELD_OUT))]
    held = shapes.ObjectSpec(color, shape, str(rng.choice(list(shapes.SIZES))))
    if not two:
        position = str(rng.choice(list(shapes.POSITIONS)))
        bg = str(rng.choice([c for c in shapes.PALETTE if c != color]))
        return shapes.Scene((held,), position=position, background=bg)
    other = shapes.full_caption_scene(rng, two=False).objects[0]   # a seen pair
    objects = (held, other) if rng.random() < 0.5 else (other, held)
    relation = shapes.RELATIONS[rng.integers(len(shapes.RELATIONS))]
    bg = str(rng.choice([c for c in shapes.PALETTE if c not in {o.color for o in objects}]))
    return shapes.Scene(objects, relation=relation, background=bg)


def build(seed: int = SEED, per_category: int = PER_CATEGORY) -> dict[str, list[dict]]:
    """The evaluation set for ``seed``: {category: [{"caption", "seed"}, ...]}, captions distinct."""
    rng = np.random.default_rng(seed)
    makers = {
        "one object": lambda: shapes.full_caption_scene(rng, two=False),
        "two objects": lambda: shapes.full_caption_scene(rng, two=True),
        "held-out pairs": lambda: _held_out_scene(rng, two=bool(rng.random() < 0.5)),
    }
    out, seen = {}, set()
    for category in CATEGORIES:
        items = []
        while len(items) < per_category:
            caption = makers[category]().caption()
            if caption not in seen:
                seen.add(caption)
                items.append({"caption": caption, "seed": int(rng.integers(2**31))})
        out[category] = items
    return out


def load(path: Path = PATH) -> dict[str, list[dict]]:
    data = json.loads(Path(path).read_text())
    return {c: data["categories"][c] for c in CATEGORIES}


def write(path: Path = PATH) -> None:
    data = {"spec": "shapes-domain v1", "seed": SEED, "made_by": "python -m lab.eval.evalset",
            "categories": build()}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    write()
    print(f"wrote {PATH}")
