"""A run's trajectory as pictures, and the progress video made again from them without the model.

Every run keeps the frames its video was made of (`Engine.frame` of each preview: VQGAN
latents decoded, diffusion's x_t | x_0, DALL-E's token grids), at their true size, so the
video can be exported again at another frame rate, size or pacing:

    keeper = FrameKeeper()                 # the recorder feeds it every frame it writes
    keeper.add(frame); frames = keeper.frames; keeper.note      # "kept 1 frame in 2 of 1400"
    save_frames(frames, folder, fps=10)    # folder/000001.png ... + frames.json
    frames, info = load_frames(folder)     # info: {"fps": 10, "count": n, ...}
    rerender(frames, "out.mp4", fps=30, size=512, pacing="change", ease=True, seconds=4)

`rerender` chooses which source frame each output frame shows (`pick`): "even" pacing
spreads them evenly in time, "change" samples them at equal steps of accumulated visual
change (the mean absolute difference between consecutive frames), so stretches where
little happens go by quickly; ease-in/out (a cosine time warp) holds the start and the end
longer. The first frame opens the video and the last one, the result, closes it. With
neither pacing nor a length given, re-exporting at another fps writes the same frames,
re-timed.

Python: `python -m pipelines.media.frames FOLDER OUT.mp4 --fps 30 --pacing change --ease`.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipelines.media.pixels import to_rgb
from pipelines.media.video import VideoWriter

__all__ = ["FrameKeeper", "load_frames", "pick", "rerender", "save_frames", "PACINGS"]

MAX_KEPT = 600                 # frames a run keeps; beyond that, every other one is dropped (evenly thinned)
MAX_KEPT_BYTES = 128 * 2**20   # ... and at most this many bytes of pixels
MAX_OUT_FRAMES = 7200          # a re-exported video's frames (two minutes at 60 fps)
MAX_SIDE = 2048                # a re-exported video's longer side
MAX_LOAD = 20000               # frames read back from a folder
PACINGS = ("even", "change")
INFO = "frames.json"
_NAME = re.compile(r"^\d{6}\.png$")


class FrameKeeper:
    """The frames of a run, at most `max_frames` of them and `max_bytes` of pixels: past either bound,
    every other kept frame is dropped and from then on only every `stride`-th new one is kept, so the
    kept ones stay evenly spread over the whole run. The latest frame is always kept (it is the result)."""

    def __init__(self, max_frames: int = MAX_KEPT, max_bytes: int = MAX_KEPT_BYTES):
        self.max_frames, self.max_bytes = max(2, int(max_frames)), int(max_bytes)
        self._kept: list[Image.Image] = []
        self._tail: Image.Image | None = None     # the latest frame, when the stride skipped it
        self.stride, self.seen, self._bytes = 1, 0, 0

    def add(self, frame: Image.Image) -> None:
        frame = to_rgb(frame)
        if self.seen % self.stride == 0:
            self._kept.append(frame)
            self._bytes += frame.width * frame.height * 3
            self._tail = None
            while len(self._kept) > self.max_frames or (self._bytes > self.max_bytes and len(self._kept) > 2):
                self._kept = self._kept[::2]
                self._bytes = sum(f.width * f.height * 3 for f in self._kept)
                self.stride *= 2
        else:
            self._tail = frame
        self.seen += 1

    @property
    def frames(self) -> list[Image.Image]:
        """The kept frames in order; the last is the latest added."""
        return self._kept + ([self._tail] if self._tail is not None else [])

    @property
    def note(self) -> str:
        """What was kept, when not every frame: "kept 1 frame in 4 of 2400 (at most 600)"."""
        if self.stride == 1:
            return ""
        return (f"kept {len(self.frames)} of {self.seen} frames (1 in {self.stride}, at most {self.max_frames} "
                f"and {self.max_bytes // 2**20} MB)")


# ---------------------------------------------------------------------------------------------
# Frames on disk


def save_frames(frames: Sequence[Image.Image], folder: str | os.PathLike, fps: float | None = None,
                **info) -> Path:
    """Write `frames` as `folder/000001.png`, ... and `folder/frames.json` ({"fps", "count", "size", ...});
    returns the folder. Earlier frames in it are removed first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if _NAME.match(old.name):
            old.unlink()
    for i, frame in enumerate(frames, 1):
        to_rgb(frame).save(folder / f"{i:06d}.png", compress_level=1)
    size = list(frames[-1].size) if frames else None
    (folder / INFO).write_text(json.dumps({"fps": fps, "count": len(frames), "size": size, **info}))
    return folder


