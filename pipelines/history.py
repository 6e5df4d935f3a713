"""The run history: every finished (or stopped) run of a browser kept on disk, across restarts.

    store = History()                                  # $ATELIER_HISTORY_DIR, capped at $ATELIER_HISTORY_MB
    added = store.add(owner, meta, files)              # copies the run's files in; may prune the oldest
    listing = store.list(owner)                        # newest first; unreadable items counted, not shown
    store.delete(owner, item_id)

Layout: ``<root>/<owner>/<item id>/`` holds copies of the run's files (PNGs with their settings,
enlarged copies, strip, mp4), ``item.json`` (engine, time, prompt, the run's metadata, stopped,
file names, parents) and, when given, ``frames/`` (the run's video frames, for re-exporting it).
The item id is the run's ``run_id`` (see :func:`run_meta`), so a parent named in a PNG is found
by its folder.

The cap (``$ATELIER_HISTORY_MB``, default 500) holds for the whole store: adding beyond it
removes the oldest items (any owner's) and says which. Nothing here raises for a disk that is
full, a folder deleted or made read-only: :meth:`History.add` returns a sentence instead, so a
run's result is shown whatever happens to its copy. An ``item.json`` that cannot be read is
skipped when listing and counted. Safe to call from several threads (runs end in workers).

Also here, because a run's lineage is what the history shows: :func:`run_meta` (a new run's
id and the runs its uploads came from) and :func:`parent_of` (an uploaded Atelier PNG -> the
run that made it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import media
from pipelines.media.pngmeta import _jsonable

ITEM_FILE = "item.json"
FRAMES = "frames"
DEFAULT_MB = 500.0
_ID = re.compile(r"^[0-9a-f]{8,32}$")


def default_root() -> Path:
    """``$ATELIER_HISTORY_DIR``; on a Space with persistent storage ``/data/atelier-history``;
    else ``~/.cache/atelier/history`` (``$XDG_CACHE_HOME`` respected)."""
    given = os.environ.get("ATELIER_HISTORY_DIR")
    if given:
        return Path(given).expanduser()
    if os.environ.get("SPACE_ID") and os.path.isdir("/data") and os.access("/data", os.W_OK):
        return Path("/data/atelier-history")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "atelier" / "history"


def default_cap_mb() -> float:
    try:
        return max(0.0, float(os.environ.get("ATELIER_HISTORY_MB", DEFAULT_MB)))
    except ValueError:
        return DEFAULT_MB


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def parent_of(path: str | os.PathLike) -> dict | None:
    """The run an uploaded picture came from, when it is an Atelier PNG: run id, engine, prompt, seed
    (and its place in the batch); None for any other picture."""
    try:
        meta = media.read_meta(path)
    except (ValueError, OSError):
        return None
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    prompt = settings.get("prompt", meta.get("prompt"))
    out = {"run_id": meta.get("run_id"), "engine": meta.get("engine"),
           "prompt": prompt if isinstance(prompt, str) else None, "seed": settings.get("seed", meta.get("seed"))}
    if "batch_index" in meta:
        out["batch_index"] = meta["batch_index"]
    return out


def parents_of(uploads: dict[str, Any]) -> dict:
    """``{field: parent}`` for each upload (a path, or a list of paths: ``field[k]``) that is an Atelier PNG."""
    out = {}
    for name, value in uploads.items():
        many = isinstance(value, (list, tuple))
        for k, v in enumerate(value if many else [value]):
            path = v if isinstance(v, (str, os.PathLike)) else getattr(v, "name", None)
            parent = parent_of(path) if path else None
            if parent is not None:
                out[f"{name}[{k}]" if many else name] = parent
    return out


def run_meta(parents: dict | None = None) -> dict:
    """What a run adds to its metadata (every PNG carries it): its id and, when its uploads came from
    other runs, ``parents``."""
    return {"run_id": new_run_id(), **({"parents": parents} if parents else {})}


def human_mb(n: int) -> str:
    mb = n / 2**20
    return f"{mb:.1f} MB" if mb < 10 else f"{mb:.0f} MB"


@dataclass
class Item:
    """One run in the history."""
    id: str
    owner: str
    folder: Path
    engine: str
    time: float
    prompt: str
    stopped: bool
    files: list[str]                 # every file's name, as the run wrote them
    pictures: list[str]              # per picture the true-size PNG (settings inside)
    shown: list[str]                 # per picture the file to show (the enlarged copy where there is one)
    meta: dict
    parents: dict
    bytes: int = 0
    frames: int = 0

    def paths(self) -> list[Path]:
        return [self.folder / n for n in self.files]

    def picture(self, k: int = 0) -> Path | None:
        names = self.pictures or self.shown
        return self.folder / names[min(max(k, 0), len(names) - 1)] if names else None

    def thumbnail(self) -> Path | None:
        names = self.shown or self.pictures
        return self.folder / names[0] if names else None

    @property
    def frames_folder(self) -> Path | None:
        """The run's video frames (``media.frames.load_frames`` reads them), when they were kept."""
        return self.folder / FRAMES if self.frames else None


