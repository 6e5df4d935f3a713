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

Compute precision: `compute_dtype` picks an engine pass's autocast dtype for a device ("auto":
bfloat16 on a CPU that has it in hardware, for passes whose images hold 64x64 pixels or more
together; float32 elsewhere), and `autocast` opens it; weights stay as loaded.
"""
from __future__ import annotations

import gc
import hashlib
import itertools
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator
from urllib.parse import urlsplit

import torch
import torch.nn as nn

from .presets import PRESETS_DIR, ComponentSpec, url_filename

log = logging.getLogger(__name__)

ROOT = PRESETS_DIR.parent
HALF_SAFE_KINDS = frozenset({"clip"})   # kinds that run correctly in float16 on a GPU
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
Loader = Callable[[ComponentSpec, "Registry"], nn.Module]
_SUGGEST = "Use the built-in 'shapes' preset, or download it to a folder and make a preset with \"path\"."


class ModelUnavailable(RuntimeError):
    """A model cannot be loaded; the message is one sentence for the user."""


class DeviceOutOfMemory(RuntimeError):
    """A run ran out of device memory; idle models were unloaded, so the next run can work."""


def pick_device(override: str | torch.device | None = None) -> torch.device:
    """`override`, else env ATELIER_DEVICE, else the best available: cuda > mps > cpu."""
    choice = str(override if override is not None else os.environ.get("ATELIER_DEVICE", "")).strip().lower()
    if choice in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {choice!r}: choose one of {', '.join(DEVICE_CHOICES)}.")
    if (device.type == "cuda" and not torch.cuda.is_available()) or \
            (device.type == "mps" and not torch.backends.mps.is_available()):
        raise ValueError(f"Device {choice!r} was asked for but is not available on this machine.")
    return device


PRECISIONS = ("auto", "float32", "bfloat16")


def worker_threads() -> int:
    """CPU threads for an engine run in one of the app's worker threads: $ATELIER_THREADS, else every core but
    one (at least 1). The app runs each engine in a worker thread while its server thread encodes previews and
    serves pages, and torch's OpenMP threads there are slow when they must share the cores: on this 2-core VM
    the shapes VQGAN+CLIP loop in a worker thread ran at 5-11 it/s with 2 threads and 8-12 with 1 (in the main
    thread with nothing beside it, 11-17 with 2). The command line and the benches keep torch's default (or
    their --threads)."""
    env = os.environ.get("ATELIER_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("ATELIER_THREADS=%r is not a whole number; ignored", env)
    return max(1, (os.cpu_count() or 1) - 1)


# The libraries the engines import on first use, and the names they take from them.
WARM_IMPORTS = (("transformers", ("CLIPModel", "CLIPTokenizer", "CLIPTokenizerFast", "GPT2LMHeadModel")),
                ("diffusers", ("UNet2DConditionModel", "UNet2DModel", "PriorTransformer", "DDIMScheduler",
                               "DPMSolverMultistepScheduler")),
                ("kornia.augmentation", ()))


_warm_thread: threading.Thread | None = None


def wait_for_warm_imports() -> None:
    """Block until warm_imports has finished, if it is running: transformers' lazy module is not safe to
    import from two threads at once (a run that started loading CLIP during the warm import once failed
    with "cannot import name 'AutoTokenizer' from 'transformers'"). The wait is time the import needs anyway."""
    thread = _warm_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join()


def warm_imports() -> threading.Thread:
    """Import, in a background thread, the library code the engines use (no model is loaded: loading stays lazy).
    Importing transformers' CLIP alone takes about 3 s on this VM, against 0.14 s to load the built-in CLIP
    after it, so without this the first run after launch spent 4 s on "Loading the models"."""
    def work():
        import importlib

        for module, names in WARM_IMPORTS:
            try:
                mod = importlib.import_module(module)
                for name in names:
                    getattr(mod, name)
            except Exception as e:  # noqa: BLE001 - a missing extra only costs that engine its first-run time
                log.debug("warm import of %s failed: %s", module, e)

    global _warm_thread
    thread = threading.Thread(target=work, name="warm-imports", daemon=True)
    _warm_thread = thread
    thread.start()
    return thread


def use_worker_threads() -> None:
    """Set the calling thread's torch CPU threads to `worker_threads()` (OpenMP's setting is per thread)."""
    torch.set_num_threads(worker_threads())


def native_bfloat16(device: torch.device) -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), where autocast
    roughly halves the time of large convolutions and matmuls; without it bfloat16 is emulated, and slower."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume the safe answer
        return False


AUTO_BF16_MIN_PIXELS = 64 * 64   # below this many pixels per pass the casts cost more than bfloat16 saves


def compute_dtype(device: torch.device, precision: str = "auto", pixels: int | None = None) -> torch.dtype:
    """The autocast dtype for a heavy pass over `pixels` pixels (all of the pass's images together): `precision`
    itself, or for "auto" bfloat16 on a CPU with native bfloat16 when the pass holds at least AUTO_BF16_MIN_PIXELS,
    and float32 otherwise (tiny passes are dominated by per-operation costs; on a GPU the registry already keeps
    CLIP in float16). Measured on this 2-core AVX512-BF16 CPU, forward + backward: the shapes CLIP on 1, 2, 4, 8
    and 32 cutouts of 32x32 took 6.8 / 6.6 / 10.1 / 17.4 / 64 ms in float32 and 10.1 / 7.1 / 9.8 / 12.8 / 36 ms
    in bfloat16, so the crossover is 4 cutouts, 4096 pixels; one 64x64 decoder pass is the same size."""
    if precision not in PRECISIONS:
        raise ValueError(f"Precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "auto":
        big = pixels is None or pixels >= AUTO_BF16_MIN_PIXELS
        return torch.bfloat16 if big and native_bfloat16(device) else torch.float32
    return getattr(torch, precision)


def autocast(device: torch.device, dtype: torch.dtype):
    """A fresh autocast context for `dtype` on `device` (a no-op context for float32)."""
    from contextlib import nullcontext

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def weights_id(path: str | Path, chunk: int = 1 << 20) -> str:
    """Short sha256 of a weights file; files over 2 chunks hash only the first and last chunk + size."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 2 * chunk:
            h.update(f.read())
        else:
            h.update(f.read(chunk))
            f.seek(-chunk, os.SEEK_END)
            h.update(f.read(chunk))
    return h.hexdigest()[:12]


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


def _show(path: Path | str) -> str:
    """A path relative to the repo root when inside it, for messages."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        return str(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _damaged(spec: ComponentSpec, where: Path | str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(f"The weights of '{spec.label}' are missing or damaged ({_show(where)}: {reason}).")


def _unreachable(spec: ComponentSpec, reason: str) -> ModelUnavailable:
    origin = "the Hugging Face Hub" if spec.source == "hub" else urlsplit(spec.location).netloc
    return ModelUnavailable(f"The preset needs '{spec.label}' from {origin}, which cannot be reached ({reason}). {_SUGGEST}")


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds (DNS included)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "these weight files are unusable" (not programming errors)."""
    import pickle

    import yaml
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError,
            yaml.YAMLError)


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
        defaults = {"vqgan": load_vqgan_component, "clip": load_clip_component,
                    "diffusion": load_diffusion_component, "dalle": load_dalle_component,
                    "unclip_prior": load_unclip_prior_component, "unclip_decoder": load_unclip_decoder_component,
                    "karlo": load_karlo_component}
        for kind, fn in (defaults if loaders is None else loaders).items():
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
        except _load_errors() as e:
            raise _damaged(spec, self._weights_file(spec) or self._resolved.get(spec.key, spec.location),
                           _first_line(e)) from e
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
        log.warning("Out of memory on %s: %s; unloaded %d idle model(s)", self.device, _first_line(error), len(idle))
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
        if spec.source == "builtin":
            where: Path | str = self.weights_dir / spec.location
            if not where.is_dir():
                raise _damaged(spec, where, "folder not found")
        elif spec.source == "path":
            where = Path(spec.location).expanduser()
            if not where.exists():
                raise _damaged(spec, where, "not found")
        elif spec.source == "hub":
            where = self._from_hub(spec)
        elif spec.source == "url":
            where = self._from_urls(spec)
        else:
            raise ModelUnavailable(f"Unknown source '{spec.source}' for '{spec.label}'.")
        self._resolved[spec.key] = where
        return where

    def files(self, spec: ComponentSpec, where: Path | str | None = None) -> dict[str, Path]:
        """Role -> local file for components that name their files (`files`, or `url`)."""
        where = Path(self.resolve(spec) if where is None else where)
        if spec.source == "url":
            return {role: where / f"{role}-{url_filename(u)}" for role, u in spec.files.items()}
        return {role: where / name for role, name in spec.files.items()}

    def _from_hub(self, spec: ComponentSpec) -> Path | str:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                            RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

        names = list(spec.files.values()) or ["config.json"]  # without files, config.json proves it is there
        try:
            try:  # 1. the hub cache first: a downloaded model needs no network
                paths = [hf_hub_download(spec.location, n, revision=spec.revision, local_files_only=True)
                         for n in names]
            except LocalEntryNotFoundError:
                if not self.allow_network:
                    raise
                # 2. a quick look at the network before the hub client's minute of retries
                from huggingface_hub import constants

                if not _reachable(urlsplit(constants.ENDPOINT).hostname or "huggingface.co"):
                    raise _unreachable(spec, "no network") from None
                log.info("Downloading %s from the Hugging Face Hub (first use)", spec.location)
                paths = [hf_hub_download(spec.location, n, revision=spec.revision) for n in names]
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            raise _unreachable(spec, "offline" if not self.allow_network else _first_line(e)) from e
        except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError, HFValidationError) as e:
            raise ModelUnavailable(f"The Hugging Face Hub does not provide '{spec.location}' "
                                   f"({_first_line(e)}). {_SUGGEST}") from e
        except ModelUnavailable:
            raise
        except Exception as e:  # connection errors of the HTTP client, timeouts
            raise _unreachable(spec, _first_line(e)) from e
        if not spec.files:
            return spec.location
        # the snapshot folder: up as many levels as the first name has parts
        return Path(paths[0]).parents[len(PurePosixPath(names[0]).parts) - 1]

    def _from_urls(self, spec: ComponentSpec) -> Path:
        cache = self.url_cache_dir
        if cache is None:
            from huggingface_hub import constants

            cache = Path(constants.HF_HUB_CACHE) / "atelier-urls"
        folder = cache / hashlib.sha256(spec.location.encode()).hexdigest()[:16]
        missing = {role: p for role, p in self.files(spec, folder).items() if not p.is_file()}
        if missing and not self.allow_network:
            raise _unreachable(spec, "offline")
        for role, path in missing.items():
            url, part = spec.files[role], path.with_name(path.name + ".part")
            log.info("Downloading %s to %s", url, path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                request = urllib.request.Request(url, headers={"User-Agent": "atelier"})
                with urllib.request.urlopen(request, timeout=60) as r, part.open("wb") as f:
                    shutil.copyfileobj(r, f, 1 << 20)
                os.replace(part, path)  # complete files only: a broken download leaves no file
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                part.unlink(missing_ok=True)
                raise _unreachable(spec, _first_line(getattr(e, "reason", e))) from e
            except OSError as e:
                part.unlink(missing_ok=True)
                raise ModelUnavailable(f"Could not save '{spec.label}' to {path} ({_first_line(e)}).") from e
        return folder

    def _weights_file(self, spec: ComponentSpec) -> Path | None:
        """The main weights file of a resolved component (for weights_id and messages)."""
        where = self._resolved.get(spec.key)
        if where is None:
            return None
        if isinstance(where, str):  # a hub id: look in the hub cache
            from huggingface_hub import try_to_load_from_cache

            for name in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(where, name, revision=spec.revision)
                if isinstance(hit, str):
                    return Path(hit)
            return None
        if where.is_file():
            return where
        named = self.files(spec, where)
        if "ckpt" in named:
            return named["ckpt"]
        for pattern in ("model.safetensors", "*.safetensors", "*.ckpt", "*.bin", "*.pt", "*.pth"):
            hits = sorted(where.glob(pattern))
            if hits:
                return hits[0]
        return None


# -- default loaders: (spec, registry) -> nn.Module ---------------------------------------------


def load_vqgan_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """An Atelier or taming folder; a lone .ckpt with a .yaml beside it; or named ckpt + config files."""
    from .models import vqgan

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
    from .models.clip import load_clip

    return load_clip(registry.resolve(spec), local_files_only=not registry.allow_network)


def load_diffusion_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """Atelier's latent diffusion folder, or a diffusers unconditional pipeline (hub ones name their `files`)."""
    from .models.diffusion import load_any

    where = registry.resolve(spec)
    if isinstance(where, str):
        raise ValueError("a hub diffusion model needs \"files\" naming its config, weights and scheduler_config.json")
    return load_any(where)


def load_dalle_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """A DALL-E folder: the GPT (config.json + model.safetensors), dalle.json and tokenizer.json."""
    from .models.dalle import from_pretrained

    return from_pretrained(registry.resolve(spec))


def load_unclip_prior_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """Atelier's unCLIP diffusion prior folder (config.json + model.safetensors)."""
    from .models.unclip import from_pretrained

    return from_pretrained(registry.resolve(spec), kind="prior")


def load_unclip_decoder_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """Atelier's unCLIP decoder folder (config.json + model.safetensors)."""
    from .models.unclip import from_pretrained

    return from_pretrained(registry.resolve(spec), kind="decoder")


def load_karlo_component(spec: ComponentSpec, registry: Registry) -> nn.Module:
    """A diffusers UnCLIPPipeline folder or hub id (Karlo's layout: model_index.json and one folder per part).
    A hub id is resolved first (the cache, then a quick network probe); diffusers then fetches the parts."""
    from .models.karlo import load_karlo

    where = registry.resolve(spec)
    if spec.source == "hub":
        return load_karlo(spec.location, revision=spec.revision, local_files_only=not registry.allow_network)
    return load_karlo(where)
