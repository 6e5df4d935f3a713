"""Re-export video: a tab's last progress video made again from its run's kept frames, without the model.

Every run keeps the frames of its video (`Recording.frames`, pipelines/recorder.py). Under each
tab's video an accordion makes a new mp4 of the last run of this browser at another frame rate,
size (the longer side; small pictures enlarged nearest-neighbour), pacing (even, or by visual
change) and length, with ease-in/out (`media.rerender`). The new video replaces the shown one and
joins the downloads; `/<tab>_reexport` does the same for API clients.

The frames of each owner's last run in each tab stay in memory (the last `KEEP_OWNERS` owners per
tab, within `KEEP_BYTES`) until the server restarts.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import gradio as gr
from PIL import Image

from pipelines import media
from pipelines.media.frames import MAX_OUT_FRAMES, PACINGS
from ui.common import output_dir, owner_of, user_error

KEEP_OWNERS = 16                 # owners whose last run's frames a tab keeps ...
KEEP_BYTES = 256 * 2**20         # ... within this many bytes of pixels (the newest run is always kept)
SIZES = [("As recorded", 0), ("256 px", 256), ("512 px", 512), ("768 px", 768), ("1024 px", 1024)]
NO_RUN = ("There is no run to re-export yet: run this tab first (the frames of this browser's last run are "
          "kept while the server runs).")
NO_FRAMES = "The last run made no video (no previews: Preview every 0), so there are no frames to re-export."


@dataclass
class Kept:
    """A finished run's frames, as its video was made of them, and its downloads."""
    frames: list[Image.Image]
    fps: float
    stem: str
    files: list[str] = field(default_factory=list)
    note: str = ""


class Reexport:
    def __init__(self, tab):
        self.tab = tab
        self.kept: OrderedDict[str, Kept] = OrderedDict()     # owner -> their last run in this tab
        self._lock = threading.Lock()

    # --- the runs' side ---
    def keep(self, owner: str | None, rec, stem: str) -> None:
        """After a run: keep its recording's frames for `owner` (the oldest owner's go past KEEP_OWNERS)."""
        if owner is None:
            return
        with self._lock:
            self.kept.pop(owner, None)
            self.kept[owner] = Kept(list(getattr(rec, "frames", [])), getattr(rec, "fps", self.tab.engine.fps),
                                    stem or self.tab.name, list(rec.files), getattr(rec, "frames_note", ""))
            while len(self.kept) > 1 and (len(self.kept) > KEEP_OWNERS or self._bytes() > KEEP_BYTES):
                self.kept.popitem(last=False)

    def _bytes(self) -> int:
        return sum(f.width * f.height * 3 for k in self.kept.values() for f in k.frames)

    def get(self, owner: str) -> Kept | None:
        with self._lock:
            return self.kept.get(owner)

    # --- the page's side ---
    def box(self) -> None:
        """The "Re-export video" accordion (under the tab's video)."""
        p = self.tab.prefix
        with gr.Accordion("Re-export video", open=False, elem_id=f"{p}_reexport_box"):
            with gr.Row():
                self.fps = gr.Slider(1, 60, value=self.tab.engine.fps, step=1, label="Frame rate (fps)",
                                     elem_id=f"{p}_reexport_fps")
                self.size = gr.Dropdown(SIZES, value=0, label="Size (longer side)", elem_id=f"{p}_reexport_size")
            with gr.Row():
                self.pacing = gr.Radio([("Even", "even"), ("By visual change", "change")], value="even",
                                       label="Pacing", elem_id=f"{p}_reexport_pacing",
                                       info="by visual change: quiet stretches go by quickly")
                self.ease = gr.Checkbox(False, label="Ease in and out (hold the start and the end)",
                                        elem_id=f"{p}_reexport_ease")
                self.seconds = gr.Number(0, label="Length in seconds (0: one frame per frame)", minimum=0,
                                         elem_id=f"{p}_reexport_seconds")
            self.button = gr.Button("Re-export", variant="secondary", elem_id=f"{p}_reexport")
            self.note = gr.Markdown("", elem_id=f"{p}_reexport_note")

    def wire(self) -> None:
        tab = self.tab
        video, files = tab.outputs["video"], tab.outputs["files"]

        def reexport(fps, size, pacing, ease, seconds, client_id, request: gr.Request):
            kept = self.get(owner_of(client_id, request))
            if kept is None:
                raise user_error(ValueError(NO_RUN))
            if not kept.frames:
                raise user_error(ValueError(NO_FRAMES))
            try:
                out = self.render(kept, fps, size, pacing, ease, seconds)
            except ValueError as e:
                raise user_error(e) from None
            return str(out), kept.files, self.describe(kept, fps, size, pacing, ease, seconds)

        self.button.click(reexport, [self.fps, self.size, self.pacing, self.ease, self.seconds, tab.runs.client],
                          [video, files, self.note], api_name=f"{tab.name}_reexport", concurrency_id="reexport",
                          concurrency_limit=2)

    def render(self, kept: Kept, fps, size, pacing, ease, seconds):
        """The new mp4 of `kept` (its path, added to its downloads); ValueError with a sentence for bad settings."""
        fps = _number("Frame rate", fps, kept.fps)
        size = int(_number("Size", size, 0))
        seconds = _number("Length", seconds, 0)
        if pacing not in PACINGS:
            raise ValueError(f"Pacing must be one of {', '.join(PACINGS)}.")
        if seconds and seconds * fps > MAX_OUT_FRAMES:
            raise ValueError(f"{seconds:g} s at {fps:g} fps is {seconds * fps:.0f} frames; at most {MAX_OUT_FRAMES}.")
        path = media.new_output_path(output_dir(), f"{fps:g}fps-{kept.stem}", ".mp4")   # the slug keeps 60 chars
        out = media.rerender(kept.frames, path, fps, size or None, pacing, bool(ease), seconds or None)
        with self._lock:
            kept.files = kept.files + [str(out)]
        return out

    @staticmethod
    def describe(kept: Kept, fps, size, pacing, ease, seconds) -> str:
        n = round(float(seconds) * float(fps)) if seconds else len(kept.frames)
        how = [f"{float(fps):g} fps", f"{int(size)} px" if size else "as recorded",
               "paced by visual change" if pacing == "change" else "even pacing"] + (["eased"] if ease else [])
        thinned = f" ({kept.note})" if kept.note else ""
        return (f"Re-exported {len(kept.frames)} frames{thinned} as {n} frames, {n / float(fps):.1f} s: "
                f"{', '.join(how)}. The run's video was {kept.fps:g} fps.")


def _number(name: str, v, default: float) -> float:
    if v is None or v == "":
        return float(default)
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (got {v!r}).") from None
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number.")
    return x
