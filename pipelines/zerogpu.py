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


# ---------------------------------------------------------------------------
# Engine runs as ZeroGPU calls
# ---------------------------------------------------------------------------
#
# A decorated function runs in a forked worker: everything crossing the boundary is pickled
# (arguments and every yield), and the worker's changes to globals never come back. So a GPU
# call takes only the engine's name, the request (plain data and PIL images), a paused run's
# state and a step bound, and finds the registry, with its models already placed at import,
# as a global that the fork inherited. A long run is a chain of bounded calls: each ends
# in a `Pause` whose state the server keeps and hands to the next call.

CALL_STEPS = int(os.environ.get("ATELIER_GPU_CALL_STEPS", "100"))   # steps of a pausable engine per GPU call
_registry = None


def serve(registry) -> None:
    """The registry that GPU calls use (app.py sets it at import, before the worker forks)."""
    global _registry
    _registry = registry


def preload_default_preset(registry) -> None:
    """Load the first preset's models now (placed on the registry's device), not on the first run."""
    from pipelines.presets import list_presets

    presets = list_presets()
    if presets:
        for spec in presets[0].components.values():
            registry.get(spec)


def call_seconds(name: str, req, state=None, max_steps: int | None = None) -> int:
    """The GPU time to ask for one call: a margin over the estimate of the run, or of the call's share of it."""
    from pipelines.engines import ENGINES
    from pipelines.estimate import ESTIMATES

    total = getattr(req, "iterations", None) or getattr(req, "steps", None)
    share = min(1.0, max_steps / total) if max_steps and total else 1.0
    return ESTIMATES.gpu_seconds(ENGINES[name], req, "cuda", share)


def engine_call(name: str, req, state=None, max_steps: int | None = None):
    """One GPU call: the engine's events, from a paused state and up to `max_steps` steps when it resumes."""
    from pipelines.engines import ENGINES
    from pipelines.events import never_stop

    engine = ENGINES[name]
    if engine.pausable:
        yield from engine.run(req, _registry, never_stop, resume=state, max_steps=max_steps)
    else:
        yield from engine.run(req, _registry, never_stop)


gpu_engine_call = gpu(duration=call_seconds)(engine_call)


class ZeroGPUFailure(RuntimeError):
    """ZeroGPU refused or ended a call (quota, no free GPU, over time): one line for the page."""


# ZeroGPU's own messages (spaces 0.5x) -> what the user can do about them
_FAILURES = (
    (("quota",), "Your ZeroGPU quota is used up for now (it refills over the day; signed-in and PRO users get "
                 "more). A shorter run (fewer steps or iterations, a smaller batch) may still fit."),
    (("no gpu", "not available", "unavailable"), "No GPU was free within a minute: the Space is busy. Press Run "
                                                 "again in a moment."),
    (("exceeding", "aborted", "duration"), "The GPU call ran out of its time and was ended. Try fewer steps or "
                                           "iterations, or run it again."),
)


def failure_message(e: BaseException) -> str | None:
    """The user's line for a ZeroGPU failure, or None when `e` is something else."""
    text = str(e).lower()
    if "gpu" not in text and "quota" not in text:
        return None
    for words, message in _FAILURES:
        if any(w in text for w in words):
            return message
    return None


class BoundedRun:
    """A run made of GPU calls of at most `max_steps` steps each (one call for an engine that cannot
    pause), iterated for its events. Stop takes effect between calls: one more call ends the run
    where it stands. `state` and `step` say where it stands after its last pause, so a run that
    ZeroGPU refused, or whose page went away, can go on later from there: `BoundedRun(..., state=...)`."""

    def __init__(self, call, name: str, req, should_stop, max_steps: int = CALL_STEPS, state=None, step: int = 0):
        self.call, self.name, self.req, self.should_stop, self.max_steps = call, name, req, should_stop, max_steps
        self.state, self.step = state, step

    def __iter__(self):
        from pipelines.events import Pause

        while True:
            paused = None
            try:
                for ev in self.call(self.name, self.req, self.state, self.max_steps):
                    if isinstance(ev, Pause):
                        paused = ev
                    else:
                        yield ev
            except Exception as e:          # ZeroGPU's refusals become one clear line; anything else as it is
                message = failure_message(e)
                if message is None:
                    raise
                raise ZeroGPUFailure(message) from e
            if paused is None:
                return
            self.state, self.step = paused.state, paused.step
            if self.should_stop():
                yield from self.call(self.name, self.req, self.state, 0)
                return


def in_bounded_calls(call, name: str, req, should_stop, max_steps: int = CALL_STEPS):
    """The events of a `BoundedRun` from its start."""
    return iter(BoundedRun(call, name, req, should_stop, max_steps))
