"""How long a run will take on this machine, said before it starts.

Each engine declares the work a request asks for (`Engine.work`: steps x pictures, iterations,
codes x candidates) and what a unit of it cost when measured here (`Engine.cost`: set-up
seconds and seconds per unit, the built-in preset on one CPU thread). Every finished run
refines that for its engine, preset and device: the estimate then follows the machine the
app really runs on, a GPU included. ZeroGPU's requested duration comes from the same numbers.

    ESTIMATES.seconds(engine, request, device)          # before a run
    ESTIMATES.observe(engine, request, device, seconds)  # after it
"""
from __future__ import annotations

import threading

FLOOR_S, CAP_S, MARGIN = 15, 300, 3.0    # ZeroGPU durations: at least, at most, times the estimate


class Estimator:
    def __init__(self, weight: float = 0.5):
        self.weight = weight                     # how much the latest run moves the measured rate
        self._rate: dict[tuple, float] = {}      # (engine, preset, device) -> seconds per unit, measured here
        self._lock = threading.Lock()

    def seconds(self, engine, req, device="cpu") -> float:
        """The expected seconds of `req` (models already loaded)."""
        setup, per_unit = engine.cost
        per_unit = self._rate.get((engine.name, req.preset, str(device)), per_unit)
        return setup + per_unit * engine.work(req)

    def observe(self, engine, req, device, seconds: float) -> None:
        """A run of `req` took `seconds`: blend its rate into the measured one."""
        setup, per_unit = engine.cost
        work = engine.work(req)
        if work <= 0 or seconds <= 0:
            return
        rate = max(seconds - setup, 0.0) / work
        key = (engine.name, req.preset, str(device))
        with self._lock:
            old = self._rate.get(key)
            self._rate[key] = rate if old is None else (1 - self.weight) * old + self.weight * rate

    def gpu_seconds(self, engine, req, device="cuda", share: float = 1.0) -> int:
        """ZeroGPU's duration for `share` of the run: a margin over the estimate, within the platform's bounds."""
        return int(min(CAP_S, max(FLOOR_S, MARGIN * self.seconds(engine, req, device) * share)))

    def say(self, engine, req, device="cpu") -> str:
        """The estimate as the page shows it."""
        s = human(self.seconds(engine, req, device))
        s = "Under a second" if s == "under a second" else f"About {s}"
        if (engine.name, req.preset, str(device)) in self._rate:
            return f"{s} on this machine."
        return f"{s} (as measured for the built-in models on one CPU thread; the first run here refines it)."


def human(s: float) -> str:
    if s < 1:
        return "under a second"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"


ESTIMATES = Estimator()
