"""How long a run will take on this machine, and how much memory it needs, said before it starts.

Time: each engine declares the work a request asks for (`Engine.work`: steps x pictures,
iterations, codes x candidates) and what a unit of it cost when measured here (`Engine.cost`:
set-up seconds and seconds per unit, the built-in preset on one CPU thread). Every finished run
refines that for its engine, preset and device: the estimate then follows the machine the
app really runs on, a GPU included. ZeroGPU's requested duration comes from the same numbers.

Memory: the models' weights (the registry's size of loaded models; before loading, the size of
their files: a built-in folder, the hub cache, else the preset's `download_mb`) plus what the
run holds at once (`Engine.memory_work`: pictures x pixels, codes x candidates) times the bytes
per unit measured here (`Engine.memory_cost`), refined by each run's measured peak
(`MemoryWatch`: the process's peak resident memory on a CPU, torch's peak allocation on a GPU).

    ESTIMATES.seconds(engine, request, device)                # before a run
    ESTIMATES.memory(engine, request, registry)               # bytes: weights + activations
    ESTIMATES.say(engine, request, device, registry)          # "About 12 s and 0.4 GB on this machine."
    watch = MemoryWatch(device); watch.start() ... watch.grown()   # during it
    ESTIMATES.observe(engine, request, device, seconds, memory=watch.grown())   # after it
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

FLOOR_S, CAP_S, MARGIN = 15, 300, 3.0    # ZeroGPU durations: at least, at most, times the estimate
REFERENCE = "shapes"                     # the preset `Engine.cost` and `Engine.memory_cost` were measured on
LONG_S = 3600                            # a run longer than this is called very long
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")   # in order of preference per folder


class Estimator:
    def __init__(self, weight: float = 0.5):
        self.weight = weight                     # how much the latest run moves the measured rate
        self._rate: dict[tuple, float] = {}      # (engine, preset, device) -> seconds per unit, measured here
        self._mem: dict[tuple, float] = {}       # (engine, preset, device) -> activation bytes per unit
        self._files: dict[str, int] = {}         # component key -> bytes of its weight files
        self._lock = threading.Lock()

    # --- time ---
    def seconds(self, engine, req, device="cpu", registry=None) -> float:
        """The expected seconds of `req` (models already loaded). Before a preset has run here on a CPU, the
        built-in models' cost is scaled by how much bigger the preset's models are (compute follows size)."""
        setup, per_unit = engine.cost
        key = (engine.name, req.preset, str(device))
        if key in self._rate:
            per_unit = self._rate[key]
        elif str(device) == "cpu" and req.preset != REFERENCE:
            per_unit *= self._size_ratio(engine, req, registry)
        return setup + per_unit * engine.work(req)

    def measured(self, engine, req, device="cpu") -> bool:
        """Whether runs of this engine and preset were timed on this device."""
        return (engine.name, req.preset, str(device)) in self._rate

    def _size_ratio(self, engine, req, registry) -> float:
        """The preset's models' bytes over the built-in ones' (that `Engine.cost` was measured on)."""
        try:
            from pipelines.presets import load_preset

            ref = self.weights(engine, engine.make_request(load_preset(REFERENCE), preset=REFERENCE))
            return min(1e4, max(0.1, self.weights(engine, req, registry) / ref)) if ref > 0 else 1.0
        except Exception:
            return 1.0

    def observe(self, engine, req, device, seconds: float, memory: float | None = None) -> None:
        """A run of `req` took `seconds` (and held `memory` bytes beyond its weights at its peak): blend
        its rates into the measured ones."""
        key = (engine.name, req.preset, str(device))
        setup, per_unit = engine.cost
        work = engine.work(req)
        if work > 0 and seconds > 0:
            self._blend(self._rate, key, max(seconds - setup, 0.0) / work)
        units = engine.memory_work(req)
        if memory is not None and memory >= 0 and units > 0:
            if str(device).startswith("cuda"):       # torch's peak allocation: the run's own
                self._blend(self._mem, key, memory / units)
            else:     # resident growth: memory the process already held is reused, so it is a lower bound
                with self._lock:
                    old = self._mem.get(key, self.activations(engine, req, device) / units)
                    self._mem[key] = max(old, memory / units)

    def _blend(self, rates: dict, key: tuple, rate: float) -> None:
        with self._lock:
            old = rates.get(key)
            rates[key] = rate if old is None else (1 - self.weight) * old + self.weight * rate

    def gpu_seconds(self, engine, req, device="cuda", share: float = 1.0) -> int:
        """ZeroGPU's duration for `share` of the run: a margin over the estimate, within the platform's bounds."""
        return int(min(CAP_S, max(FLOOR_S, MARGIN * self.seconds(engine, req, device) * share)))

    # --- memory ---
    def activations(self, engine, req, device="cpu", registry=None) -> float:
        """The bytes a run of `req` holds beyond its models' weights, at its peak (before a preset has run
        here, the built-in models' bytes per unit scaled by how much bigger the preset's models are)."""
        key = (engine.name, req.preset, str(device))
        per_unit = self._mem.get(key, engine.memory_cost)
        if key not in self._mem and req.preset != REFERENCE:
            per_unit *= self._size_ratio(engine, req, registry)
        return per_unit * engine.memory_work(req)

    def weights(self, engine, req, registry=None) -> float:
        """The bytes of the models `req` runs on: as loaded where they are, else their files."""
        from pipelines.presets import load_preset

        preset = load_preset(req.preset)
        specs = engine.components(preset)
        loaded = {row["key"]: row["size_mb"] * 2**20 for row in registry.status()} if registry is not None else {}
        total, unknown, download = 0.0, 0, 0
        for spec in specs.values():
            download += spec.source in ("hub", "url")
            if spec.key in loaded:
                total += loaded[spec.key]
            elif (size := self._file_bytes(spec, registry)) is not None:
                total += size
            else:
                unknown += 1
        if unknown and preset.download_mb:     # not on this machine yet: their share of the download
            total += preset.download_mb * 2**20 * unknown / max(download, 1)
        return total

    def _file_bytes(self, spec, registry) -> int | None:
        """The size of a component's weight files on this machine (never downloads); None if not here."""
        if spec.key in self._files:
            return self._files[spec.key]
        try:
            from pipelines.presets import PRESETS_DIR
            from pipelines.registry.weights import find_weights, spec_files

            weights_dir = registry.weights_dir if registry is not None else PRESETS_DIR / "weights"
            where = Path(find_weights(spec, weights_dir, False, getattr(registry, "url_cache_dir", None)))
            if spec.files and spec.source != "url":
                paths = [p for p in spec_files(spec, where).values() if p.suffix in WEIGHT_SUFFIXES]
                size = sum(p.stat().st_size for p in paths) if paths else _folder_weights(where.parent)
            elif where.is_file():
                size = where.stat().st_size
            else:
                size = _folder_weights(where)
        except Exception:       # not downloaded yet, or unreadable: the preset's download size says it
            return None
        self._files[spec.key] = size
        return size

    def memory(self, engine, req, registry=None, device=None) -> float:
        """The expected peak bytes of `req`: its models' weights plus what it holds while running."""
        device = device if device is not None else getattr(registry, "device", "cpu")
        return self.weights(engine, req, registry) + self.activations(engine, req, device, registry)

    # --- what the page says ---
    def say(self, engine, req, device="cpu", registry=None) -> str:
        """The estimate as the page shows it: "About 12 s and 0.4 GB on this machine." For a request out of
        the engine's limits, or beyond this machine, one clear sentence; never an exception."""
        try:
            bad = out_of_limits(engine, req)
            if bad:
                return f"No estimate: {bad}"
            s = self.seconds(engine, req, device, registry)
            try:
                mem = self.memory(engine, req, registry, device)
            except Exception:           # an unknown preset: its run says why
                mem = None
            if not math.isfinite(s) or s < 0:
                return "No estimate for these settings."
            said = "Under a second" if human(s) == "under a second" else f"About {human(s)}"
            said += f" and {gigabytes(mem)}" if mem else ""
            if self.measured(engine, req, device):
                said += " on this machine"
            elif req.preset != REFERENCE:
                said += (" (guessed from the built-in models' speed and this preset's size; the first run here "
                         "measures it)")
            else:
                said += " (as measured for the built-in models on one CPU thread; the first run here refines it)"
            room = machine_memory(device)
            if mem and room and mem > room:
                return (f"{said}: more memory than this machine has ({gigabytes(room)}), so this run would fail. "
                        "Lower the batch, size or candidates.")
            if s > LONG_S:
                return f"{said}: a very long run. Stop keeps what it made so far."
            return said + "."
        except Exception:
            return "No estimate for these settings."


