"""Checks every engine applies to user-supplied numbers, with messages that name the allowed range."""
from __future__ import annotations

import math

MAX_STEPS = 1000          # denoising steps: the built-in schedules have 1000 timesteps
MAX_BATCH = 16            # pictures drawn as one batch
MAX_GUIDANCE = 50.0       # classifier-free guidance scales
MAX_SIDE = 1024           # pictures' width and height, where an engine lets them be chosen
MAX_ASPECT = 4.0          # uploads wider or taller than this are refused, not squashed


def number(name: str, value, lo: float, hi: float, integer: bool = False, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] ((lo, hi] when lo_open), or a ValueError naming the allowed range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v > hi or (integer and v != int(v)):
        kind = "a whole number" if integer else "a number"
        lower = f"above {lo:g} and at most" if lo_open else f"from {lo:g} to"
        raise ValueError(f"{name} must be {kind} {lower} {hi:g} (got {value!r})")
    return int(v) if integer else v


def squarish(img, name: str) -> None:
    """Refuse a picture (PIL) whose sides differ by more than MAX_ASPECT: the engines crop to a square."""
    if img is None:
        return
    w, h = img.size
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise ValueError(f"The {name} is {w}x{h}; its sides may differ by at most {MAX_ASPECT:g}x "
                         "(crop it closer to a square).")


MAX_SEED = 2**63 - 1      # seeds and subseeds: torch generators take 64 bits; the page's JSON keeps 63


def variation(subseed, strength) -> tuple[int, float]:
    """The vary-seed fields (pipelines/seeds.py): a subseed from 0 to MAX_SEED, its strength from 0 (off) to 1."""
    return (int(number("Subseed", subseed, 0, MAX_SEED, integer=True)),
            float(number("Subseed strength", strength, 0, 1)))
