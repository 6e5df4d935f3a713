"""DALL-E: a GPT writes the image as VQGAN codes after the caption; CLIP picks the best.

The recipe of Ramesh et al. (2021) over the preset's models: the built-in GPT
(`pipelines/models/dalle.py`), or DALL-E Mega / Mini as min-dalle publishes them, a BART
over a 16 x 16 grid of an f16 VQGAN (`pipelines/models/dalle_bart.py`; presets dalle-mega,
dalle-mini). Both offer the same `text` tokenizer, `config` and `sample` to this engine:

    text     = tokenize(prompt)                           (T,) padded, truncated with a notice
    codes    = model.sample(text, ...)                    (B, grid^2) all candidates as one batch,
                                                          KV cache, image positions score codes only
    images   = vqgan.decode(codes)                        (B, 3, H, W)
    ranked   = sort by CLIP cosine(image, prompt)         best first (when rerank is on)

Previews: after every row of codes (8 for the built-in model, 16 for min-dalle's) the
partial grids of all candidates are decoded, with the positions not yet written painted
flat grey, and tiled into one picture. Image completion keeps the first `keep_rows` rows
of an uploaded image's codes and lets the model write the rest (the paper's image-to-image
trick); it needs a VQGAN with an encoder, which min-dalle's files lack. Stop ends the run
after the current code and returns the candidates as far as they got (grey where unwritten).

`subseed` and `subseed_strength` vary each code's draw (pipelines/seeds.py, models/dalle.draw_codes).

Command line: `python -m pipelines dalle "a large yellow diamond above a small blue circle"`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from PIL import Image

from pipelines import __version__, media
from pipelines.engine import Engine
from pipelines.events import Final, Step, StopCheck, never_stop
from pipelines.presets import load_preset
from pipelines.seeds import generator as seeded
from pipelines.validation import MAX_GUIDANCE, MAX_SEED, variation
from pipelines.validation import number as _number

log = logging.getLogger(__name__)

ENGINE = "dalle"
MAX_CANDIDATES = 64
MAX_TEMPERATURE = 100.0
UNKNOWN_GREY = 0.5          # the colour of positions not written yet (no palette colour is grey)


@dataclass(frozen=True)
class DalleRequest:
    prompt: str = ""
    preset: str = "shapes"
    candidates: int = 8
    temperature: float = 1.0
    top_k: int = 1024                    # sample among the k likeliest codes; the codebook size = no limit
    top_p: float = 1.0                   # 1 = no nucleus filtering
    guidance: float = 1.0                # classifier-free ("supercondition") scale; 1 = off
    seed: int = 0
    rerank: bool = True                  # order the candidates by CLIP, best first
    init_image: Image.Image | None = None  # image completion: keep its top rows
    keep_rows: int = 4                   # rows of the init image's codes that are kept
    subseed: int = 0                     # vary seed (pipelines/seeds.py): each code's draw mixes the seed's
    subseed_strength: float = 0.0        # random numbers with the subseed's by this much; 0 = off

    def replace(self, **kw) -> "DalleRequest":
        return dataclasses.replace(self, **kw)


def check(req: DalleRequest, cfg=None) -> None:
    """Every field, against the model's config where given (top-k, rows to keep); no model needed."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise ValueError("Enter a prompt, e.g. 'a large yellow diamond above a small blue circle'.")
    _number("Candidates", req.candidates, 1, MAX_CANDIDATES, integer=True)
    _number("Temperature", req.temperature, 0, MAX_TEMPERATURE, lo_open=True)
    _number("Top-k", req.top_k, 1, cfg.n_codes if cfg is not None else float("inf"), integer=True)
    _number("Top-p", req.top_p, 0, 1, lo_open=True)
    _number("Guidance scale", req.guidance, 0, MAX_GUIDANCE)
    _number("Seed", req.seed, 0, MAX_SEED, integer=True)
    variation(req.subseed, req.subseed_strength)
    if req.init_image is not None:
        _number("Rows to keep", req.keep_rows, 1, cfg.grid - 1 if cfg is not None else float("inf"), integer=True)


def validate(req: DalleRequest, model) -> tuple[DalleRequest, torch.Tensor, list[str]]:
    """Check every field against the model; return the request, its text ids (1, T) and notices."""
    cfg = model.config
    notices = []
    check(req, cfg)
    text, kept = model.text([req.prompt])
    if kept[0] is not None:
        notices.append(f"The prompt is longer than the model's text context ({cfg.text_len} tokens); "
                       f"only this part is read: '{kept[0].strip()}'.")
    return req, text, notices


