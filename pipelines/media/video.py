"""Videos and output names: mp4 files that browsers play, and new file names for results.

:class:`VideoWriter` pipes frames to the ffmpeg binary bundled with ``imageio-ffmpeg``
(:func:`ffmpeg_exe`) and writes H.264 / yuv420p mp4 that browsers play. There is no system
ffmpeg on Spaces-like hosts and Gradio only converts videos when one exists
(``reference/gradio_and_spaces.md`` sections 1 and 3), so the file must be browser-ready as
written. :func:`new_output_path` names every saved PNG and mp4.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterable
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.media.pixels import enlarge_factor, to_rgb, to_uint8

__all__ = ["VideoWriter", "ffmpeg_exe", "new_output_path", "write_video"]


# ---------------------------------------------------------------------------------------------
# Video


def ffmpeg_exe() -> str:
    """The path of the ffmpeg binary bundled with ``imageio-ffmpeg``."""
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
            img = to_rgb(frame)
        else:
            img = Image.fromarray(to_uint8(frame), "RGB")
        if self._first is None:
            k = enlarge_factor(img.size, self.min_side, None)
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
            ffmpeg_exe(), "-y", "-hide_banner", "-nostdin", "-loglevel", "error",
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
