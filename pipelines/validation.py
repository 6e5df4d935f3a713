"""Checks every engine applies to user-supplied numbers, with messages that name the allowed range."""
from __future__ import annotations

import math


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
