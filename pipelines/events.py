"""What a pipeline yields while it runs.

Every engine is `run(request, registry, should_stop) -> Iterator[Step | Final]`; its
last event is always a `Final`. The UI iterates `run`, the command line prints a
progress bar from it, and tests call `generate`, which drains it. Events carry CPU
data only (PIL images, floats), so they pickle across a ZeroGPU worker boundary.

Preview keys are fixed across engines: `x_t` and `x0_pred` (diffusion), `partial`
(token grids), `current` (VQGAN+CLIP).
"""
from __future__ import annotations

import math
import time
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


@dataclass(frozen=True)
class Pause:
    """A run that reached the bound of its call (`max_steps`) before its end: `state` (CPU data that
    pickles) continues it from `step`, in another call, to the same picture an unbroken run makes.
    ZeroGPU gives a GPU for a bounded time; a long run is a chain of such calls (pipelines/zerogpu.py)."""
    engine: str
    state: object
    step: int
    total: int


Event = Step | Final | Pause
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


AUTO = -1                  # preview_every = AUTO: as often as keeps previews under PREVIEW_BUDGET of the run
PREVIEW_BUDGET = 0.10


class PreviewCadence:
    """When a loop of `total` steps shows a preview: every `every` steps (0 = never), or, with
    `every == AUTO`, as often as keeps the previews' cost under `budget` of the run: the first
    step previews, and the previews' cost against the time per step so far picks the cadence
    (again after each preview). The last step always previews, so the last preview is the
    result; an engine stopped early adds a preview of what it keeps (while `every` is not 0).

        cadence = PreviewCadence(req.preview_every, total)      # just before the loop
        for i, ...:                                             # step i, from 0
            if cadence.due(i):
                t = time.perf_counter(); previews = ...; cadence.took(i, time.perf_counter() - t)
    """

    def __init__(self, every: int, total: int, budget: float = PREVIEW_BUDGET):
        self.every, self.total, self.budget = int(every), int(total), budget
        self.auto = self.every == AUTO
        self.n = 1 if self.auto else self.every      # steps between previews (auto: picked after the first)
        self.last: int | None = None                  # the step of the last preview
        self.chosen: int | None = None                # auto's pick
        self.preview_s = 0.0                          # time spent in previews so far
        self.count = 0                                # previews so far
        self.t_start = time.perf_counter()

    def due(self, i: int) -> bool:
        if self.every == 0:
            return False
        if i + 1 >= self.total:
            return True
        if self.auto:
            return self.last is None or i - self.last >= self.n
        return i % self.n == 0

    def took(self, i: int, seconds: float) -> None:
        """The preview at step i took `seconds`; auto (re)picks its cadence from the costs so far."""
        self.preview_s += seconds
        self.count += 1
        if self.auto:
            # previews cost p each, steps s each; a run of T steps shows at most (T - 1) / n + 2 of them
            # (the first, every n-th, the last), and ((T - 1) / n + 2) p <= budget T s gives
            # n >= (T - 1) p / (budget T s - 2 p)
            p = self.preview_s / self.count
            s = max(time.perf_counter() - self.t_start - self.preview_s, 1e-9) / (i + 1)
            room = self.budget * self.total * s - 2 * p
            n = self.total if room <= 0 else math.ceil((self.total - 1) * p / room)
            self.n = self.chosen = max(1, min(self.total, n))
        self.last = i

    @property
    def metrics(self) -> dict:
        """For the status line: the cadence auto picked, once it has."""
        return {"preview_every": float(self.chosen), "preview_budget": self.budget} if self.chosen else {}
