"""The table of engines: the page's tabs, the command line, the evaluation and the tests read it.

Adding an engine is its module (see `pipelines/engine.py` for the contract) plus one line here;
the page also wants its tab, `ui/<name>.py`. The order is the page's tab order.
"""
from __future__ import annotations

from pipelines import dalle, diffusion, unclip, vqgan_clip
from pipelines.engine import Engine

ENGINES: dict[str, Engine] = {e.name: e for e in (
    vqgan_clip.ENGINE_SPEC,
    diffusion.ENGINE_SPEC,
    dalle.ENGINE_SPEC,
    unclip.ENGINE_SPEC,
)}


def get(name: str) -> Engine:
    """The engine called `name`; a clear error for any other name."""
    if name not in ENGINES:
        raise ValueError(f"Unknown engine {name!r}: choose one of {', '.join(ENGINES)}.")
    return ENGINES[name]
