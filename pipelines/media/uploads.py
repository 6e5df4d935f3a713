"""Uploads: a path, bytes, PIL image or array -> an RGB PIL image, or a message for the user.

:func:`load_image` turns an upload (path, bytes, PIL image or array) into an RGB PIL image,
or raises :class:`ImageInputError` with a message fit to show the user. It checks the size
from the file header *before* decoding pixels, so a small file that claims 8000x8000 pixels
(a decompression bomb) costs nothing. :func:`read_source` and :func:`open_bytes` are its
first steps, shared with :func:`pipelines.media.pngmeta.read_meta`.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from pipelines.media.pixels import to_rgb

__all__ = ["ImageInputError", "load_image", "open_bytes", "read_source"]

logger = logging.getLogger(__name__)

# Decoders we let loose on uploads; Pillow knows ~40 formats, most of them obscure.
_UPLOAD_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "PPM", "TGA", "AVIF")
_READABLE = "PNG, JPEG, WebP, GIF, BMP or TIFF"


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


def read_source(src: str | os.PathLike | BinaryIO, name: str, max_bytes: int) -> bytes:
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


def open_bytes(data: bytes, name: str) -> Image.Image:
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
        return to_rgb(img)
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
            if len(data) > max_bytes:
                raise ImageInputError(f"{_cap(name)} is {_human_bytes(len(data))}; the limit "
                                      f"is {_human_bytes(max_bytes)}.")
        elif isinstance(src, (str, os.PathLike)) or hasattr(src, "read"):
            data = read_source(src, name, max_bytes)
        else:
            raise ImageInputError(f"{_cap(name)} is a {type(src).__name__}, not an image.")
        img = open_bytes(data, name)

    _check_size(img.size, name, min_side, max_side, max_pixels)  # header size, before decoding
    try:
        img.load()
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block should not cost the user the image
            logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return to_rgb(img)
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{_cap(name)} is refused as a possible decompression bomb: {e}") \
            from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageInputError(f"{_cap(name)} could not be decoded (is the file truncated or "
                              f"damaged?): {e}") from None

