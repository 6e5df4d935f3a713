"""ZeroGPU support: `@gpu` is `spaces.GPU` on Hugging Face Spaces and an exact no-op elsewhere.

On a ZeroGPU Space, a GPU is attached only while a function decorated with `spaces.GPU` runs.
Import this module before anything initialises CUDA (the `spaces` package patches torch).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

log = logging.getLogger(__name__)

try:
    import spaces  # only present on Hugging Face Spaces
except ImportError:
    spaces = None

ON_SPACES: bool = os.environ.get("SYSTEM") == "spaces" or "SPACE_ID" in os.environ


def gpu(fn: Callable | None = None, **kwargs: Any) -> Callable:
    """`@gpu`, `@gpu(duration=60)`: spaces.GPU when available; otherwise returns `fn` itself."""
    if spaces is None:
        return fn if fn is not None else (lambda f: f)
    if fn is None:
        return spaces.GPU(**kwargs)
    return spaces.GPU(fn, **kwargs)
