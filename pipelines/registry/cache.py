"""The model registry: the one place that loads, shares and places model weights.

app.py creates one `Registry`; pipelines ask it for models by `ComponentSpec` and never load
weights themselves. Models load lazily on first use, are shared by every preset naming the
same weights (`spec.key`), and live on `registry.device`.

Locking: `_lock` guards the cache dicts and the per-entry counters; a per-key lock guards
loading and moving one model, so concurrent `get()`s of one spec load it exactly once while
different specs load in parallel. Nothing waits on a key lock while holding `_lock`.

Memory budget (`budget_bytes`): after a load or `use()`, while the resident models exceed it,
the least recently used model that is not in use is offloaded. `offload_device` says where to:
None means "drop it from the cache" (the default when the device is the CPU; it reloads lazily);
a device means "move it there" (CPU, the default on a GPU; it moves back on the next get/use).
Every placement goes through `Registry._move`. Test seam: on a CPU-only machine, set
`registry.offload_device = torch.device("cpu")` and spy on `_move` to exercise the GPU path.
"""
from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn

from ..presets import PRESETS_DIR, ComponentSpec
from .loaders import DEFAULT_LOADERS
from .runtime import HALF_SAFE_KINDS, pick_device, wait_for_warm_imports
from .weights import (DeviceOutOfMemory, ModelUnavailable, damaged, find_weights, first_line, load_errors,
                      spec_files, weights_file, weights_id)

log = logging.getLogger(__name__)

Loader = Callable[[ComponentSpec, "Registry"], nn.Module]


