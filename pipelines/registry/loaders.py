"""The default loaders, one per component kind: (spec, registry) -> nn.Module.

Each finds its files through `registry.resolve` / `registry.files` and imports its model code
lazily, so importing the registry stays cheap. `DEFAULT_LOADERS` is the table a `Registry`
starts with; `Registry.register_loader` adds or replaces one.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn as nn

from ..presets import ComponentSpec

if TYPE_CHECKING:  # for annotations only: cache imports this module at run time, never the reverse
    from .cache import Registry


# -- default loaders: (spec, registry) -> nn.Module ---------------------------------------------


def load_vqgan_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """An Atelier or taming folder; a lone .ckpt with a .yaml beside it; or named ckpt + config files."""
    from ..models import vqgan_files as vqgan

    where = registry.resolve(spec)
    named = registry.files(spec, where)
    if named:
        if "ckpt" not in named or "config" not in named:
            raise ValueError("a VQGAN needs files named \"ckpt\" and \"config\"")
        return vqgan.load_taming(named["ckpt"], named["config"])
    where = Path(where)
    if where.is_file():
        yamls = sorted(where.parent.glob("*.yaml"))
        if not yamls:
            raise FileNotFoundError(f"no model.yaml beside {where.name}")
        return vqgan.load_taming(where, yamls[0])
    return vqgan.from_pretrained(where)


def load_clip_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """A CLIP folder in the transformers layout, or a hub id (cached, or downloaded when allowed)."""
    from ..models.clip import load_clip

    return load_clip(registry.resolve(spec), local_files_only=not registry.allow_network)


def load_diffusion_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """Atelier's latent diffusion folder, or a diffusers unconditional pipeline (hub ones name their `files`)."""
    from ..models.diffusion import load_any

    where = registry.resolve(spec)
    if isinstance(where, str):
        raise ValueError("a hub diffusion model needs \"files\" naming its config, weights and scheduler_config.json")
    return load_any(where)


def load_dalle_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """A DALL-E folder: the GPT (config.json + model.safetensors), dalle.json and tokenizer.json."""
    from ..models.dalle import from_pretrained

    return from_pretrained(registry.resolve(spec))


def load_unclip_prior_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """Atelier's unCLIP diffusion prior folder (config.json + model.safetensors)."""
    from ..models.unclip import from_pretrained

    return from_pretrained(registry.resolve(spec), kind="prior")


def load_unclip_decoder_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """Atelier's unCLIP decoder folder (config.json + model.safetensors)."""
    from ..models.unclip import from_pretrained

    return from_pretrained(registry.resolve(spec), kind="decoder")


def load_karlo_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """A diffusers UnCLIPPipeline folder or hub id (Karlo's layout: model_index.json and one folder per part).
    A hub id is resolved first (the cache, then a quick network probe); diffusers then fetches the parts."""
    from ..models.karlo import load_karlo

    where = registry.resolve(spec)
    if spec.source == "hub":
        return load_karlo(spec.location, revision=spec.revision, local_files_only=not registry.allow_network)
    return load_karlo(where)


def load_stable_diffusion_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """A Stable Diffusion-family folder or hub id in diffusers' layout (model_index.json, unet/, vae/,
    text_encoder/, tokenizer/, scheduler/). A hub id is resolved first (its model_index.json: the cache, then
    a quick network probe); the parts then come one by one, each downloading only its own files."""
    from ..models.stable_diffusion import load_stable_diffusion

    where = registry.resolve(spec)
    if spec.source == "hub":
        return load_stable_diffusion(spec.location, revision=spec.revision,
                                     local_files_only=not registry.allow_network)
    return load_stable_diffusion(Path(where))


def load_taesd_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """TAESD, the tiny Stable Diffusion latent decoder (`madebyollin/taesd`), for previews."""
    from ..models.stable_diffusion import load_taesd

    where = registry.resolve(spec)
    if spec.source == "hub":
        return load_taesd(spec.location, revision=spec.revision, local_files_only=not registry.allow_network)
    return load_taesd(Path(where))


def _min_dalle_files(spec: ComponentSpec, registry: Registry, names: dict[str, str]) -> dict[str, Path]:
    """Role -> file of a min-dalle component: the spec's `files`, else min-dalle's own `names` in the folder.
    A missing file is the registry's one-sentence ModelUnavailable, naming that file."""
    from .weights import damaged

    where = registry.resolve(spec)
    if isinstance(where, str):
        raise ValueError(f"a hub min-dalle component needs \"files\" naming {', '.join(names)}")
    files = registry.files(spec, where) if spec.files else {role: Path(where) / n for role, n in names.items()}
    if set(files) != set(names):
        raise ValueError(f"a min-dalle component names exactly the files {', '.join(names)}")
    for path in files.values():
        if not path.is_file():
            raise damaged(spec, path, "file not found")
    return files


def load_min_dalle_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """DALL-E Mega or Mini as min-dalle publishes them (hub `kuprel/min-dalle` naming its files, or a folder
    of min-dalle's `pretrained/dalle_bart_*` layout): the BART and its tokenizer."""
    from ..models.dalle_bart import MEGA_FILES, LayoutError, load_bart
    from .weights import damaged

    files = _min_dalle_files(spec, registry, MEGA_FILES)
    try:
        return load_bart(files)
    except LayoutError as e:
        raise damaged(spec, e.path, e.reason) from e


def load_min_dalle_vqgan_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """min-dalle's VQGAN decoder (`detoker.pt`, shared by Mega and Mini): codes -> pixels, no encoder."""
    from ..models.dalle_bart import DETOKENIZER_FILES, LayoutError, load_detokenizer
    from .weights import damaged

    files = _min_dalle_files(spec, registry, DETOKENIZER_FILES)
    try:
        return load_detokenizer(files["ckpt"])
    except LayoutError as e:
        raise damaged(spec, e.path, e.reason) from e


DEFAULT_LOADERS = {"vqgan": load_vqgan_component, "clip": load_clip_component,
                   "diffusion": load_diffusion_component, "dalle": load_dalle_component,
                   "unclip_prior": load_unclip_prior_component, "unclip_decoder": load_unclip_decoder_component,
                   "karlo": load_karlo_component, "stable_diffusion": load_stable_diffusion_component,
                   "taesd": load_taesd_component, "min_dalle": load_min_dalle_component,
                   "min_dalle_vqgan": load_min_dalle_vqgan_component}