@dataclass
class Listing:
    items: list[Item] = field(default_factory=list)     # newest first
    skipped: int = 0                                     # items whose item.json could not be read
    error: str | None = None                             # the folder could not be read at all


@dataclass
class Added:
    item: Item | None                                    # None when it could not be kept
    pruned: list[Item] = field(default_factory=list)     # the oldest items removed to stay under the cap
    error: str | None = None                             # one sentence, when the run could not be kept


def owner_key(owner: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", owner or "anonymous")[:80]
    return safe or "anonymous"


def _reason(e: OSError) -> str:
    import errno

    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return "the disk is full"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "its folder cannot be written"
    return e.strerror.lower() if e.strerror else type(e).__name__


def _size(folder: Path) -> int:
    n = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                n += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return n


class History:
    def __init__(self, root: str | os.PathLike | None = None, cap_mb: float | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.cap_mb = default_cap_mb() if cap_mb is None else float(cap_mb)
        self._lock = threading.RLock()

    @property
    def cap_bytes(self) -> int:
        return int(self.cap_mb * 2**20)

    # --- reading ---
    def _read(self, owner: str, folder: Path) -> Item:
        data = json.loads((folder / ITEM_FILE).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("id") != folder.name:
            raise ValueError("not an item")
        files = [str(n) for n in data.get("files", [])]
        if any("/" in n or "\\" in n or n.startswith(".") for n in files):
            raise ValueError("bad file name")
        return Item(id=folder.name, owner=owner, folder=folder, engine=str(data.get("engine", "")),
                    time=float(data.get("time", 0)), prompt=str(data.get("prompt", "")),
                    stopped=bool(data.get("stopped", False)), files=files,
                    pictures=[str(n) for n in data.get("pictures", [])],
                    shown=[str(n) for n in data.get("shown", [])],
                    meta=data.get("meta") if isinstance(data.get("meta"), dict) else {},
                    parents=data.get("parents") if isinstance(data.get("parents"), dict) else {},
                    bytes=int(data.get("bytes", 0)), frames=int(data.get("frames", 0)))

    def _scan(self, owner: str) -> Listing:
        out = Listing()
        folder = self.root / owner_key(owner)
        try:
            children = list(folder.iterdir()) if folder.is_dir() else []
        except OSError as e:
            return Listing(error=f"History cannot be read: {_reason(e)}.")
        for child in children:
            if child.name.startswith(".") or not child.is_dir():
                continue
            try:
                out.items.append(self._read(owner, child))
            except (OSError, ValueError, TypeError, AttributeError):
                out.skipped += 1
        out.items.sort(key=lambda it: (it.time, it.id), reverse=True)
        return out

    def list(self, owner: str) -> Listing:
        """The owner's items, newest first."""
        with self._lock:
            return self._scan(owner)

    def get(self, owner: str, item_id: str) -> Item | None:
        if not isinstance(item_id, str) or not _ID.match(item_id):
            return None
        folder = self.root / owner_key(owner) / item_id
        with self._lock:
            try:
                return self._read(owner, folder)
            except (OSError, ValueError, TypeError, AttributeError):
                return None

    def usage(self, owner: str | None = None) -> tuple[int, int]:
        """(items, bytes): the owner's, or the whole store's."""
        with self._lock:
            items = self._scan(owner).items if owner is not None else self._all()
        return len(items), sum(it.bytes for it in items)

    def _all(self) -> list[Item]:
        out = []
        try:
            owners = [d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        except OSError:
            return out
        for d in owners:
            out += self._scan(d.name).items
        return out

    def chain(self, owner: str, item: Item, depth: int = 8) -> dict[str, list[dict]]:
        """Per field of the item's parents, the line of runs it came from, nearest first (each a parent dict,
        with ``in_history`` saying whether that run is still kept here)."""
        out = {}
        for name, parent in item.parents.items():
            line, seen, p = [], {item.id}, parent
            while isinstance(p, dict) and len(line) < depth:
                found = self.get(owner, p.get("run_id") or "")
                line.append({**p, "in_history": found is not None})
                if found is None or found.id in seen:
                    break
                seen.add(found.id)
                p = next(iter(found.parents.values()), None)   # the first parent of the parent, and so on
            out[name] = line
        return out

    # --- writing ---
    def add(self, owner: str, meta: dict, files: Iterable[str | os.PathLike], *, pictures: Iterable = (),
            shown: Iterable = (), stopped: bool | None = None, prompt: str | None = None,
            frames: Iterable | None = None, fps: float | None = None) -> Added:
        """Keep a run: copies of ``files`` (``pictures``/``shown`` among them say which PNG is which) and its
        metadata. ``frames`` (PIL images), when given, go to ``frames/`` (the run's video frames at ``fps``, to
        re-export its video; ``$ATELIER_HISTORY_FRAMES=0`` keeps none).
        Never raises for the disk: an error comes back as a sentence in ``Added.error``."""
        files = [Path(f) for f in files]
        settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
        run_id = meta.get("run_id") if isinstance(meta.get("run_id"), str) and _ID.match(meta["run_id"]) \
            else new_run_id()
        if prompt is None:
            p = settings.get("prompt", meta.get("prompt", ""))
            prompt = p if isinstance(p, str) else " | ".join(map(str, p)) if isinstance(p, (list, tuple)) else ""
        with self._lock:
            folder = self.root / owner_key(owner)
            tmp = folder / f".part-{run_id}-{uuid.uuid4().hex[:6]}"
            try:
                tmp.mkdir(parents=True)
                names: dict[Path, str] = {}
                for f in files:
                    name = f.name
                    while name in names.values() or name == ITEM_FILE or name.startswith("."):
                        name = f"_{name}"
                    shutil.copyfile(f, tmp / name)
                    names[f] = name
                keep_frames = frames is not None and os.environ.get("ATELIER_HISTORY_FRAMES", "1") != "0"
                n_frames = self._write_frames(tmp / FRAMES, frames, fps) if keep_frames else 0
                size = _size(tmp)
                if size > self.cap_bytes:
                    raise _TooBig(size)
                data = {"version": 1, "id": run_id, "engine": meta.get("engine", ""), "time": time.time(),
                        "prompt": prompt, "stopped": bool(meta.get("stopped") if stopped is None else stopped),
                        "files": list(names.values()),
                        "pictures": [names[Path(p)] for p in pictures if Path(p) in names],
                        "shown": [names[Path(p)] for p in shown if Path(p) in names],
                        "meta": _jsonable(meta), "parents": _jsonable(meta.get("parents") or {}),
                        "bytes": size + 2048, "frames": n_frames}
                (tmp / ITEM_FILE).write_text(json.dumps(data, indent=1, allow_nan=False), encoding="utf-8")
                final = folder / run_id
                if final.exists():                 # the same run kept twice (a Continue): the newer copy wins
                    shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            except _TooBig as e:
                shutil.rmtree(tmp, ignore_errors=True)
                return Added(None, error=f"History could not keep this run: its files ({human_mb(e.size)}) are more "
                                         f"than the history's limit of {human_mb(self.cap_bytes)}.")
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                return Added(None, error=f"History could not keep this run: {_reason(e)} ({self.root}).")
            item = self._read(owner, final)
            return Added(item, pruned=self._prune(keep=item.id))

    @staticmethod
    def _write_frames(folder: Path, frames, fps: float | None) -> int:
        """The run's video frames as ``frames/000001.png`` ... + ``frames.json`` (media.frames' layout, so
        ``media.frames.load_frames`` reads them back to re-export the video)."""
        frames = list(frames)
        if not frames:
            return 0
        try:
            from pipelines.media.frames import save_frames
        except ImportError:                   # pragma: no cover - the same layout, written here
            import json as _json

            folder.mkdir()
            for i, frame in enumerate(frames, 1):
                media.to_rgb(frame).save(folder / f"{i:06d}.png", compress_level=1)
            (folder / "frames.json").write_text(_json.dumps({"fps": fps, "count": len(frames)}))
            return len(frames)
        save_frames(frames, folder, fps=fps)
        return len(frames)

    def _prune(self, keep: str | None = None) -> list[Item]:
        """Remove the oldest items until the store is under its cap (never ``keep``)."""
        items = sorted(self._all(), key=lambda it: (it.time, it.id))
        total = sum(it.bytes for it in items)
        pruned = []
        for it in items:
            if total <= self.cap_bytes:
                break
            if it.id == keep:
                continue
            shutil.rmtree(it.folder, ignore_errors=True)
            if not it.folder.exists():
                total -= it.bytes
                pruned.append(it)
        return pruned

    def delete(self, owner: str, item_id: str) -> bool:
        """Remove one of the owner's items; whether there was one."""
        item = self.get(owner, item_id)
        if item is None:
            return False
        with self._lock:
            shutil.rmtree(item.folder, ignore_errors=True)
            return not item.folder.exists()

    def clean_parts(self, older_s: float = 3600) -> None:
        """Drop half-written items a crash left behind."""
        cutoff = time.time() - older_s
        for part in self.root.glob("*/.part-*"):
            try:
                if part.stat().st_mtime < cutoff:
                    shutil.rmtree(part, ignore_errors=True)
            except OSError:
                pass


class _TooBig(Exception):
    def __init__(self, size: int):
        self.size = size


_stores: dict[tuple[str, float], History] = {}
_stores_lock = threading.Lock()


def store() -> History:
    """The process's store for the current settings (one per root and cap, so their locks are shared)."""
    key = (str(default_root()), default_cap_mb())
    with _stores_lock:
        if key not in _stores:
            _stores[key] = History(*key)
        return _stores[key]


__all__ = ["Added", "History", "Item", "Listing", "default_root", "new_run_id", "parent_of", "parents_of",
           "run_meta", "store"]
