"""Where and how models run: the device, the CPU threads, the compute precision, and warm imports.

Compute precision: `compute_dtype` picks an engine pass's autocast dtype for a device ("auto":
bfloat16 on a CPU that has it in hardware, for passes whose images hold 64x64 pixels or more
together; float32 elsewhere), and `autocast` opens it; weights stay as loaded.
"""
from __future__ import annotations

import logging
import os
import threading

import torch

log = logging.getLogger(__name__)

HALF_SAFE_KINDS = frozenset({"clip"})   # kinds that run correctly in float16 on a GPU
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


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

