"""Every engine as the evaluation sees it: ``(registry, preset, caption, seed, n, overrides) -> n images``.

The product's engines come from its table (`pipelines/engines.py`); the two references
below (the renderer itself and the VQGAN round trip) are the evaluation's own.

An engine plugs in with one decorated function that returns ``n`` samples of
one caption, drawn from ``seed`` (the same arguments give the same images).
``overrides`` are the CLI's ``--set key=value`` pairs, already parsed as
numbers, booleans or text; an engine passes them to its request so a setting
can be varied without editing code.
"""
from __future__ import annotations

from collections.abc import Callable

from PIL import Image

import shapes
from pipelines.engines import ENGINES as PRODUCT_ENGINES
from pipelines.events import generate
from pipelines.presets import load_preset

EngineFn = Callable[..., list[Image.Image]]
ENGINES: dict[str, EngineFn] = {}


def engine(name: str) -> Callable[[EngineFn], EngineFn]:
    """Register ``fn(registry, preset, caption, seed, n, overrides) -> list[PIL.Image]`` as ``name``."""
    def register(fn: EngineFn) -> EngineFn:
        ENGINES[name] = fn
        return fn
    return register


def canvas_size(preset: str) -> int:
    """The canvas side the preset's models were trained at (its VQGAN's resolution, else 32)."""
    defaults = load_preset(preset).defaults
    for engine_defaults in defaults.values():
        if "width" in engine_defaults:
            return int(engine_defaults["width"])
    return 32


@engine("reference")
def reference(registry, preset: str, caption: str, seed: int, n: int, overrides: dict) -> list[Image.Image]:
    """The reference renderer itself: the ceiling every engine is compared with."""
    size = int(overrides.get("size", canvas_size(preset)))
    scene = shapes.parse_caption(caption)
    return [shapes.render(scene, size, seed + i) for i in range(n)]


@engine("tokenizer")
def tokenizer(registry, preset: str, caption: str, seed: int, n: int, overrides: dict) -> list[Image.Image]:
    """Fresh renders passed through the preset's VQGAN (encode, quantise, decode).

    No engine can draw a shape its tokenizer blurs, so this bounds them all.
    """
    import torch

    from pipelines.media import to_pil

    spec = load_preset(preset).components["vqgan"]
    images = reference(registry, preset, caption, seed, n, overrides)
    with registry.use(spec) as (vqgan,), torch.no_grad():
        p = next(vqgan.parameters())
        x = torch.stack([torch.from_numpy(_array(im)) for im in images]).permute(0, 3, 1, 2)
        x = x.to(p.device, p.dtype) / 127.5 - 1
        z, _, _ = vqgan.encode(x)
        out = vqgan.decode(z).float().clamp(-1, 1)
    return [to_pil(o) for o in out]


def _product_engine(name: str) -> EngineFn:
    """An engine of the product's table, from the preset's defaults and the --set overrides, previews off.

    Engines with a batch draw the n pictures in batches (seeds seed, seed + batch, ...); DALL-E
    unranked (`--set rerank=false`) draws them as n candidates of one batch; every other run is
    one picture per seed (seed..seed+n-1): VQGAN+CLIP's optimisations, DALL-E's reranked bests.
    """
    spec = PRODUCT_ENGINES[name]

    def sample(registry, preset: str, caption: str, seed: int, n: int, overrides: dict) -> list[Image.Image]:
        p = load_preset(preset)
        settings = {**overrides, "prompt": caption, "preset": preset}
        if "preview_every" in spec.fields:
            settings["preview_every"] = 0
        field = "batch" if "batch" in spec.fields else ("candidates" if settings.get("rerank") is False else None)
        if field is None:
            return [generate(spec.run(spec.make_request(p, **settings, seed=seed + i), registry)).images[0]
                    for i in range(n)]
        most = int(spec.limits[field][1])
        out = []
        for k in range(0, n, most):
            req = spec.make_request(p, **settings, seed=seed + k, **{field: min(most, n - k)})
            out += generate(spec.run(req, registry)).images
        return out

    sample.__doc__ = f"{spec.label}: {_product_engine.__doc__.splitlines()[0]}"
    return sample


for _name in PRODUCT_ENGINES:
    ENGINES[_name] = _product_engine(_name)


def _array(image: Image.Image):
    import numpy as np
    return np.asarray(image.convert("RGB"), dtype=np.float32)