class RunMeter:
    """One run's estimate, progress and measurements, for a front end's status line:

        meter = RunMeter(engine, req, registry, loaded=True)   # before the first event (models loaded?)
        ev = next(events); meter.first(ev)
        meter.step(ev); meter.fraction(ev), meter.left(ev)      # each Step
        meter.finished(); meter.actual; meter.observe(final)    # at the Final
    """

    def __init__(self, engine, req, registry, loaded: bool = False, estimator: Estimator | None = None,
                 measure_memory: bool = True):
        self.engine, self.req, self.registry = engine, req, registry
        self.est = estimator or ESTIMATES
        self.device = getattr(registry, "device", "cpu")
        self.estimate = self.est.seconds(engine, req, self.device, registry)
        self.t0: float | None = None          # when the engine started (its first event's elapsed_s back)
        self.actual: float | None = None
        self.watch = MemoryWatch(self.device) if measure_memory else None
        self.held = 0                         # bytes of previews the front end keeps (video frames, strip)
        if self.watch is not None and loaded:      # models in memory: from the start, the first step included
            self.watch.start()

    def first(self, ev) -> None:
        """The run's first event arrived (validation and loading are behind it)."""
        import time

        self.t0 = time.perf_counter() - float(getattr(ev, "elapsed_s", 0.0) or 0.0)
        if self.watch is not None and self.watch.base is None:
            self.watch.start()

    def step(self, ev) -> None:
        if self.watch is not None:
            self.watch.sample()
            # the recorder keeps each preview and its video frame: the page's memory, not the engine's
            self.held += 2 * sum(p.width * p.height * 3 for p in getattr(ev, "previews", {}).values()
                                 if hasattr(p, "width"))

    @staticmethod
    def fraction(ev) -> float:
        """How much of the run is done, 0..1, over its stages."""
        total = max(int(ev.total or 0), 1)
        count = max(int(ev.stage_count or 1), 1)
        return min(1.0, max(0.0, (ev.stage_index + min(ev.step, total) / total) / count))

    def left(self, ev) -> float:
        """Seconds left: from the time per step so far, or the estimate early on."""
        f, spent = self.fraction(ev), float(ev.elapsed_s or 0.0)
        if f >= 0.05 and spent > 0:
            return max(0.0, spent * (1 - f) / f)
        return max(0.0, self.estimate - spent)

    def finished(self) -> float:
        """The run's seconds, from the engine's start to now (its results saved)."""
        import time

        self.actual = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
        return self.actual

    def observe(self, final) -> None:
        """A finished run: its time and peak memory refine the next estimates (not stopped runs)."""
        if getattr(final, "stopped", False) or "seconds" not in final.meta:
            return
        grown = self.watch.grown() if self.watch is not None else None
        if grown is not None and not self.watch.cuda:
            grown = max(0, grown - self.held)
        self.est.observe(self.engine, self.req, self.device, float(final.meta["seconds"]), memory=grown)


