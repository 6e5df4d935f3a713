"""Pixels: model output to images, images to model input, and resizing.

* :func:`to_uint8` is the one place where model output (a tensor in [-1, 1] or [0, 1]) becomes
  pixels; :func:`to_pil` wraps it and :func:`row` lays a batch side by side. Rounding is
  half-up and values are clamped, so -1 -> 0, 0 -> 128 and 1 -> 255.
* :func:`to_tensor` goes the other way: an RGB image -> a float tensor in a value range.
* :func:`to_rgb` turns any PIL mode into RGB (transparency onto white).
* :func:`enlarge` (nearest neighbour, a whole factor) and :func:`square` (centre crop, then
  LANCZOS) resize.

This module never imports gradio, and imports torch only if the caller already did (or asks
for a tensor with :func:`to_tensor`).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "enlarge",
    "enlarge_factor",
    "is_tensor",
    "row",
    "square",
    "to_pil",
    "to_rgb",
    "to_tensor",
    "to_uint8",
]


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


# ---------------------------------------------------------------------------------------------
# Tensors and arrays to pixels


def to_uint8(x: Any, *, value_range: tuple[float, float] = (-1, 1)) -> np.ndarray:
    """Model output -> uint8 pixels of shape (H, W, 3).

    ``x`` is a torch tensor ``(C, H, W)`` or ``(1, C, H, W)`` (or ``(H, W)``), with values in
    ``value_range``, or a numpy array in ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` layout.
    C is 1 (grey, repeated) or 3. A uint8 array or tensor is taken as pixels already
    (``value_range`` is ignored); bool maps to 0/255; any other dtype is mapped from
    ``value_range``. Tensors are always channels-first; for arrays, a last axis of 1 or 3
    means (H, W, C).
    Values are clamped, rounded half-up, and NaN becomes the low end.
    """
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    if is_tensor(x):
        torch = sys.modules["torch"]
        t = x.detach().to("cpu")
        # uint8 and bool tensors are pixels already; everything else is mapped as float
        a = t.numpy() if t.dtype in (torch.uint8, torch.bool) else t.float().numpy()
        if a.ndim == 4:
            if a.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of shape {tuple(a.shape)}")
            a = a[0]
        if a.ndim == 3:
            a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    elif isinstance(x, np.ndarray):
        a = x
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 3 and a.shape[-1] not in (1, 3) and a.shape[0] in (1, 3):
            a = np.moveaxis(a, 0, -1)  # channels first
    else:
        raise TypeError(f"to_uint8 takes a torch tensor or numpy array, not {type(x).__name__}")

    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected an image of shape (C, H, W) with C in (1, 3), got {x.shape}")

    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.bool_:
        out = a.astype(np.uint8) * 255
    else:
        y = (np.asarray(a, dtype=np.float32) - lo) * (255.0 / (hi - lo))
        y = np.nan_to_num(y, nan=0.0, posinf=255.0, neginf=0.0)
        out = np.floor(np.clip(y, 0.0, 255.0) + 0.5).astype(np.uint8)  # round half-up
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def to_pil(x: Any, value_range: tuple[float, float] = (-1, 1)) -> Image.Image:
    """Like :func:`to_uint8`, as an RGB PIL image (a PIL image is converted to RGB)."""
    if isinstance(x, Image.Image):
        return x if x.mode == "RGB" else to_rgb(x)
    return Image.fromarray(to_uint8(x, value_range=value_range), "RGB")


def row(x: Any) -> Image.Image:
    """A batch (B, 3, H, W) in [-1, 1] as one image, side by side."""
    return Image.fromarray(np.concatenate([to_uint8(img) for img in x.float().cpu()], axis=1))


# ---------------------------------------------------------------------------------------------
# Images to tensors


def to_tensor(img: Image.Image | Sequence[Image.Image], value_range: tuple[float, float] = (-1, 1), *,
              device: Any = None) -> Any:
    """An image -> a float32 tensor (1, 3, H, W) with 0..255 mapped onto ``value_range``.

    A list of same-size images gives a batch (N, 3, H, W). Images that are not RGB go
    through PIL's ``convert("RGB")`` (use :func:`to_rgb` first to put transparency on white).
    The pixels are ``x / (255 / (high - low)) + low``, so (-1, 1) is ``x / 127.5 - 1`` and
    (0, 1) is ``x / 255``. With ``device`` the uint8 pixels move there first and the
    arithmetic runs there (bit for bit as on that device); without, it runs on the CPU.
    """
    import torch

    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    images = [img] if isinstance(img, Image.Image) else list(img)
    arr = np.stack([np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
                    for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    if device is not None:
        x = x.to(device)
    x = x.float().div(255.0 / (hi - lo))
    return x.sub(-lo) if lo else x


# ---------------------------------------------------------------------------------------------
# Any PIL mode to RGB


def _gray_to_uint8(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit int and float greyscale -> 8-bit "L" by a documented rule.

    I;16: value / 257 (65535 -> 255). I: as is if within 0..255, / 257 if within 0..65535,
    else min-max stretched. F: * 255 if within 0..1, as is if within 0..255, else stretched.
    """
    a = np.asarray(img).astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        a = a / 257.0
    elif img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif img.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        a = a / 257.0
    else:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.floor(np.clip(a, 0, 255) + 0.5).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _gray_to_uint8(img).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        if img.mode == "La":
            img = img.convert("LA")  # Pillow has no La -> RGBA path
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # P, L, 1, CMYK, YCbCr, HSV, ...


# ---------------------------------------------------------------------------------------------
# Resizing


def enlarge_factor(size: tuple[int, int], min_side: int, max_side: int | None) -> int:
    """The whole factor :func:`enlarge` scales an image of ``size`` (width, height) by."""
    w, h = size
    k = max(1, -(-min_side // max(1, min(w, h))))  # ceil
    if max_side is not None:
        k = max(1, min(k, max_side // max(1, w, h)))  # never blow a thin strip up to a giant
    return k


def enlarge(img: Image.Image, min_side: int = 256, *, max_side: int | None = 4096) -> Image.Image:
    """Nearest-neighbour upscale by a whole factor so the shorter side is >= ``min_side``.

    Every source pixel becomes a k x k block, so small images stay crisp. Returns ``img``
    itself when it is already large enough. The factor is capped so the longer side stays
    <= ``max_side`` (``None``: no cap).
    """
    k = enlarge_factor(img.size, min_side, max_side)
    if k == 1:
        return img
    return img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)


def square(img: Image.Image, side: int) -> Image.Image:
    """Centre-crop to a square, then resize to side x side (LANCZOS)."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return img.resize((side, side), Image.Resampling.LANCZOS, box=box)


def strip(images: Sequence[Image.Image], max_columns: int = 16, gap: int = 2) -> Image.Image | None:
    """Pictures side by side (up to max_columns, evenly spaced, both ends included), white gaps between."""
    if not images:
        return None
    keep = sorted(set(np.linspace(0, len(images) - 1, min(max_columns, len(images))).round().astype(int)))
    w, h = images[0].size
    out = Image.new("RGB", (len(keep) * (w + gap) - gap, h), (255, 255, 255))
    for col, k in enumerate(keep):
        out.paste(images[k], (col * (w + gap), 0))
    return out
