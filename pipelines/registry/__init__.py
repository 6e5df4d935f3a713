"""The model registry: the one place that loads, shares and places model weights.

Four modules, each importing only the ones before it:
- `runtime`: where and how models run: `pick_device`, CPU `worker_threads`, `compute_dtype` / `autocast`
  for a pass's precision, which kinds may run in float16 on a GPU, and `warm_imports` of the engines' libraries.
- `weights`: finding a component's files (built-in, path, Hugging Face Hub, URLs) and downloading them,
  `weights_id`, and the user-facing errors `ModelUnavailable` and `DeviceOutOfMemory`.
- `loaders`: the default loader per component kind (spec, registry) -> nn.Module, model code imported lazily.
- `cache`: `Registry` itself: lazy loading, sharing by key, locking, the memory budget, `use`, `status`,
  `describe`, `unload`, `register_loader`.

Import from `pipelines.registry`; the names below are its public interface.
"""
from .cache import LoadedModel, Loader, Registry
from .loaders import (DEFAULT_LOADERS, load_clip_component, load_dalle_component, load_diffusion_component,
                      load_karlo_component, load_unclip_decoder_component, load_unclip_prior_component,
                      load_vqgan_component)
from .runtime import (AUTO_BF16_MIN_PIXELS, DEVICE_CHOICES, HALF_SAFE_KINDS, PRECISIONS, WARM_IMPORTS, autocast,
                      compute_dtype, native_bfloat16, pick_device, use_worker_threads, wait_for_warm_imports,
                      warm_imports, worker_threads)
from .weights import ROOT, DeviceOutOfMemory, ModelUnavailable, weights_id

__all__ = [
    "AUTO_BF16_MIN_PIXELS", "DEFAULT_LOADERS", "DEVICE_CHOICES", "HALF_SAFE_KINDS", "PRECISIONS", "ROOT",
    "WARM_IMPORTS", "DeviceOutOfMemory", "LoadedModel", "Loader", "ModelUnavailable", "Registry", "autocast",
    "compute_dtype", "load_clip_component", "load_dalle_component", "load_diffusion_component",
    "load_karlo_component", "load_unclip_decoder_component", "load_unclip_prior_component",
    "load_vqgan_component", "native_bfloat16", "pick_device", "use_worker_threads", "wait_for_warm_imports",
    "warm_imports", "weights_id", "worker_threads",
]
