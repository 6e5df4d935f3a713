"""One prompt, every engine: the same prompt and seed through each engine a preset serves, side by side.

    board = CompareBoard(CompareRequest(prompt="a red circle above a blue square", preset="shapes", seed=3))
    for name, ev in run(board.requests, registry, should_stop):   # each engine's own events, in turn
        board.add(name, ev)
    out = board.write(folder, stem)      # each result with its settings, the pictures side by side, one mp4

Each engine runs its preset defaults with the given prompt and seed and makes one picture (batch
1; DALL-E keeps its candidates and CLIP's best comes first). The combined video puts every
engine's own video frames side by side, each stretched to the same length, so the runs are seen
forming together; its last frame is every engine's result. Stop ends the engine running and
skips the rest; what was made is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from pipelines import media
from pipelines.engine import Engine
from pipelines.events import Final, Step, StopCheck, never_stop
from pipelines.presets import load_preset
from pipelines.validation import number

LABEL_H = 18              # pixels of the label above each engine's column
SIDE = 256                # every column is scaled to this height


@dataclass(frozen=True)
class CompareRequest:
    prompt: str = ""
    preset: str = "shapes"
    seed: int = 0


def engines_for(preset) -> list[Engine]:
    """The engines the preset serves, in tab order."""
    from pipelines.engines import ENGINES

    return [e for e in ENGINES.values() if e.supports(preset)]


def requests(req: CompareRequest, overrides: dict[str, dict] | None = None) -> dict[str, object]:
    """Each engine's request: the preset's defaults, the prompt and the seed, one picture (`overrides`:
    engine name -> fields to set as well, e.g. fewer steps in a test)."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise ValueError("Type a prompt to compare the engines on.")
    seed = number("Seed", req.seed, 0, 2**63 - 1, integer=True)
    preset = load_preset(req.preset)
    engines = engines_for(preset)
    if len(engines) < 2:
        raise ValueError(f"The preset '{preset.name}' serves only {len(engines)} engine; choose one that serves "
                         "several (the built-in 'shapes' serves all four).")
    out = {}
    for engine in engines:
        one = {k: 1 for k in ("batch",) if k in engine.fields}
        out[engine.name] = engine.make_request(preset, prompt=req.prompt, seed=seed,
                                               **{**one, **(overrides or {}).get(engine.name, {})})
    return out


def run(reqs: dict[str, object], registry, should_stop: StopCheck = never_stop) -> Iterator[tuple[str, Step | Final]]:
    """(engine name, event) for every engine of `requests(...)` in turn; Stop ends the current engine and
    skips the rest."""
    from pipelines.engines import ENGINES

    for name, engine_req in reqs.items():
        if should_stop():
            return
        for ev in ENGINES[name].run(engine_req, registry, should_stop):
            yield name, ev


class CompareBoard:
    """Collects the engines' video frames and results; writes the pictures, a side-by-side and one video."""

    def __init__(self, req: CompareRequest, overrides: dict[str, dict] | None = None):
        from pipelines.engines import ENGINES

        self.req = req
        self.requests = requests(req, overrides)
        self.engines = {n: ENGINES[n] for n in self.requests}
        self.frames: dict[str, list[Image.Image]] = {n: [] for n in self.requests}
        self.finals: dict[str, Final] = {}

    def add(self, name: str, ev: Step | Final) -> None:
        engine, engine_req = self.engines[name], self.requests[name]
        if isinstance(ev, Final):
            self.finals[name] = ev
            if ev.images:           # every column ends on its result
                self.frames[name].append(ev.images[0].convert("RGB"))
        elif ev.previews:
            frame = engine.frame(engine_req, ev.previews)
            if frame is not None:
                self.frames[name].append(frame.convert("RGB"))

    @property
    def labels(self) -> dict[str, str]:
        return {n: self.engines[n].label + (" (stopped)" if self.finals.get(n) and self.finals[n].stopped else "")
                for n in self.finals}

    def results(self) -> list[tuple[Image.Image, str]]:
        """(picture, engine label) per finished engine, in tab order."""
        return [(f.images[0], self.labels[n]) for n, f in self.finals.items() if f.images]

    def board(self) -> Image.Image | None:
        """The results side by side under their labels."""
        shown = [(n, [f.images[0]]) for n, f in self.finals.items() if f.images]
        return _row([(self.labels[n], frames[-1]) for n, frames in shown]) if shown else None

    def video_frames(self) -> list[Image.Image]:
        """Every engine's frames stretched to the longest run's count, side by side; the last: the results."""
        columns = {n: fr for n, fr in self.frames.items() if fr and n in self.finals}
        if not columns:
            return []
        length = max(len(fr) for fr in columns.values())
        # each column as wide as its widest frame (diffusion's frames are x_t | x_0, its result one picture)
        widths = {n: max(_scaled_width(im) for im in fr) for n, fr in columns.items()}
        out = []
        for t in range(length):
            cells = []
            for n, fr in columns.items():
                k = round(t * (len(fr) - 1) / max(1, length - 1))
                cells.append((self.labels[n], fr[k], widths[n]))
            out.append(_row(cells))
        return out

    def write(self, folder: str | Path, stem: str, fps: float = 10) -> dict:
        """Each result as a PNG with its own settings, the board as a PNG, and the combined mp4."""
        folder = Path(folder)
        files, shown = [], []
        for n, f in self.finals.items():
            if f.images:
                paths = media.save_png(f.images[0], media.new_output_path(folder, f"{stem}-{n}", ".png"),
                                       {**f.meta, "compare": {"prompt": self.req.prompt, "seed": self.req.seed}},
                                       enlarged_min_side=SIDE)
                files += paths
                shown.append((str(paths[-1]), self.labels[n]))
        board = self.board()
        board_path = None
        if board is not None:
            board_path = media.new_output_path(folder, f"{stem}-compare", ".png")
            board.save(board_path)
            files.append(board_path)
        video = None
        frames = self.video_frames()
        if frames:
            writer = media.VideoWriter(media.new_output_path(folder, f"{stem}-compare", ".mp4"), fps=fps)
            for frame in frames:
                writer.append(frame)
            video = writer.close()
            files.append(video)
        return {"pictures": shown, "board": board_path, "video": video, "files": [str(p) for p in files]}


def _scaled_width(img: Image.Image) -> int:
    return max(1, round(img.width * SIDE / img.height))


def _row(cells: list[tuple], gap: int = 4) -> Image.Image:
    """Pictures scaled to SIDE high (nearest-neighbour: small pictures stay crisp), labelled, side by side;
    a cell (label, picture, width) is centred in a column that wide."""
    scaled = []
    for label, img, *column in cells:
        resample = Image.Resampling.NEAREST if img.height < SIDE else Image.Resampling.LANCZOS
        im = img.convert("RGB").resize((_scaled_width(img), SIDE), resample)
        scaled.append((label, im, max(column[0] if column else 0, im.width)))
    width = sum(w for *_, w in scaled) + gap * (len(scaled) - 1)
    out = Image.new("RGB", (width, SIDE + LABEL_H), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = 0
    for label, im, w in scaled:
        out.paste(im, (x + (w - im.width) // 2, LABEL_H))
        draw.text((x + 4, 3), label, fill=(0, 0, 0))
        x += w + gap
    return out
