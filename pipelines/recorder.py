"""The run recorder: what a run leaves behind, written the same way for the page and the command line.

    rec = Recorder(engine, request, folder, stem, fps=10)
    for ev in engine.run(request, registry, should_stop):
        if isinstance(ev, Step):
            rec.add(ev)            # keeps the previews; appends the engine's video frame
        else:
            out = rec.finish(ev)   # PNGs with settings, the strip, the closed mp4

Every picture is saved as a PNG carrying the run's metadata (plus the engine's per-picture
part: its place in the batch or its CLIP rank), with an enlarged copy when it is small.
The engine decides what a video frame is (`Engine.frame`), which frames close the video
(`Engine.closing_frames`) and what the strip shows (`Engine.strip`). An error or a
server shutdown calls `abort`, which drops the unfinished video.

The frames of the video are kept too, at their true size (`Recording.frames`, evenly thinned
past `media.frames.MAX_KEPT`), so the video can be made again at another frame rate, size or
pacing without the model (`media.rerender`; `media.save_frames` writes them to a folder).

File names: `unique=True` (the page) gives each file a fresh name in `folder`
(`<stem>-<time>-<hex>.png`); otherwise (the command line) `<stem>.png` for a single
picture, `<stem>_<k>.png` for several, `<stem>_strip.png` and `<stem>.mp4`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from pipelines import media
from pipelines.engine import Engine
from pipelines.events import Final, Step

STRIP_MIN_SIDE = 128     # strips are enlarged to at least this height
IMAGE_MIN_SIDE = 256     # small pictures also get an enlarged copy at least this big


@dataclass
class Recording:
    """What `Recorder.finish` wrote."""
    pictures: list[list[Path]] = field(default_factory=list)   # per picture: the PNG, then its enlarged copy
    strip: Image.Image | None = None                            # enlarged, as saved
    strip_paths: list[Path] = field(default_factory=list)
    video: Path | None = None
    frames: list[Image.Image] = field(default_factory=list)    # the video's frames at true size (media.rerender)
    fps: float = 10                                              # the video's frame rate
    frames_note: str = ""                                        # said when frames were thinned

    @property
    def files(self) -> list[str]:
        """Every file written, for a download list."""
        paths = [p for ps in self.pictures for p in ps] + self.strip_paths + ([self.video] if self.video else [])
        return [str(p) for p in paths]

    @property
    def shown(self) -> list[str]:
        """Per picture the file to show (the enlarged copy where there is one)."""
        return [str(ps[-1]) for ps in self.pictures]


class Recorder:
    def __init__(self, engine: Engine, request, folder: str | Path, stem: str, *, fps: float | None = None,
                 video: bool = True, unique: bool = True):
        self.engine, self.request = engine, request
        self.folder, self.stem, self.unique = Path(folder), stem or engine.name, unique
        self.previews: list[dict] = []          # every Step's previews, in order
        self.fps = fps or engine.fps
        self.writer = media.VideoWriter(self._path("", ".mp4"), fps=self.fps) if video else None
        self.keeper = media.FrameKeeper() if video else None    # the frames, to make the video again

    def _path(self, tag: str, suffix: str) -> Path:
        if self.unique:
            return media.new_output_path(self.folder, self.stem + tag, suffix)
        return self.folder / f"{self.stem}{tag}{suffix}"

    def add(self, ev: Step) -> Image.Image | None:
        """Keep a Step's previews; returns the video frame it made, if any."""
        if not ev.previews:
            return None
        self.previews.append(dict(ev.previews))
        frame = self.engine.frame(self.request, ev.previews)
        if frame is not None and self.writer is not None:
            self.writer.append(frame)
            self.keeper.add(frame)
        return frame

    def finish(self, final: Final) -> Recording:
        """Save the pictures, the strip and the video of a finished (or stopped) run."""
        rec = Recording()
        many = len(final.images) > 1
        for k, image in enumerate(final.images):
            tag = f"_{k}" if many and not self.unique else ""
            rec.pictures.append(media.save_png(image, self._path(tag, ".png"),
                                               {**final.meta, **self.engine.image_meta(final, k)},
                                               enlarged_min_side=IMAGE_MIN_SIDE))
        strip = self.engine.strip(self.request, self.previews, final)
        if strip is not None:
            rec.strip = media.enlarge(strip, STRIP_MIN_SIDE)
            rec.strip_paths = media.save_png(rec.strip, self._path("-strip" if self.unique else "_strip", ".png"),
                                             final.meta)
        if self.writer is not None:
            for frame in self.engine.closing_frames(self.request, final):
                self.writer.append(frame)
                self.keeper.add(frame)
            rec.video, self.writer = self.writer.close(), None
            if rec.video is not None:
                rec.frames, rec.fps, rec.frames_note = self.keeper.frames, self.fps, self.keeper.note
        return rec

    def abort(self) -> None:
        """Drop the unfinished video (an error, or the server shutting down)."""
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