def completion_image(image: Image.Image, size: int) -> tuple[Image.Image, list[str]]:
    """The image to complete as RGB at the model's canvas size; notices say what was changed."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"The image to complete must be a picture, not a {type(image).__name__}.")
    w, h = image.size
    if w != h:
        raise ValueError(f"The image to complete must be square (got {w}x{h}): crop it to a square first.")
    notices = []
    mode = image.mode
    rgb = media.load_image(image, name="image to complete")  # size limits; any mode -> RGB, alpha onto white
    if mode != "RGB":
        how = " (transparent parts put on white)" if "A" in mode or "transparency" in image.info else ""
        notices.append(f"The image to complete was in {mode} mode; it was converted to RGB{how}.")
    if (w, h) != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
        notices.append(f"The image to complete was {w}x{h}; it was resized to the model's {size}x{size}.")
    return rgb, notices


# ---------------------------------------------------------------------------
# Pixels from codes
# ---------------------------------------------------------------------------


@torch.no_grad()
def decode_partial(vqgan, codes: torch.Tensor, grid: int) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) of code grids written up to codes.shape[1]; the rest flat grey."""
    B, k = codes.shape
    full = torch.cat([codes, codes.new_zeros(B, grid * grid - k)], dim=1)
    x = vqgan.decode_indices(full, (B, grid, grid)).float().clamp(-1, 1).add(1).div(2)
    if k < grid * grid:
        known = (torch.arange(grid * grid, device=codes.device) < k).view(1, 1, grid, grid).float()
        known = torch.nn.functional.interpolate(known, size=x.shape[-2:], mode="nearest")
        x = x * known + UNKNOWN_GREY * (1 - known)
    return x


