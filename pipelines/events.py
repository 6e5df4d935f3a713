"""What a pipeline yields while it runs.

Every engine is `run(request, registry, should_stop) -> Iterator[Step | Final]`; its
last event is always a `Final`. The UI iterates `run`, the command line prints a
progress bar from it, and tests call `generate`, which drains it. Events carry CPU
data only (PIL images, floats), so they pickle across a ZeroGPU worker boundary.

Preview keys are fixed across engines: `x_t` and `x0_pred` (diffusion), `partial`
(token grids), `current` (VQGAN+CLIP).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from PIL import Image


@dataclass(frozen=True)
class Step:
    engine: str
    stage: str
    step: int                      # completed steps, from 1
    total: int
    stage_index: int = 0
    stage_count: int = 1
    t: float | None = None         # timestep or sigma where the engine has one
    previews: Mapping[str, Image.Image] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    notice: str | None = None      # a message for the user (a capped value, a phase change)
    captions: tuple[str, ...] = ()  # an embedding shown by its nearest captions (unCLIP's prior)


@dataclass(frozen=True)
class Final:
    engine: str
    images: list[Image.Image]
    meta: dict                     # everything that reproduces the run
    stopped: bool = False          # True when the user stopped it early; images are what was made


Event = Step | Final
StopCheck = Callable[[], bool]


def generate(events: Iterator[Event]) -> Final:
    """Run a pipeline to its end and return the Final event."""
    final = None
    for ev in events:
        if isinstance(ev, Final):
            final = ev
    if final is None:
        raise RuntimeError("the pipeline ended without a Final event")
    return final


def never_stop() -> bool:
    return False