def out_of_limits(engine, req) -> str | None:
    """The first of the request's numbers outside the engine's limits, said as a sentence; None if all fit."""
    for name, (lo, hi) in engine.limits.items():
        v = getattr(req, name, None)
        if v is None or isinstance(v, bool):
            continue
        label = name.replace("_", " ").capitalize()
        try:
            x = float(v)
        except (TypeError, ValueError):
            return f"{label} must be a number."
        if not math.isfinite(x) or not lo <= x <= hi:
            return f"{label} must be from {_num(lo)} to {_num(hi)} (got {_num(x)})."
    return None


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e15 else f"{x:.3g}"


def _folder_weights(folder: Path) -> int:
    """Bytes of the weight files under a folder: per folder, one format only (safetensors before bin, ...)."""
    total = 0
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        for suffix in WEIGHT_SUFFIXES:
            files = [p for p in d.glob(f"*{suffix}") if p.is_file()]
            if files:
                total += sum(p.stat().st_size for p in files)
                break
    return total


def machine_memory(device="cpu") -> float | None:
    """The memory a run may use here: the GPU's, or the machine's."""
    try:
        if str(device).startswith("cuda"):
            import torch

            return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError, AssertionError):
        return None


class MemoryWatch:
    """The peak memory a run adds on its device from `start` on: torch's peak allocation on a GPU; on a CPU
    the process's peak resident memory (Linux resets it through /proc/self/clear_refs), else the largest
    resident size seen by `sample`."""

    def __init__(self, device="cpu"):
        self.cuda = str(device).startswith("cuda")
        self.device = device
        self.base: int | None = None
        self.peak = 0
        self._hwm = False

    def start(self) -> None:
        try:
            if self.cuda:
                import torch

                torch.cuda.reset_peak_memory_stats(self.device)
                self.base = torch.cuda.memory_allocated(self.device)
            else:
                self.base = self.peak = _status_bytes("VmRSS")
                try:
                    with open("/proc/self/clear_refs", "w") as f:
                        f.write("5")            # the peak resident size starts again from here
                    self._hwm = True
                except OSError:
                    self._hwm = False
        except Exception:
            self.base = None

    def sample(self) -> None:
        if self.base is not None and not self.cuda and not self._hwm:
            self.peak = max(self.peak, _status_bytes("VmRSS") or 0)

    def grown(self) -> int | None:
        """Bytes above the start at the peak; None when it could not be measured."""
        if self.base is None:
            return None
        try:
            if self.cuda:
                import torch

                return max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
            self.sample()
            peak = _status_bytes("VmHWM") if self._hwm else self.peak
            return max(0, (peak or 0) - self.base)
        except Exception:
            return None


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def human(s: float) -> str:
    """Seconds in words: "under a second", "0.6 s" below 10 s, "12 s", "4 min", "3.2 h"."""
    if s < 0.1:
        return "under a second"
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def gigabytes(b: float) -> str:
    """Bytes as the page says them: "40 MB" below 0.1 GB, else "0.4 GB"."""
    if b < 0.1 * 2**30:
        return f"{max(1, round(b / 2**20))} MB"
    return f"{b / 2**30:.1f} GB"


ESTIMATES = Estimator()