def tile(images: Sequence[Image.Image], cols: int | None = None, gap: int = 2) -> Image.Image:
    """Candidates side by side (rows of `cols`), separated by white gaps."""
    n = len(images)
    cols = cols or min(n, 4)
    rows = -(-n // cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), (255, 255, 255))
    for i, img in enumerate(images):
        sheet.paste(img, ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    return sheet


def _pils(x: torch.Tensor) -> list[Image.Image]:
    return [media.to_pil(im, value_range=(0, 1)) for im in x]


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


_CODES: dict[str, int] = {}     # preset -> codes per candidate of its loaded model (run() notes it)


def codes_per_candidate(preset_name: str) -> int:
    """The image codes one candidate is made of: the loaded model's config once a run has loaded it, else
    what the preset names (min-dalle's 16 x 16 grid; a built-in folder's dalle.json), else 64."""
    if preset_name in _CODES:
        return _CODES[preset_name]
    return _preset_codes(preset_name)


@functools.lru_cache(maxsize=64)
def _preset_codes(preset_name: str) -> int:
    try:
        spec = load_preset(preset_name).components["dalle"]
        if spec.kind == "min_dalle":
            return 256
        if spec.source == "builtin":
            from pipelines.presets import PRESETS_DIR

            cfg = json.loads((PRESETS_DIR / "weights" / spec.location / "dalle.json").read_text())
            return int(cfg.get("grid", 8)) ** 2
    except (ValueError, KeyError, OSError, TypeError):
        pass
    return 64


def run(req: DalleRequest, registry, should_stop: StopCheck = never_stop) -> Iterator[Step | Final]:
    """The engine: the preset's DALL-E, VQGAN (and CLIP when reranking) from the registry, then `sample`."""
    preset = load_preset(req.preset)
    parts = ENGINE_SPEC.components(preset)
    roles = ("dalle", "vqgan", "clip") if req.rerank else ("dalle", "vqgan")
    specs = tuple(parts[r] for r in roles if r in parts)
    with registry.use(*specs) as models:
        info = {"preset": preset.name, "models": registry.describe(*specs)}
        _CODES[preset.name] = int(models[0].config.image_len)     # the estimate's codes per candidate
        clip = models[2] if req.rerank else None
        yield from sample(req, models[0], models[1], clip, registry.device, should_stop, info)


def sample(req: DalleRequest, model, vqgan, clip=None, device="cpu", should_stop: StopCheck = never_stop,
           info: dict | None = None) -> Iterator[Step | Final]:
    """Sample `req.candidates` images over given models (tests and the benchmark drive it directly)."""
    t0 = time.perf_counter()
    req, text, notices = validate(req, model)
    if req.init_image is not None and not hasattr(vqgan, "encode"):
        raise ValueError("This preset cannot complete images: its VQGAN has no encoder to turn a picture into codes "
                         "(min-dalle publishes only the decoder), so remove the image to complete.")
    cfg = model.config
    B, N, g = int(req.candidates), cfg.image_len, cfg.grid
    if req.rerank and clip is None:
        raise ValueError("Reranking needs a CLIP model; turn reranking off or use a preset with CLIP.")
    device = torch.device(device)
    # the model's own choice of generator device (min-dalle's BART draws on the CPU), else the run's device
    draw_on = getattr(model, "generator_device", device)
    gen = torch.Generator(device=draw_on).manual_seed(int(req.seed))
    strength = float(req.subseed_strength)   # vary seed: each draw mixes in the subseed's (models/dalle.draw_codes)
    vary = {"subgenerator": seeded(int(req.subseed), draw_on), "subseed_strength": strength} if strength > 0 else {}
    text = text.to(device).expand(B, -1)

    # 1. image completion: the kept rows of the uploaded image's codes start every candidate
    prefix = None
    if req.init_image is not None:
        size = g * vqgan.factor
        image, more = completion_image(req.init_image, size)
        notices += more
        x = media.to_tensor(image, device=device)  # [-1, 1], scaled on the device as before
        with torch.no_grad():
            codes = vqgan.encode(x)[2].view(1, N)
        prefix = codes[:, :int(req.keep_rows) * g].expand(B, -1)
    start = 0 if prefix is None else prefix.shape[1]
    total = N - start
    for note in notices:
        yield Step(ENGINE, "sample", 0, total, notice=note)
    codes = prefix if prefix is not None else text.new_zeros((B, 0))
    if prefix is not None:  # the kept rows before anything is written
        yield Step(ENGINE, "sample", 0, total, previews={"partial": tile(_pils(decode_partial(vqgan, codes, g)))})

    # 2. the codes, one per step for every candidate at once; a preview after each row
    stopped = False
    for codes in model.sample(text, temperature=float(req.temperature), top_k=int(req.top_k), top_p=float(req.top_p),
                              guidance=float(req.guidance), generator=gen, prefix_codes=prefix, **vary):
        done = codes.shape[1] - start
        previews = {}
        if codes.shape[1] % g == 0:
            previews["partial"] = tile(_pils(decode_partial(vqgan, codes, g)))
        elapsed = time.perf_counter() - t0
        yield Step(ENGINE, "sample", done, total, previews=previews,
                   metrics={"tokens_per_s": done * B / max(elapsed, 1e-9)}, elapsed_s=elapsed)
        if done < total and should_stop():
            stopped = True
            break

    # 3. pixels, then CLIP's ranking (only of finished candidates)
    x = decode_partial(vqgan, codes, g)
    order, scores = list(range(B)), None
    if req.rerank and not stopped:
        with torch.no_grad():
            sim = clip.similarity(x.to(next(clip.parameters()).dtype), [req.prompt])[:, 0].float().cpu()
        order = sorted(range(B), key=lambda i: -float(sim[i]))
        scores = [round(float(sim[i]), 4) for i in order]
        yield Step(ENGINE, "rerank", 1, 1, stage_index=1, stage_count=2, elapsed_s=time.perf_counter() - t0)
    images = _pils(x)
    meta = {
        "engine": ENGINE, "app_version": __version__, **(info or {}),
        "settings": ENGINE_SPEC.settings(req), "tokens_done": int(codes.shape[1] - start), "tokens_total": total,
        "stopped": stopped, "order": order, "clip_scores": scores,
        "seconds": round(time.perf_counter() - t0, 2), "device": str(device),
    }
    yield Final(ENGINE, [images[i] for i in order], meta, stopped=stopped)


# ---------------------------------------------------------------------------
# The engine as the page, the command line and the evaluation see it
# ---------------------------------------------------------------------------


def _frame(req, previews) -> Image.Image | None:
    return previews.get("partial")


def _image_meta(final: Final, k: int) -> dict:
    """Pictures come best first: each carries its rank and CLIP score."""
    scores = final.meta.get("clip_scores") or [None] * len(final.images)
    return {"rank": k + 1, "clip_score": scores[k]}


def _complete_from(path: str) -> Image.Image:
    """The command line's image to complete, checked by media.load_image, handed over in its own mode."""
    media.load_image(path, name="image to complete")  # format, bytes and pixel limits, before decoding
    image = Image.open(path)
    image.load()
    return image  # the engine converts the mode and says so


ENGINE_SPEC = Engine(
    name=ENGINE, label="DALL-E", request=DalleRequest, run=run,
    needs=(("dalle", "vqgan"),), optional=("clip",),   # CLIP only to rerank
    limits={"candidates": (1, MAX_CANDIDATES), "temperature": (0, MAX_TEMPERATURE), "top_p": (0, 1),
            "guidance": (0, MAX_GUIDANCE), "subseed_strength": (0, 1)},
    image_fields=("init_image",),
    parse={"init_image": _complete_from},
    frame=_frame, closing_frames=lambda req, final: [tile(final.images)] if final.images else [],
    image_meta=_image_meta,
    check=lambda req, models, device: check(req, models["dalle"].config if "dalle" in models else None),
    work=lambda req: codes_per_candidate(req.preset) * req.candidates * (2 if req.guidance != 1 else 1),  # both passes
    cost=(0.11, 0.00072),     # measured: shapes preset, one CPU thread (pipelines/estimate.py)
    memory_work=lambda req: codes_per_candidate(req.preset) * req.candidates * (2 if req.guidance != 1 else 1),
    memory_cost=25 * 2**10,   # measured: peak resident growth per code held (KV cache), shapes preset, CPU
    fps=4)