@dataclass
class LoadedModel:
    key: str
    kind: str
    module: nn.Module
    device: torch.device
    dtype: torch.dtype | None
    nbytes: int                  # parameters + buffers
    weights_id: str | None
    last_used: float             # time.monotonic()
    in_use: int = 0              # runs holding it via use(); never offloaded while > 0
    offloaded: bool = False      # moved to offload_device to respect the budget


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def _dtype(module: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


class Registry:
    def __init__(self, device: str | torch.device | None = None, budget_bytes: int | None = None,
                 half_on_gpu: bool = True, loaders: dict[str, Loader] | None = None,
                 weights_dir: str | Path | None = None, allow_network: bool | None = None):
        self.device = pick_device(device)
        if budget_bytes is None and os.environ.get("ATELIER_MEMORY_BUDGET_GB"):
            budget_bytes = int(float(os.environ["ATELIER_MEMORY_BUDGET_GB"]) * 2**30)
        self.budget_bytes = budget_bytes
        self.half_on_gpu = half_on_gpu
        self.weights_dir = Path(weights_dir) if weights_dir is not None else PRESETS_DIR / "weights"
        self.allow_network = os.environ.get("HF_HUB_OFFLINE") != "1" if allow_network is None else allow_network
        self.offload_device: torch.device | None = None if self.device.type == "cpu" else torch.device("cpu")
        self.url_cache_dir: Path | None = None   # None: <HF hub cache>/atelier-urls
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._resolved: dict[str, Path | str] = {}
        self._loaders: dict[str, Loader] = {}
        for kind, fn in (DEFAULT_LOADERS if loaders is None else loaders).items():
            self.register_loader(kind, fn)

    def register_loader(self, kind: str, fn: Loader) -> None:
        self._loaders[kind] = fn

    # -- getting models ---------------------------------------------------------------------

    def get(self, spec: ComponentSpec) -> nn.Module:
        """The model for `spec` on `self.device`, loaded on first use and shared afterwards.
        It may be offloaded later to respect the budget: runs should hold models with `use()`."""
        entry = self._acquire(spec, pin=False)
        self._enforce_budget(keep={spec.key})
        return entry.module

    def loaded(self, spec: ComponentSpec) -> nn.Module | None:
        """The model for `spec` when it is loaded already (on the device or offloaded), else None; loads nothing
        (the page's checks read a loaded model's config: its codebook size, its downsampling factor)."""
        with self._lock:
            entry = self._models.get(spec.key)
        return entry.module if entry is not None else None

    @contextmanager
    def use(self, *specs: ComponentSpec) -> Iterator[tuple[nn.Module, ...]]:
        """Hold models on the device for a run: they are not offloaded until the block ends."""
        pinned: list[LoadedModel] = []
        try:
            for spec in specs:
                pinned.append(self._acquire(spec, pin=True))
            self._enforce_budget(keep={e.key for e in pinned})
            yield tuple(e.module for e in pinned)
        except torch.OutOfMemoryError as e:
            raise self._out_of_memory(pinned, e) from None
        finally:
            with self._lock:
                for e in pinned:
                    e.in_use -= 1
                    e.last_used = time.monotonic()

    def _acquire(self, spec: ComponentSpec, pin: bool) -> LoadedModel:
        with self._lock:
            key_lock = self._key_locks.setdefault(spec.key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._models.get(spec.key)
            if entry is None:
                entry = self._load(spec)
                with self._lock:
                    self._models[spec.key] = entry
            elif entry.offloaded:
                self._move(entry.module, self.device)
                entry.device, entry.offloaded = self.device, False
                log.info("Moved %s back to %s", spec.key, self.device)
            with self._lock:  # pinned under the key lock, so the budget never offloads it meanwhile
                entry.last_used = time.monotonic()
                entry.in_use += int(pin)
        return entry

    def _load(self, spec: ComponentSpec) -> LoadedModel:
        loader = self._loaders.get(spec.kind)
        if loader is None:
            raise ModelUnavailable(f"No loader for component kind '{spec.kind}' (known: {', '.join(sorted(self._loaders))}).")
        wait_for_warm_imports()
        t0 = time.monotonic()
        try:
            module = loader(spec, self)
        except ModelUnavailable:
            raise
        except torch.OutOfMemoryError as e:
            raise self._out_of_memory([], e) from None
        except load_errors() as e:
            raise damaged(spec, self._weights_file(spec) or self._resolved.get(spec.key, spec.location),
                           first_line(e)) from e
        module.eval().requires_grad_(False)
        half = self.half_on_gpu and self.device.type == "cuda" and spec.kind in HALF_SAFE_KINDS
        module = self._move(module, self.device, torch.float16 if half else None)
        file = self._weights_file(spec)
        entry = LoadedModel(spec.key, spec.kind, module, self.device, _dtype(module), _nbytes(module),
                            weights_id(file) if file is not None and file.is_file() else None, time.monotonic())
        log.info("Loaded %s on %s (%.1f MB, %s, weights %s) in %.2f s", spec.key, self.device,
                 entry.nbytes / 2**20, entry.dtype, entry.weights_id, time.monotonic() - t0)
        return entry

    def _move(self, module: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
        """Every placement goes through here (nn.Module.to works in place, so identity is kept)."""
        return module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)

    # -- memory budget ----------------------------------------------------------------------

    def _enforce_budget(self, keep: set[str]) -> None:
        """Offload least-recently-used idle models until the resident ones fit the budget."""
        if self.budget_bytes is None:
            return
        while True:
            with self._lock:
                resident = [e for e in self._models.values() if not e.offloaded]
                over = sum(e.nbytes for e in resident) - self.budget_bytes
                if over <= 0:
                    return
                victim = key_lock = None
                for e in sorted(resident, key=lambda e: e.last_used):
                    # a busy key lock means it is loading or moving right now: skip it
                    if not e.in_use and e.key not in keep and self._key_locks[e.key].acquire(blocking=False):
                        victim, key_lock = e, self._key_locks[e.key]
                        break
                if victim is None:
                    log.warning("Memory budget exceeded by %.1f MB, but every model left is in use; going on.",
                                over / 2**20)
                    return
                if self.offload_device is None:  # CPU: drop it; it reloads lazily
                    del self._models[victim.key]
                    key_lock.release()
                    log.info("Evicted %s (%.1f MB) to fit the memory budget", victim.key, victim.nbytes / 2**20)
                    continue
            try:  # move outside _lock; the key lock keeps it from being used or pinned meanwhile
                self._move(victim.module, self.offload_device)
                with self._lock:
                    victim.device, victim.offloaded = self.offload_device, True
                log.info("Offloaded %s (%.1f MB) to %s", victim.key, victim.nbytes / 2**20, self.offload_device)
            finally:
                key_lock.release()

    # -- status and unloading ---------------------------------------------------------------

    def status(self) -> list[dict]:
        """One row per loaded model, most recently used first, for the UI."""
        now = time.monotonic()
        with self._lock:
            entries = sorted(self._models.values(), key=lambda e: -e.last_used)
            return [{"key": e.key, "kind": e.kind, "device": str(e.device),
                     "dtype": str(e.dtype).removeprefix("torch."), "size_mb": round(e.nbytes / 2**20, 2),
                     "in_use": e.in_use, "last_used_s_ago": round(now - e.last_used, 1),
                     "offloaded": e.offloaded, "weights_id": e.weights_id} for e in entries]

    def describe(self, *specs: ComponentSpec, **roles: ComponentSpec) -> dict[str, dict]:
        """JSON-ready provenance for run metadata: kind (or the role a keyword gives) -> key, weights_id,
        dtype (None if not loaded)."""
        with self._lock:
            out = {}
            for role, spec in [(None, s) for s in specs] + list(roles.items()):
                e = self._models.get(spec.key)
                name = role or (spec.kind if spec.kind not in out else spec.key)
                out[name] = {"key": spec.key, "weights_id": e.weights_id if e else None,
                             "dtype": str(e.dtype).removeprefix("torch.") if e else None}
            return out

    def _out_of_memory(self, pinned: list[LoadedModel], error: BaseException) -> DeviceOutOfMemory:
        """Free what can be freed after an out-of-memory error; the message for the user."""
        with self._lock:
            idle = [k for k, e in self._models.items() if e.in_use == 0 and e not in pinned]
        for key in idle:
            self.unload(key)
        gc.collect()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("Out of memory on %s: %s; unloaded %d idle model(s)", self.device, first_line(error), len(idle))
        return DeviceOutOfMemory(
            f"Out of memory on {self.device} during this run. Try a smaller size, batch or number of samples; "
            f"idle models were unloaded ({len(idle)}), so the next run starts with more room.")

    def unload(self, key: str | None = None) -> None:
        """Drop one model (by key) or all of them, e.g. after running out of memory."""
        with self._lock:
            keys = list(self._models) if key is None else [key]
            dropped = [self._models.pop(k) for k in keys if k in self._models]
        for e in dropped:
            log.info("Unloaded %s%s", e.key, " (still held by a run)" if e.in_use else "")
        del dropped
        gc.collect()
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- finding weight files ---------------------------------------------------------------

    def resolve(self, spec: ComponentSpec) -> Path | str:
        """Local path of a component's files (a hub id without `files` stays a str for transformers)."""
        where = find_weights(spec, self.weights_dir, self.allow_network, self.url_cache_dir)
        self._resolved[spec.key] = where
        return where

    def availability(self, spec: ComponentSpec) -> str | None:
        """None when the component's files are on this machine (nothing to download); else one sentence:
        that it downloads on first use, or why it cannot load now. Looks only: never downloads."""
        try:
            find_weights(spec, self.weights_dir, False, self.url_cache_dir)
            return None
        except ModelUnavailable as e:
            if self.allow_network and spec.source in ("hub", "url") and "cannot be reached" in str(e):
                return "downloads on first use"
            return first_line(e)

    def files(self, spec: ComponentSpec, where: Path | str | None = None) -> dict[str, Path]:
        """Role -> local file for components that name their files (`files`, or `url`)."""
        return spec_files(spec, self.resolve(spec) if where is None else where)

    def _weights_file(self, spec: ComponentSpec) -> Path | None:
        """The main weights file of a resolved component (for weights_id and messages)."""
        where = self._resolved.get(spec.key)
        return None if where is None else weights_file(spec, where)
