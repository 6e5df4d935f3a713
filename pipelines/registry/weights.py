"""Finding a component's weight files, downloading them on first use, and the errors that say why not.

`find_weights` turns a `ComponentSpec` into local files: a built-in folder, a path, the Hugging Face
Hub (its cache first, then a quick network probe before the hub client's minute of retries), or
URLs downloaded once into a cache folder. Every failure a user can meet becomes a one-sentence
`ModelUnavailable`; `DeviceOutOfMemory` is the other error the registry raises to the UI.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ..presets import PRESETS_DIR, ComponentSpec, url_filename

log = logging.getLogger(__name__)

ROOT = PRESETS_DIR.parent
_SUGGEST = "Use the built-in 'shapes' preset, or download it to a folder and make a preset with \"path\"."


class ModelUnavailable(RuntimeError):
    """A model cannot be loaded; the message is one sentence for the user."""


class DeviceOutOfMemory(RuntimeError):
    """A run ran out of device memory; idle models were unloaded, so the next run can work."""


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


def _show(path: Path | str) -> str:
    """A path relative to the repo root when inside it, for messages."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except (ValueError, OSError):
        return str(path)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def damaged(spec: ComponentSpec, where: Path | str, reason: str) -> ModelUnavailable:
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


def load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "these weight files are unusable" (not programming errors)."""
    import pickle

    import yaml
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError,
            yaml.YAMLError)


# -- finding weight files -------------------------------------------------------------------


def find_weights(spec: ComponentSpec, weights_dir: Path, allow_network: bool,
                 url_cache_dir: Path | None = None) -> Path | str:
    """Local path of a component's files (a hub id without `files` stays a str for transformers).
    `weights_dir` holds the built-in folders; `url_cache_dir` None means <HF hub cache>/atelier-urls."""
    if spec.source == "builtin":
        where: Path | str = weights_dir / spec.location
        if not where.is_dir():
            raise damaged(spec, where, "folder not found")
    elif spec.source == "path":
        where = Path(spec.location).expanduser()
        if not where.exists():
            raise damaged(spec, where, "not found")
    elif spec.source == "hub":
        where = _from_hub(spec, allow_network)
    elif spec.source == "url":
        where = _from_urls(spec, allow_network, url_cache_dir)
    else:
        raise ModelUnavailable(f"Unknown source '{spec.source}' for '{spec.label}'.")
    return where


def spec_files(spec: ComponentSpec, where: Path | str) -> dict[str, Path]:
    """Role -> local file in `where` for components that name their files (`files`, or `url`)."""
    where = Path(where)
    if spec.source == "url":
        return {role: where / f"{role}-{url_filename(u)}" for role, u in spec.files.items()}
    return {role: where / name for role, name in spec.files.items()}


def _from_hub(spec: ComponentSpec, allow_network: bool) -> Path | str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    names = list(spec.files.values()) or ["config.json"]  # without files, config.json proves it is there
    try:
        try:  # 1. the hub cache first: a downloaded model needs no network
            paths = [hf_hub_download(spec.location, n, revision=spec.revision, local_files_only=True)
                     for n in names]
        except LocalEntryNotFoundError:
            if not allow_network:
                raise
            # 2. a quick look at the network before the hub client's minute of retries
            from huggingface_hub import constants

            if not _reachable(urlsplit(constants.ENDPOINT).hostname or "huggingface.co"):
                raise _unreachable(spec, "no network") from None
            log.info("Downloading %s from the Hugging Face Hub (first use)", spec.location)
            paths = [hf_hub_download(spec.location, n, revision=spec.revision) for n in names]
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise _unreachable(spec, "offline" if not allow_network else first_line(e)) from e
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError, HFValidationError) as e:
        raise ModelUnavailable(f"The Hugging Face Hub does not provide '{spec.location}' "
                               f"({first_line(e)}). {_SUGGEST}") from e
    except ModelUnavailable:
        raise
    except Exception as e:  # connection errors of the HTTP client, timeouts
        raise _unreachable(spec, first_line(e)) from e
    if not spec.files:
        return spec.location
    # the snapshot folder: up as many levels as the first name has parts
    return Path(paths[0]).parents[len(PurePosixPath(names[0]).parts) - 1]


def _from_urls(spec: ComponentSpec, allow_network: bool, url_cache_dir: Path | None) -> Path:
    cache = url_cache_dir
    if cache is None:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE) / "atelier-urls"
    folder = cache / hashlib.sha256(spec.location.encode()).hexdigest()[:16]
    missing = {role: p for role, p in spec_files(spec, folder).items() if not p.is_file()}
    if missing and not allow_network:
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
            raise _unreachable(spec, first_line(getattr(e, "reason", e))) from e
        except OSError as e:
            part.unlink(missing_ok=True)
            raise ModelUnavailable(f"Could not save '{spec.label}' to {path} ({first_line(e)}).") from e
    return folder


def weights_file(spec: ComponentSpec, where: Path | str) -> Path | None:
    """The main weights file of a component resolved to `where` (for weights_id and messages)."""
    if isinstance(where, str):  # a hub id: look in the hub cache
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(where, name, revision=spec.revision)
            if isinstance(hit, str):
                return Path(hit)
        return None
    if where.is_file():
        return where
    named = spec_files(spec, where)
    if "ckpt" in named:
        return named["ckpt"]
    for pattern in ("model.safetensors", "*.safetensors", "*.ckpt", "*.bin", "*.pt", "*.pth"):
        hits = sorted(where.glob(pattern))
        if hits:
            return hits[0]
    return None
