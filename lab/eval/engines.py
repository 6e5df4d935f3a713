"""Every engine as the evaluation sees it: ``(registry, preset, caption, seed, n, overrides) -> n images``.

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


@engine("vqgan_clip")
def vqgan_clip(registry, preset: str, caption: str, seed: int, n: int, overrides: dict) -> list[Image.Image]:
    """VQGAN+CLIP from the preset's defaults, one optimisation per sample (seeds seed..seed+n-1)."""
    from pipelines.vqgan_clip import ENGINE, VQGANCLIPRequest, run

    settings = dict(load_preset(preset).defaults.get(ENGINE, {}))
    settings.update(overrides)
    settings["augments"] = tuple(settings.get("augments", ()))
    settings["preview_every"] = 0
    out = []
    for i in range(n):
        req = VQGANCLIPRequest(prompt=caption, preset=preset, seed=seed + i, **settings)
        out += generate(run(req, registry)).images
    return out


@engine("diffusion")
def diffusion(registry, preset: str, caption: str, seed: int, n: int, overrides: dict) -> list[Image.Image]:
    """The diffusion engine from the preset's defaults: n samples in batches of up to 16 (seed, seed + 16, ...)."""
    from pipelines.diffusion import ENGINE, MAX_BATCH, DiffusionRequest, run

    settings = dict(load_preset(preset).defaults.get(ENGINE, {}))
    settings.update(overrides)
    settings["preview_every"] = 0
    out = []
    for k in range(0, n, MAX_BATCH):
        req = DiffusionRequest(prompt=caption, preset=preset, seed=seed + k, batch=min(MAX_BATCH, n - k), **settings)
        out += generate(run(req, registry)).images
    return out


@engine("dalle")
def dalle(registry, preset: str, caption: str, seed: int, n: int, overrides: dict) -> list[Image.Image]:
    """DALL-E from the preset's defaults. Reranked: each sample is CLIP's best of `candidates`
    (seeds seed..seed+n-1); not reranked (`--set rerank=false`): n candidates of one batch."""
    from pipelines.dalle import ENGINE, DalleRequest, run

    settings = dict(load_preset(preset).defaults.get(ENGINE, {}))
    settings.update(overrides)
    if not settings.get("rerank", True):
        settings["candidates"] = n
        return generate(run(DalleRequest(prompt=caption, preset=preset, seed=seed, **settings), registry)).images
    return [generate(run(DalleRequest(prompt=caption, preset=preset, seed=seed + i, **settings), registry)).images[0]
            for i in range(n)]


@engine("unclip")
def unclip(registry, preset: str, caption: str, seed: int, n: int, overrides: dict) -> list[Image.Image]:
    """unCLIP text to image from the preset's defaults: n pictures in batches of up to 16 (seed, seed + 16, ...)."""
    from pipelines.unclip import ENGINE, MAX_BATCH, UnCLIPRequest, run

    settings = dict(load_preset(preset).defaults.get(ENGINE, {}))
    settings.update(overrides)
    settings["preview_every"] = 0
    out = []
    for k in range(0, n, MAX_BATCH):
        req = UnCLIPRequest(prompt=caption, preset=preset, seed=seed + k, batch=min(MAX_BATCH, n - k), **settings)
        out += generate(run(req, registry)).images
    return out


def _array(image: Image.Image):
    import numpy as np
    return np.asarray(image.convert("RGB"), dtype=np.float32)
