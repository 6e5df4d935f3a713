"""PNG metadata: the settings of a run, written into the PNG and read back.

:func:`save_png` writes the settings of a run into the PNG as text chunks: ``atelier`` (JSON,
read back by :func:`read_meta`), ``parameters`` (an AUTOMATIC1111-style summary made by
:func:`format_parameters`, which other tools display) and ``Software``. :func:`image_digest`
names an image by its pixels, for settings that refer to an uploaded picture.

JSON and non-finite floats: JSON has no ``inf``/``nan``, so before writing, every non-finite
float in ``meta`` (at any depth) is replaced by the string ``"inf"``, ``"-inf"`` or ``"nan"``;
``float()`` of that string gives the number back. Tuples become lists, ``Path`` becomes ``str``,
numpy scalars and arrays become Python numbers and lists, and other unknown objects their
``str()``. :func:`read_meta` returns the stored JSON as is (it does not turn strings back
into floats: a prompt may well be the word "nan").
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
from hashlib import sha256
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, PngImagePlugin

from pipelines.media.pixels import enlarge, enlarge_factor, is_tensor, to_rgb
from pipelines.media.uploads import ImageInputError, open_bytes, read_source

__all__ = ["META_KEY", "format_parameters", "image_digest", "read_meta", "save_png"]

META_KEY = "atelier"
SOFTWARE = "Atelier"
# Pillow refuses text chunks above this when reading back (PngImagePlugin.MAX_TEXT_CHUNK).
_MAX_META_BYTES = 1_000_000


def image_digest(img: Image.Image) -> str:
    """Short sha256 (12 hex digits) of the size and RGB pixels."""
    rgb = to_rgb(img)
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
    if is_tensor(v):
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
        img = to_rgb(img)
    info = _png_info(meta_json, format_parameters(meta, image_size=img.size))

    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(img, path, info)
    written = [path]
    if enlarged_min_side is not None:
        k = enlarge_factor(img.size, enlarged_min_side, None)
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
            data = read_source(src, name, 2**31)
        else:
            raise ImageInputError(f"Cannot read settings from a {type(src).__name__}.")
        img = open_bytes(data, name)

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

