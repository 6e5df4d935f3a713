"""The engine contract: what an engine declares so that every front end can drive it.

An engine is one module, `pipelines/<name>.py`, holding three things:

    a request     a frozen dataclass; its fields are the run's settings (prompt, seed, steps...)
    run           run(request, registry, should_stop) -> Iterator[Step | Final]   (pipelines/events.py)
    ENGINE_SPEC   an `Engine` below: its name, request type, run, the preset roles it
                  needs, its limits and how its previews become video frames and strips

and one line in the table of `pipelines/engines.py`. The page (`ui/`), the command line
(`python -m pipelines ENGINE`), the recorder that writes PNGs and videos
(`pipelines/recorder.py`), the evaluation (`lab/eval`) and the tests all read that table,
so none of them names an engine's module.

Everything here is plain data and small functions over a request; nothing loads a model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from PIL import Image

from pipelines.events import Event, Final


def plain_settings(req) -> dict:
    """A request as plain JSON data for an image's metadata: pictures become their digests, tuples lists."""
    from pipelines.media import image_digest

    out = {}
    for f in dataclasses.fields(req):
        v = getattr(req, f.name)
        if isinstance(v, Image.Image):
            v = image_digest(v)
        elif isinstance(v, tuple):
            v = [list(x) if isinstance(x, tuple) else x for x in v]
        out[f.name] = v
    return out


def _as_tuple(v):
    return tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, (list, tuple)) else v


def no_frame(req, previews: Mapping[str, Image.Image]) -> Image.Image | None:
    return None


def no_closing_frames(req, final: Final) -> Sequence[Image.Image]:
    return ()


def no_strip(req, previews: Sequence[Mapping[str, Image.Image]], final: Final) -> Image.Image | None:
    return None


def batch_index(final: Final, k: int) -> dict:
    """What an image's metadata adds to the run's: its place in the batch."""
    return {"batch_index": k}


@dataclass(frozen=True)
class Engine:
    name: str                            # tab id, API name, command-line word, `engine` in an image's metadata
    label: str                           # the tab's title
    request: type                        # the frozen request dataclass
    run: Callable[..., Iterator[Event]]  # run(request, registry, should_stop)
    needs: tuple[tuple[str, ...], ...]   # a preset serves it when it has every role of one of these sets
    optional: tuple[str, ...] = ()       # roles it also takes where the preset has them
    kinds: Mapping[str, tuple[str, ...]] = field(default_factory=dict)   # role -> the component kinds it can use
    replaces: Mapping[str, str] = field(default_factory=dict)   # optional role -> the role it stands in for where present
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)   # field -> (lowest, highest)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)      # field -> allowed values
    image_fields: tuple[str, ...] = ()   # fields holding pictures: stored in metadata as digests only
    parse: Mapping[str, Callable[[str], Any]] = field(default_factory=dict)  # field -> from command-line text
    # what a run leaves behind (pipelines/recorder.py), each given the run's request first:
    frame: Callable[..., Image.Image | None] = no_frame                  # (req, a Step's previews) -> video frame
    closing_frames: Callable[..., Sequence[Image.Image]] = no_closing_frames   # (req, final) -> last frames
    strip: Callable[..., Image.Image | None] = no_strip                  # (req, every Step's previews, final)
    image_meta: Callable[[Final, int], dict] = batch_index     # per picture, added to the run's metadata
    settings: Callable[[Any], dict] = plain_settings             # request -> JSON for the metadata
    work: Callable[[Any], float] = lambda req: 1.0               # units of work a request asks for (steps x pictures)
    cost: tuple[float, float] = (0.0, 1.0)   # measured here: set-up seconds, seconds per unit (pipelines/estimate.py)
    memory_work: Callable[[Any], float] = lambda req: 1.0   # units of memory a run holds at once (pictures x pixels)
    memory_cost: float = 0.0             # measured here: bytes per unit of memory_work, beyond the weights
    pausable: bool = False               # run(..., resume=state, max_steps=n) pauses and continues (events.Pause)
    # (req, models, device) -> None: what `run` would refuse, checked without loading anything (the page's
    # validator, before a run); `models` maps roles to those of the preset already loaded, maybe none
    check: Callable[..., None] = lambda req, models, device: None
    fps: int = 10                        # the video's default frame rate

    # --- presets ---
    def supports(self, preset) -> bool:
        """Whether the preset has the models this engine needs."""
        return any(set(roles) <= set(preset.components) and all(
            preset.components[r].kind in self.kinds.get(r, (preset.components[r].kind,)) for r in roles)
            for roles in self.needs)

    def components(self, preset) -> dict:
        """Role -> spec of the preset's models this engine uses; a clear error when it cannot run."""
        if not self.supports(preset):
            raise ValueError(f"The preset '{preset.name}' has no {self.label} models; choose one that has "
                             f"({', '.join(' + '.join(r) for r in self.needs)}).")
        roles = next(r for r in self.needs if set(r) <= set(preset.components) and all(
            preset.components[k].kind in self.kinds.get(k, (preset.components[k].kind,)) for k in r))
        out = {r: preset.components[r] for r in (*roles, *self.optional) if r in preset.components}
        for role, instead_of in self.replaces.items():   # e.g. a text encoder of its own: the shared CLIP is not needed
            if role in out:
                out.pop(instead_of, None)
        return out

    def defaults(self, preset=None) -> dict:
        """Every setting's default: the request's own, then the preset's for this engine."""
        d = {f.name: f.default for f in dataclasses.fields(self.request) if f.default is not dataclasses.MISSING}
        if preset is not None:
            d.update({k: _as_tuple(v) for k, v in preset.defaults.get(self.name, {}).items() if k in d})
        return d

    # --- requests ---
    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.request))

    def request_from_settings(self, settings: dict, **overrides):
        """Rebuild a request from the `settings` in an image's metadata (pictures are not stored)."""
        names = set(self.fields) - set(self.image_fields)
        kw = {k: _as_tuple(v) for k, v in settings.items() if k in names}
        return self.request(**{**kw, **overrides})

    def make_request(self, preset, /, **given):
        """A request from the preset's defaults and the given values (None = not given)."""
        return self.request(**{**self.defaults(preset), **{k: v for k, v in given.items() if v is not None}})
