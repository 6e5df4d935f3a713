"""Pixels in and out of Atelier: tensors to images, uploads, PNG metadata and mp4 videos.

* :func:`to_uint8` is the one place where model output (a tensor in [-1, 1] or [0, 1]) becomes
  pixels; :func:`to_pil` wraps it. Rounding is half-up and values are clamped, so -1 -> 0,
  0 -> 128 and 1 -> 255.
* :func:`load_image` turns an upload (path, bytes, PIL image or array) into an RGB PIL image,
  or raises :class:`ImageInputError` with a message fit to show the user. It checks the size
  from the file header *before* decoding pixels, so a small file that claims 8000x8000 pixels
  (a decompression bomb) costs nothing.
* :func:`save_png` writes the settings of a run into the PNG as text chunks: ``atelier`` (JSON,
  read back by :func:`read_meta`), ``parameters`` (an AUTOMATIC1111-style summary, which other
  tools display) and ``Software``.
* :class:`VideoWriter` pipes frames to the ffmpeg binary bundled with ``imageio-ffmpeg`` and
  writes H.264 / yuv420p mp4 that browsers play. There is no system ffmpeg on Spaces-like
  hosts and Gradio only converts videos when one exists (``reference/gradio_and_spaces.md``
  sections 1 and 3), so the file must be browser-ready as written.

JSON and non-finite floats: JSON has no ``inf``/``nan``, so before writing, every non-finite
float in ``meta`` (at any depth) is replaced by the string ``"inf"``, ``"-inf"`` or ``"nan"``;
``float()`` of that string gives the number back. Tuples become lists, ``Path`` becomes ``str``,
numpy scalars and arrays become Python numbers and lists, and other unknown objects their
``str()``. :func:`read_meta` returns the stored JSON as is (it does not turn strings back
into floats: a prompt may well be the word "nan").

This module never imports gradio, and imports torch only if the caller already did.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import unicodedata
from datetime import datetime
from fractions import Fraction
from hashlib import sha256
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

__all__ = [
    "to_uint8",
    "to_pil",
    "enlarge",
    "ImageInputError",
    "load_image",
    "image_digest",
    "META_KEY",
    "save_png",
    "read_meta",
    "format_parameters",
    "VideoWriter",
    "write_video",
    "new_output_path",
]

logger = logging.getLogger(__name__)

META_KEY = "atelier"
SOFTWARE = "Atelier"
# Decoders we let loose on uploads; Pillow knows ~40 formats, most of them obscure.
_UPLOAD_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "PPM", "TGA", "AVIF")
_READABLE = "PNG, JPEG, WebP, GIF, BMP or TIFF"
# Pillow refuses text chunks above this when reading back (PngImagePlugin.MAX_TEXT_CHUNK).
_MAX_META_BYTES = 1_000_000


# ---------------------------------------------------------------------------------------------
# Tensors and arrays to pixels


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    return torch is not None and isinstance(x, torch.Tensor)


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
    if _is_tensor(x):
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
        return x if x.mode == "RGB" else _to_rgb(x)
    return Image.fromarray(to_uint8(x, value_range=value_range), "RGB")


def _enlarge_factor(size: tuple[int, int], min_side: int, max_side: int | None) -> int:
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
    k = _enlarge_factor(img.size, min_side, max_side)
    if k == 1:
        return img
    return img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)


# ---------------------------------------------------------------------------------------------
# Loading uploads


class ImageInputError(ValueError):
    """An input image was refused; the message is meant for the user."""


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


def _not_an_image(name: str) -> ImageInputError:
    return ImageInputError(
        f"{_cap(name)} is not an image Atelier can read ({_READABLE}); "
        "the file may be damaged or of another kind."
    )


def _check_size(size: tuple[int, int], name: str, min_side: int, max_side: int,
                max_pixels: int) -> None:
    w, h = size
    if min(w, h) < min_side:
        raise ImageInputError(
            f"{_cap(name)} is {w}x{h} pixels; it must be at least {min_side} pixels on each side."
        )
    if max(w, h) > max_side or w * h > max_pixels:
        raise ImageInputError(
            f"{_cap(name)} is {w}x{h} pixels ({w * h / 1e6:.1f} MP); the limit is {max_side} "
            f"pixels per side and {max_pixels / 1e6:.1f} MP in all. Make it smaller and try again."
        )


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


def _to_rgb(img: Image.Image) -> Image.Image:
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


def _array_to_pil(a: np.ndarray, name: str) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{_cap(name)} has array shape {a.shape}; expected (H, W), "
                              "(H, W, 3) or (H, W, 4).")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.floor(a / 257.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        # floats (and other ints) are read as 0..1 intensities
        a = np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0)
        a = np.floor(np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[-1]]
    return Image.fromarray(np.ascontiguousarray(a), mode)


def _human_bytes(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:.1f}".removesuffix(".0") + " MB"
    if n >= 2**10:
        return f"{n / 2**10:.1f}".removesuffix(".0") + " KB"
    return f"{n} bytes"


def _read_source(src: str | os.PathLike | BinaryIO, name: str, max_bytes: int) -> bytes:
    """Bytes of a path or file object, refusing files above max_bytes."""
    limit = _human_bytes(max_bytes)
    if hasattr(src, "read"):
        data = src.read(max_bytes + 1)
    else:
        path = Path(src)
        if not str(src):
            raise ImageInputError(f"No {name} was given.")
        try:
            if path.stat().st_size > max_bytes:
                raise ImageInputError(f"{_cap(name)} is {_human_bytes(path.stat().st_size)}; "
                                      f"the limit is {limit}.")
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageInputError(f"{_cap(name)} was not found: {path}") from None
        except IsADirectoryError:
            raise ImageInputError(f"{_cap(name)} is a folder, not an image file: {path}") from None
        except OSError as e:
            raise ImageInputError(f"{_cap(name)} could not be read: {e.strerror or e}") from None
    if not isinstance(data, (bytes, bytearray)):
        raise ImageInputError(f"{_cap(name)} is not a file Atelier can read.")
    if len(data) > max_bytes:
        raise ImageInputError(f"{_cap(name)} is larger than the limit of {limit}.")
    return bytes(data)


def _open_bytes(data: bytes, name: str) -> Image.Image:
    """Open (header only, no pixel decoding) or raise ImageInputError."""
    if not data:
        raise ImageInputError(f"{_cap(name)} is empty (0 bytes).")
    Image.init()
    formats = [f for f in _UPLOAD_FORMATS if f in Image.OPEN]
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{_cap(name)} is refused as a possible decompression bomb: {e}") \
            from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError):
        raise _not_an_image(name) from None


def load_image(
    src: Image.Image | str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray,
    *,
    name: str = "image",
    min_side: int = 8,
    max_side: int = 4096,
    max_pixels: int = 16_777_216,
    max_bytes: int = 50 * 2**20,
) -> Image.Image:
    """An upload -> RGB PIL image, or :class:`ImageInputError` naming ``name`` and the limit.

    ``src`` is a PIL image, a path, bytes, a binary file object or a numpy array (uint8,
    uint16 or bool pixels; floats read as 0..1). Palette, CMYK, 16-bit, float, greyscale and
    1-bit images become RGB; alpha is composited onto white; EXIF orientation is applied.
    Files are limited to ``max_bytes``; the pixel size is checked from the header before
    any pixel is decoded.
    """
    if src is None:
        raise ImageInputError(f"No {name} was given.")
    if isinstance(src, np.ndarray):
        img = _array_to_pil(src, name)
        _check_size(img.size, name, min_side, max_side, max_pixels)
        return _to_rgb(img)
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
            if len(data) > max_bytes:
                raise ImageInputError(f"{_cap(name)} is {_human_bytes(len(data))}; the limit "
                                      f"is {_human_bytes(max_bytes)}.")
        elif isinstance(src, (str, os.PathLike)) or hasattr(src, "read"):
            data = _read_source(src, name, max_bytes)
        else:
            raise ImageInputError(f"{_cap(name)} is a {type(src).__name__}, not an image.")
        img = _open_bytes(data, name)

    _check_size(img.size, name, min_side, max_side, max_pixels)  # header size, before decoding
    try:
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block should not cost the user the image
            logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{_cap(name)} is refused as a possible decompression bomb: {e}") \
            from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageInputError(f"{_cap(name)} could not be decoded (is the file truncated or "
                              f"damaged?): {e}") from None


def image_digest(img: Image.Image) -> str:
    """Short sha256 (12 hex digits) of the size and RGB pixels."""
    rgb = _to_rgb(img)
    h = sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# PNG metadata


def _jsonable(v: Any) -> Any:
    """Meta -> plain JSON types; non-finite floats become "inf" / "-inf" / "nan"."""
    if isinstance(v, bool) or v is None or isinstance(v, (str, int)):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return [_jsonable(x) for x in sorted(v, key=repr)]
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if _is_tensor(v):
        return _jsonable(v.detach().cpu().tolist())
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return str(v)


def _meta_json(meta: dict) -> str:
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    return json.dumps(_jsonable(meta), allow_nan=False, separators=(",", ":"))


# meta key -> label, in the order AUTOMATIC1111 prints them; the rest follow alphabetically.
_LABELS = {
    "steps": "Steps",
    "iterations": "Iterations",
    "sampler": "Sampler",
    "schedule": "Schedule",
    "guidance_scale": "CFG scale",
    "cfg_scale": "CFG scale",
    "seed": "Seed",
    "size": "Size",
    "model": "Model",
    "model_id": "Model",
    "weights_hash": "Model hash",
    "engine": "Engine",
    "preset": "Preset",
    "app_version": "Version",
    "version": "Version",
}
_NOT_PARAMS = {"prompt", "negative_prompt", "width", "height"}


def _fmt_value(v: Any) -> str:
    v = _jsonable(v)
    if isinstance(v, float):
        s = f"{v:.6g}"
    elif isinstance(v, list) and all(not isinstance(x, (list, dict)) for x in v):
        s = ", ".join(_fmt_value(x) for x in v)
    elif isinstance(v, (list, dict)):
        s = json.dumps(v, ensure_ascii=False, separators=(", ", ": "))
    else:
        s = str(v)
    # quote like AUTOMATIC1111 when the value would confuse a "Key: value, ..." parser
    return json.dumps(s, ensure_ascii=False) if any(c in s for c in ',:"\n') else s


def _fmt_size(meta: dict, image_size: tuple[int, int] | None) -> str | None:
    size = meta.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        return f"{size}x{size}"
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return f"{size[0]}x{size[1]}"  # (width, height), PIL's order
    if isinstance(size, str) and size:
        return size
    if "width" in meta and "height" in meta:
        return f"{meta['width']}x{meta['height']}"
    if image_size is not None:
        return f"{image_size[0]}x{image_size[1]}"
    return None


def format_parameters(meta: dict, *, image_size: tuple[int, int] | None = None) -> str:
    """One paragraph in AUTOMATIC1111's style: prompt, negative prompt, then "Key: value, ...".

    ``image_size`` (width, height) fills ``Size`` when ``meta`` has no ``size`` or
    ``width``/``height``. Nested values are printed as quoted JSON.
    """
    if isinstance(meta.get("settings"), dict):  # engines nest the request under "settings": show it flat
        meta = {**{k: v for k, v in meta.items() if k != "settings"}, **meta["settings"]}
    lines = []
    prompt = meta.get("prompt")
    if isinstance(prompt, (list, tuple)):
        prompt = " | ".join(str(p) for p in prompt)
    if prompt:
        lines.append(str(prompt))
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")

    params: dict[str, str] = {}
    size = _fmt_size(meta, image_size)
    for key, label in _LABELS.items():
        if key == "size":
            if size is not None:
                params.setdefault(label, size)
        elif meta.get(key) is not None:
            params.setdefault(label, _fmt_value(meta[key]))
    for key in sorted(k for k in meta if str(k) not in _LABELS and str(k) not in _NOT_PARAMS):
        if meta[key] is not None:
            params.setdefault(str(key).replace("_", " ").capitalize(), _fmt_value(meta[key]))
    if params:
        lines.append(", ".join(f"{k}: {v}" for k, v in params.items()))
    return "\n".join(lines)


def _png_info(meta_json: str, parameters: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(META_KEY, meta_json)  # ASCII JSON: a plain tEXt chunk
    info.add_text("parameters", parameters)  # becomes iTXt when not Latin-1
    info.add_text("Software", SOFTWARE)
    return info


def _save_atomic(img: Image.Image, path: Path, info: PngImagePlugin.PngInfo) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        img.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)  # readers never see half a file
    finally:
        tmp.unlink(missing_ok=True)


def save_png(img: Image.Image, path: str | os.PathLike, meta: dict, *,
             enlarged_min_side: int | None = None) -> list[Path]:
    """Write ``img`` as PNG carrying ``meta``; returns the paths written.

    Text chunks: ``atelier`` = JSON of ``meta`` (see the module docstring for non-finite
    floats), ``parameters`` = :func:`format_parameters`, ``Software`` = ``Atelier``.
    With ``enlarged_min_side``, an image whose shorter side is below it also gets a
    nearest-neighbour copy ``<stem>_x<k>.png`` with the same metadata.
    """
    path = Path(path)
    meta_json = _meta_json(meta)
    if len(meta_json) > _MAX_META_BYTES:
        raise ValueError(f"meta is {len(meta_json)} bytes as JSON; the limit is {_MAX_META_BYTES}")
    if img.mode not in ("RGB", "RGBA", "L"):
        img = _to_rgb(img)
    info = _png_info(meta_json, format_parameters(meta, image_size=img.size))

    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(img, path, info)
    written = [path]
    if enlarged_min_side is not None:
        k = _enlarge_factor(img.size, enlarged_min_side, None)
        if k > 1:
            big_path = path.with_name(f"{path.stem}_x{k}.png")
            _save_atomic(enlarge(img, enlarged_min_side, max_side=None), big_path, info)
            written.append(big_path)
    return written


def read_meta(src: str | os.PathLike | bytes | Image.Image | BinaryIO) -> dict:
    """The dict :func:`save_png` stored under ``atelier``, or :class:`ImageInputError`."""
    name = "the image"
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        elif isinstance(src, (str, os.PathLike)) or hasattr(src, "read"):
            data = _read_source(src, name, 2**31)
        else:
            raise ImageInputError(f"Cannot read settings from a {type(src).__name__}.")
        img = _open_bytes(data, name)

    raw = img.info.get(META_KEY)
    if raw is None and hasattr(img, "text"):  # chunks after the pixel data (PNG only)
        try:
            raw = img.text.get(META_KEY)
        except Exception:
            raw = None
    missing = ImageInputError(
        "This image carries no Atelier settings (it was not saved by Atelier as PNG, or "
        "another program removed its text chunks)."
    )
    if not isinstance(raw, (str, bytes)):
        raise missing
    try:
        meta = json.loads(raw)
    except ValueError:
        raise missing from None
    if not isinstance(meta, dict):
        raise missing
    return meta


# ---------------------------------------------------------------------------------------------
# Video


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg  # bundles a static ffmpeg; imported late since only videos need it

    return imageio_ffmpeg.get_ffmpeg_exe()


class VideoWriter:
    """Incremental H.264 (libx264, yuv420p) mp4 writer over the bundled ffmpeg.

    Frames (PIL images or uint8 (H, W, 3) arrays; other arrays and tensors go through
    :func:`to_uint8`) are enlarged by a whole nearest-neighbour factor so the shorter side is
    >= ``min_side``, then centred on a black canvas whose sides are multiples of 16. The first
    frame fixes the size; later frames of another size are scaled to fit it (aspect kept).

    ffmpeg writes to a hidden temporary file next to ``path``; :meth:`close` renames it to
    ``path`` and returns that, or returns ``None`` and leaves nothing behind when no frame
    was appended. Leaving the ``with`` block through an exception discards the video.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 10, min_side: int = 256, *,
                 crf: int = 18, comment: str | None = None) -> None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) \
                or not 1 <= fps <= 60:
            raise ValueError(f"fps must be a number from 1 to 60, got {fps!r}")
        if not isinstance(min_side, int) or min_side < 1:
            raise ValueError(f"min_side must be a positive int, got {min_side!r}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be 0..51 (lower is better), got {crf!r}")
        self.path = Path(path)
        self.fps = fps
        self.min_side = min_side
        self.crf = crf
        self.comment = comment
        self.frame_count = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the video
        self._first: tuple[int, int] | None = None  # size of the first source frame
        self._content: tuple[int, int] = (0, 0)  # its enlarged size, before padding
        self._proc: subprocess.Popen | None = None
        self._tmp: Path | None = None
        self._stderr: Any = None
        self._closed = False
        self._result: Path | None = None

    # -- frame preparation

    def _prepare(self, frame: Any) -> Image.Image:
        if isinstance(frame, Image.Image):
            img = _to_rgb(frame)
        else:
            img = Image.fromarray(to_uint8(frame), "RGB")
        if self._first is None:
            k = _enlarge_factor(img.size, self.min_side, None)
            self._first = img.size
            self._content = (img.width * k, img.height * k)
            self.size = (-(-self._content[0] // 16) * 16, -(-self._content[1] // 16) * 16)
        cw, ch = self._content
        if img.size == self._first:
            img = img.resize((cw, ch), Image.Resampling.NEAREST)
        else:  # fit inside the first frame's area, keeping the aspect ratio
            s = min(cw / img.width, ch / img.height)
            new = (max(1, round(img.width * s)), max(1, round(img.height * s)))
            up = s >= 1
            img = img.resize(new, Image.Resampling.NEAREST if up else Image.Resampling.LANCZOS)
        if img.size == self.size:
            return img
        canvas = Image.new("RGB", self.size, (0, 0, 0))
        canvas.paste(img, ((self.size[0] - img.width) // 2, (self.size[1] - img.height) // 2))
        return canvas

    # -- ffmpeg process

    def _start(self) -> None:
        assert self.size is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.part")
        fps = Fraction(self.fps).limit_denominator(1001)
        cmd = [
            _ffmpeg_exe(), "-y", "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.size[0]}x{self.size[1]}",
            "-r", str(fps), "-i", "-", "-an",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf),
            "-movflags", "+faststart",  # index first: browsers start playing at once
        ]
        if self.comment:
            cmd += ["-metadata", f"comment={self.comment}"]
        cmd += ["-f", "mp4", str(self._tmp)]
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=self._stderr)

    def _ffmpeg_error(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()[-2000:]

    def append(self, frame: Image.Image | np.ndarray | Any) -> None:
        """Add one frame (see the class docstring for sizes)."""
        if self._closed:
            raise ValueError("this VideoWriter is closed")
        img = self._prepare(frame)
        if self._proc is None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(img.tobytes())
        except (BrokenPipeError, OSError) as e:
            err = self._ffmpeg_error()
            self.abort()
            raise RuntimeError(f"ffmpeg stopped while writing {self.path}: {err or e}") from None
        self.frame_count += 1

    def close(self) -> Path | None:
        """Finish the file; returns its path, or None if no frame was appended."""
        if self._closed:
            return self._result
        self._closed = True
        if self._proc is None:
            return None
        proc, tmp = self._proc, self._tmp
        assert proc.stdin is not None and tmp is not None
        try:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            rc = proc.wait()
            if rc != 0 or not tmp.exists():
                raise RuntimeError(f"ffmpeg failed to write {self.path} (exit {rc}): "
                                   f"{self._ffmpeg_error()}")
            os.replace(tmp, self.path)
            self._result = self.path
        finally:
            self._cleanup()
        return self._result

    def abort(self) -> None:
        """Stop ffmpeg and delete the unfinished file."""
        self._closed = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._proc = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # a writer dropped without close(): don't leave ffmpeg or a .part file behind
        try:
            if not self._closed:
                self.abort()
        except Exception:
            pass


def write_video(frames: Iterable[Any], path: str | os.PathLike, fps: float = 10,
                min_side: int = 256) -> Path | None:
    """Write ``frames`` as an H.264 mp4 (see :class:`VideoWriter`); None if there were none."""
    with VideoWriter(path, fps=fps, min_side=min_side) as writer:
        for frame in frames:
            writer.append(frame)
    return writer.close()


# ---------------------------------------------------------------------------------------------
# Output names


def _slug(text: str, max_len: int = 60) -> str:
    text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9_-]+", "-", text)
    text = re.sub(r"-{2,}", "-", text).strip("-_")
    return text[:max_len].strip("-_") or "image"


def new_output_path(directory: str | os.PathLike, stem: str, suffix: str) -> Path:
    """A new, unused path ``<directory>/<slug>-<YYYYmmdd-HHMMSS>-<6 hex><suffix>``.

    The slug keeps at most 60 of ``[a-z0-9_-]`` (accents folded, everything else -> ``-``), so
    a hostile stem like ``../../etc/passwd`` stays inside ``directory``. Creates ``directory``.
    """
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    suffix = suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,10}", suffix):
        raise ValueError(f"suffix must look like '.png', got {suffix!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    slug = _slug(stem)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    while True:
        path = directory / f"{slug}-{stamp}-{secrets.token_hex(3)}{suffix}"
        if not path.exists():
            return path