def load_frames(folder: str | os.PathLike, limit: int = MAX_LOAD) -> tuple[list[Image.Image], dict]:
    """The frames `save_frames` wrote, in order, and its info (`{}` without frames.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"No frames to re-export: {folder.name} is not a folder of frames.")
    names = sorted(p.name for p in folder.iterdir() if _NAME.match(p.name))
    if not names:
        raise ValueError("No frames to re-export: the folder holds no saved frames.")
    if len(names) > limit:
        raise ValueError(f"Too many frames ({len(names)}; at most {limit}).")
    frames = []
    for n in names:
        with Image.open(folder / n) as im:
            if im.width * im.height > MAX_SIDE * MAX_SIDE * 4:
                raise ValueError(f"Frame {n} is too large ({im.width}x{im.height}).")
            frames.append(to_rgb(im.copy()))
    try:
        info = json.loads((folder / INFO).read_text())
        info = info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        info = {}
    return frames, info


# ---------------------------------------------------------------------------------------------
# Choosing and timing the frames


def _changes(frames: Sequence[Image.Image], side: int = 64) -> np.ndarray:
    """Mean absolute difference (0..1) between each frame and the one before, on small copies."""
    small = []
    for f in frames:
        w, h = f.size
        s = min(1.0, side / max(w, h))
        g = f if s == 1 else f.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
        small.append(np.asarray(to_rgb(g), dtype=np.float32) / 255)
    out = np.zeros(len(frames))
    for i in range(1, len(small)):
        a, b = small[i - 1], small[i]
        if a.shape != b.shape:
            out[i] = 1.0            # a new size (a phase change): a full change
        else:
            out[i] = float(np.abs(a - b).mean())
    return out


def pick(frames: Sequence[Image.Image], n_out: int | None = None, pacing: str = "even",
         ease: bool = False) -> list[int]:
    """Which source frame each of `n_out` output frames shows (default: as many as the source).

    even: equal steps through the frames; change: equal steps of accumulated visual change
    (frames where little changes are skipped, a big change is held); ease: a cosine time warp,
    so the start and the end are held longer. The first output is frame 0, the last is the last.
    """
    if pacing not in PACINGS:
        raise ValueError(f"Pacing must be one of {', '.join(PACINGS)} (got {pacing!r}).")
    n = len(frames)
    if n == 0:
        raise ValueError("There are no frames to re-export.")
    n_out = n if n_out is None else int(n_out)
    if n_out < 1:
        raise ValueError("The video needs at least one frame.")
    if n == 1 or n_out == 1:
        return [n - 1] * n_out
    u = np.linspace(0.0, 1.0, n_out)
    if ease:
        u = (1 - np.cos(math.pi * u)) / 2
    if pacing == "change":
        c = np.cumsum(_changes(frames))
        if c[-1] > 1e-9:
            c = c / c[-1]
            # the first frame whose accumulated change reaches u (ties: the earliest)
            idx = np.searchsorted(c, u - 1e-12, side="left")
        else:                       # nothing changes: even pacing
            idx = np.rint(u * (n - 1))
    else:
        idx = np.rint(u * (n - 1))
    idx = np.clip(idx.astype(int), 0, n - 1)
    idx[0], idx[-1] = 0, n - 1
    return [int(i) for i in idx]


def _scaled(frame: Image.Image, s: float) -> Image.Image:
    if s == 1:
        return frame
    w, h = frame.size
    new = (max(1, round(w * s)), max(1, round(h * s)))
    # small pictures stay crisp: nearest-neighbour when enlarging, Lanczos when shrinking
    return frame.resize(new, Image.Resampling.NEAREST if s > 1 else Image.Resampling.LANCZOS)


def rerender(frames: Sequence[Image.Image], out_path: str | os.PathLike, fps: float, size: int | None = None,
             pacing: str = "even", ease: bool = False, seconds: float | None = None,
             min_side: int = 256) -> Path:
    """The frames as a new mp4 at `fps`: `size` the longer side in pixels (None or 0: as the run's video,
    enlarged by a whole factor to at least `min_side`), `pacing` and `ease` as in `pick`, `seconds` the
    length (None: one output frame per source frame). Returns the path."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 1 <= fps <= 60:
        raise ValueError(f"Frame rate must be from 1 to 60 fps (got {fps!r}).")
    if size is not None and size != 0 and (isinstance(size, bool) or not isinstance(size, (int, float))
                                           or not 16 <= size <= MAX_SIDE):
        raise ValueError(f"Size must be 0 (as recorded) or a longer side from 16 to {MAX_SIDE} px (got {size!r}).")
    if not frames:
        raise ValueError("There are no frames to re-export.")
    n_out = None
    if seconds is not None and seconds != 0:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0 \
                or not math.isfinite(seconds):
            raise ValueError(f"Length must be a positive number of seconds (got {seconds!r}).")
        n_out = max(1, round(seconds * fps))
    if (n_out or len(frames)) > MAX_OUT_FRAMES:
        raise ValueError(f"That makes {n_out or len(frames)} frames; at most {MAX_OUT_FRAMES}: lower the fps or "
                         "the length.")
    order = pick(frames, n_out, pacing, ease)
    first = frames[0]
    if size:
        s = float(size) / max(first.size)
        scaled: dict[int, Image.Image] = {}
        writer = VideoWriter(out_path, fps=fps, min_side=1)
        with writer:
            for i in order:
                if i not in scaled:
                    scaled = {i: _scaled(to_rgb(frames[i]), s)}     # consecutive repeats are resized once
                writer.append(scaled[i])
    else:
        writer = VideoWriter(out_path, fps=fps, min_side=min_side)
        with writer:
            for i in order:
                writer.append(frames[i])
    path = writer.close()
    assert path is not None
    return path


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pipelines.media.frames",
                                 description="Re-export a run's saved frames as an mp4, without the model.")
    ap.add_argument("folder", help="a folder written by save_frames (000001.png ..., frames.json)")
    ap.add_argument("out", help="the mp4 to write")
    ap.add_argument("--fps", type=float, default=None, help="frame rate (default: the run's)")
    ap.add_argument("--size", type=int, default=0, help="longer side in px (0: as recorded)")
    ap.add_argument("--pacing", choices=PACINGS, default="even")
    ap.add_argument("--ease", action="store_true", help="hold the start and the end longer")
    ap.add_argument("--seconds", type=float, default=None, help="the video's length (default: a frame per frame)")
    a = ap.parse_args(argv)
    frames, info = load_frames(a.folder)
    fps = a.fps or info.get("fps") or 10
    print(rerender(frames, a.out, fps, a.size, a.pacing, a.ease, a.seconds))


if __name__ == "__main__":
    main()
