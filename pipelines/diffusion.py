"""Diffusion: denoise from pure noise (or a noised init image) to a picture, step by step.

The engine runs any denoiser from `pipelines/models/diffusion.py` through a diffusers
scheduler (DDPM, DDIM or DPM-Solver++), with the loop of `pipelines/diffusion_sampling.py`:

    z_T ~ N(0, I)                       or  z_t = add_noise(encode(init), eps, t_start)   (image to image)
    for t in timesteps:                 out = u + g (c - u)   classifier-free guidance, one batch
                                        z_t -> scheduler.step -> z_(t-1);  x0_pred for the preview
    image = decode(z_0)                 VQGAN quantize + decoder for latent models; pixels as they are

For the built-in shapes model z is the VQGAN's normalised 8x8x16 latent and the text
comes from the built-in CLIP; the negative prompt takes the empty caption's place in
guidance. Unconditional diffusers checkpoints (`google/ddpm-cifar10-32`) run in pixel
space and ignore prompt, negative prompt and guidance.

Every step yields a `Step`; every `preview_every` steps (-1: as often as keeps previews under
10 % of the run) it carries `x_t` (the sample after the step, decoded as it is: noise
clearing) and `x0_pred` (the model's clean estimate, decoded as the result is), each a row
of the batch. The last step, or the one a Stop ends on, always previews, and its `x0_pred`
is the result. Stop keeps the last clean estimate. `trajectory_strip` and `side_by_side` turn
the previews into the strip and the video frames that the tab and the command line show.

`subseed` and `subseed_strength` vary the starting noise (pipelines/seeds.py; 0 = off).

Command line: `python -m pipelines diffusion "a red circle above a blue square" --video`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from pipelines import __version__, media
from pipelines.diffusion_sampling import SAMPLERS, denoise, img2img_start, make_scheduler, noised, watched
from pipelines.engine import Engine
from pipelines.events import AUTO, PREVIEW_BUDGET, Final, PreviewCadence, Step, StopCheck, never_stop
from pipelines.presets import load_preset
from pipelines.seeds import varied_randn
from pipelines.validation import MAX_BATCH, MAX_GUIDANCE, MAX_SEED, MAX_SIDE, MAX_STEPS, squarish, variation
from pipelines.validation import number as _number

log = logging.getLogger(__name__)

ENGINE = "diffusion"
PRECISIONS = ("auto", "float32", "float16")


@dataclass(frozen=True)
class DiffusionRequest:
    prompt: str = ""
    negative_prompt: str = ""
    preset: str = "shapes"
    sampler: str = "DPM-Solver++"         # a SAMPLERS key
    steps: int = 25
    guidance: float = 3.0                 # 1: plain conditional; 0: the negative prompt alone
    eta: float = 0.0                      # DDIM only: 0 deterministic, 1 as noisy as DDPM
    seed: int = 0
    batch: int = 1
    init_image: Image.Image | None = None
    strength: float = 0.75                # image to image: share of the schedule run from the noised init
    preview_every: int = 5                # 0 = no previews (and no video frames); -1 (AUTO): under 10 % of the run (SD: 5 %)
    width: int = 0                        # 0: the model's own size; Stable Diffusion takes multiples of 8
    height: int = 0
    precision: str = "auto"               # "auto": float16 on a GPU for models that allow it, else float32
    subseed: int = 0                      # vary seed (pipelines/seeds.py): the starting noise is mixed with
    subseed_strength: float = 0.0         # the subseed's by this much; 0 = off, 1 = the subseed's noise

    def replace(self, **kw) -> "DiffusionRequest":
        return dataclasses.replace(self, **kw)


def validate(req: DiffusionRequest) -> DiffusionRequest:
    """Check every field before any model loads; numbers come back as int/float."""
    if req.sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {req.sampler!r}: choose one of {', '.join(SAMPLERS)}.")
    if not isinstance(req.prompt, str) or not isinstance(req.negative_prompt, str):
        raise ValueError("Prompt and negative prompt must be text.")
    squarish(req.init_image, "init image")
    if req.precision not in PRECISIONS:
        raise ValueError(f"Precision must be one of {', '.join(PRECISIONS)} (got {req.precision!r}).")
    for name, side in (("Width", req.width), ("Height", req.height)):
        try:
            v = _number(name, side or 0, 0, MAX_SIDE, integer=True)
        except ValueError:
            v = -1
        if v != 0 and not 64 <= v <= MAX_SIDE:
            raise ValueError(f"{name} must be 0 (the model's size) or a whole number from 64 to {MAX_SIDE} "
                             f"(got {side!r}).")
    subseed, subseed_strength = variation(req.subseed, req.subseed_strength)
    return req.replace(
        subseed=subseed, subseed_strength=subseed_strength,
        width=int(req.width or 0), height=int(req.height or 0),
        steps=_number("Steps", req.steps, 1, MAX_STEPS, integer=True),
        guidance=_number("Guidance scale", req.guidance, 0, MAX_GUIDANCE),
        eta=_number("Eta", req.eta, 0, 1),
        seed=_number("Seed", req.seed, 0, MAX_SEED, integer=True),
        batch=_number("Batch size", req.batch, 1, MAX_BATCH, integer=True),
        strength=_number("Strength", req.strength, 0, 1),
        preview_every=_number("Preview every", req.preview_every, AUTO, MAX_STEPS, integer=True))


def check(req: DiffusionRequest, models: dict, device) -> None:
    """What `run` refuses, without loading a model: `validate`, the precision on this device, and the
    size where the preset's model is loaded already."""
    req = validate(req)
    _compute_dtype(models.get("diffusion"), device, req.precision)
    if "diffusion" in models:
        _shape(models["diffusion"], req)


def run(req: DiffusionRequest, registry, should_stop: StopCheck = never_stop) -> Iterator[Step | Final]:
    """The engine: validate, take the preset's models from the registry, then `sample`."""
    req = validate(req)
    preset = load_preset(req.preset)
    specs = ENGINE_SPEC.components(preset)
    with registry.use(*specs.values()) as models:
        parts = dict(zip(specs, models))
        info = {"preset": preset.name, "models": registry.describe(*specs.values())}   # by kind
        yield from sample(req, parts["diffusion"], parts.get("vqgan"), parts.get("text_encoder", parts.get("clip")),
                          registry.device, should_stop, info, taesd=parts.get("taesd"))


# ---------------------------------------------------------------------------
# The sampling loop over given models (the benchmark drives it with its own)
# ---------------------------------------------------------------------------


def _encode(model, vqgan, x: torch.Tensor) -> torch.Tensor:
    """Image in [-1, 1] -> the space the model denoises in."""
    if _self_contained(model):
        return model.encode(x)
    return model.normalize(vqgan.encode_latent(x)) if model.latent else x


def _self_contained(model) -> bool:
    """Models that bring their own autoencoder and text encoder (Stable Diffusion)."""
    return getattr(model, "self_contained", False)


def _decode(model, vqgan, z: torch.Tensor) -> torch.Tensor:
    """The model's space -> image in [-1, 1] (clamped)."""
    if _self_contained(model):
        return model.decode(z)
    if model.latent:
        z_q = vqgan.quantize(model.denormalize(z))[0]
        return vqgan.decode(z_q).clamp(-1, 1)
    return z.clamp(-1, 1)


def _previews(model, vqgan, x_t: torch.Tensor, x0: torch.Tensor, last: bool, final: bool, taesd=None):
    """The two previews as pictures: x0 through the same path as the result (quantized, then decoded),
    x_t decoded as it is (unquantized), so its noise is seen clearing; one decoder pass for both.
    The `last` preview decodes x0 exactly as the result is decoded (same call, same batch), and at the
    `final` step there is no noise left: both are the result. Stable Diffusion previews x_t through its
    fitted latent-to-RGB map and x0 through TAESD when the preset has it (else the map too): a full VAE
    decode per preview would cost more than a step."""
    if final:
        out = _decode(model, vqgan, x_t)
        return out, out
    if _self_contained(model):
        clean = _decode(model, vqgan, x0) if last else taesd(x0) if taesd is not None else model.preview_rgb(x0)
        return model.preview_rgb(x_t), clean
    if not model.latent:
        return x_t.clamp(-1, 1), x0.clamp(-1, 1)
    if last:
        return vqgan.decode(model.denormalize(x_t)).clamp(-1, 1), _decode(model, vqgan, x0)
    z_q = vqgan.quantize(model.denormalize(x0))[0]
    both = vqgan.decode(torch.cat([model.denormalize(x_t), z_q])).clamp(-1, 1)
    return both[:len(x_t)], both[len(x_t):]


def _shape(model, req: DiffusionRequest) -> tuple[int, int, int]:
    """The sample's shape for the request's size: any multiple of 8 for Stable Diffusion, else the model's own."""
    if hasattr(model, "shape_for"):
        return model.shape_for(req.width, req.height)
    shape = model.sample_shape
    native = _native_side(model)
    if (req.width and req.width != native) or (req.height and req.height != native):
        raise ValueError(f"This preset's model draws {native}x{native} pictures only "
                         f"(asked for {req.width or native}x{req.height or native}); leave width and height at 0.")
    return shape


def _native_side(model) -> int:
    cfg = getattr(model, "config", None)
    return int(cfg.image_size) if cfg is not None and hasattr(cfg, "image_size") else model.sample_shape[-1]


def _compute_dtype(model, device, precision: str) -> torch.dtype:
    """float16 autocast on a GPU for models that allow it ("auto"), or when asked; never on a CPU."""
    device = torch.device(device)
    if precision == "float16" and device.type != "cuda":
        raise ValueError(f"float16 runs on a GPU only, and this run is on the {device.type.upper()}: "
                         "choose precision auto or float32.")
    if precision == "float16" or (precision == "auto" and device.type == "cuda" and getattr(model, "half_ok", False)):
        return torch.float16
    return torch.float32


def sample(req: DiffusionRequest, model, vqgan, clip, device, should_stop: StopCheck = never_stop,
           info: dict | None = None, taesd=None) -> Iterator[Step | Final]:
    req = validate(req)
    compute = _compute_dtype(model, device, req.precision)
    if compute == torch.float32:
        yield from _sample(req, model, vqgan, clip, device, should_stop, info, taesd)
        return
    from pipelines.registry.runtime import autocast

    steps = _sample(req, model, vqgan, clip, device, should_stop, info, taesd)
    while True:                      # each step under autocast, none of the consumer's work between steps
        with autocast(torch.device(device), compute):
            try:
                ev = next(steps)
            except StopIteration:
                return
        yield ev


def _sample(req: DiffusionRequest, model, vqgan, clip, device, should_stop: StopCheck, info: dict | None,
            taesd) -> Iterator[Step | Final]:
    t0 = time.perf_counter()
    own = _self_contained(model)
    if model.conditional and not own and (vqgan is None or clip is None):
        raise ValueError("This diffusion model needs the preset's VQGAN and CLIP components.")
    gen = torch.Generator().manual_seed(req.seed)
    B = req.batch
    shape = _shape(model, req)
    notices = []
    if not model.conditional and (req.prompt.strip() or req.negative_prompt.strip()):
        notices.append("This model is unconditional: the prompts are ignored.")
    if own and any(model.too_long(p) for p in (req.prompt, req.negative_prompt)):
        notices.append(f"The prompt is longer than the text encoder's {model.tokenizer.model_max_length} "
                       "tokens: the end is cut off.")
    dtype = next(model.parameters()).dtype

    # 1. the schedule, and where image to image enters it
    scheduler = make_scheduler(req.sampler, model.scheduler_config)
    scheduler.set_timesteps(req.steps, device=device)
    start = img2img_start(scheduler, req.steps, req.strength) if req.init_image is not None else 0
    total = req.steps - start

    # 2. the starting sample: noise, or the init image noised to the first timestep used
    noise = varied_randn((B, *shape), gen, req.subseed, req.subseed_strength).to(device, dtype)
    if req.init_image is not None:
        if own:
            from PIL import ImageOps

            size = (shape[-1] * model.factor, shape[-2] * model.factor)
            x_init = media.to_tensor(ImageOps.fit(req.init_image.convert("RGB"), size, Image.Resampling.LANCZOS))
        else:
            side = shape[-1] * (vqgan.factor if model.latent else 1)
            x_init = media.to_tensor(media.square(req.init_image.convert("RGB"), side))
        with torch.no_grad():
            z0 = _encode(model, vqgan, x_init.to(device, dtype)).repeat(B, 1, 1, 1)
        x = noised(scheduler, z0, noise, start)
    else:
        x = noise * scheduler.init_noise_sigma

    # 3. text conditioning: the prompt, and the negative prompt in the empty caption's place
    text_emb = null_emb = None
    if own:
        with torch.no_grad():
            text_emb = model.encode_text([req.prompt] * B).to(dtype)
            null_emb = model.encode_text([req.negative_prompt] * B).to(dtype)
    elif model.conditional:
        from pipelines.models.diffusion import text_states

        with torch.no_grad():
            text_emb = text_states(model, clip, [req.prompt] * B).to(dtype)
            null_emb = text_states(model, clip, [req.negative_prompt] * B).to(dtype)

    for note in notices:
        yield Step(ENGINE, "denoise", 0, total, notice=note)
    # 4. the loop; a preview shows the sample after the step and the clean estimate, and the last one
    #    (the end, or the step a Stop ends on) shows what the result will be
    x0_pred, done = x, 0
    cadence = PreviewCadence(req.preview_every, total, budget=getattr(model, "preview_budget", PREVIEW_BUDGET))

    def step(s, previews: dict) -> Step:
        return Step(ENGINE, "denoise", s.i + 1, total, t=float(s.t), previews=previews, metrics=cadence.metrics,
                    elapsed_s=time.perf_counter() - t0)

    kept = {}                                   # the result, when the last preview decoded it

    def preview(s, last: bool = False) -> dict:
        t_preview = time.perf_counter()
        with torch.no_grad():
            shown_t, shown_0 = _previews(model, vqgan, s.x_next, s.x0_pred, last=last, final=s.i + 1 == total,
                                         taesd=taesd)
        if last or s.i + 1 == total:
            kept["images"] = shown_0
        cadence.took(s.i, time.perf_counter() - t_preview)
        return {"x_t": media.row(shown_t), "x0_pred": media.row(shown_0)}

    steps = denoise(model, scheduler, x, text_emb, null_emb, req.guidance, gen, req.eta, start)
    for s, ev in watched(steps, total, cadence, step, preview, should_stop):
        x, x0_pred, done = s.x_next, s.x0_pred, s.i + 1
        yield ev

    # 5. the pictures: the finished sample, or on Stop the last clean estimate
    stopped = done < total
    images = kept.get("images")
    if images is None:
        with torch.no_grad():
            images = _decode(model, vqgan, x0_pred if stopped else x)
    meta = {
        "engine": ENGINE, "app_version": __version__, **(info or {}),
        "settings": ENGINE_SPEC.settings(req), "steps_done": done, "steps_total": total, "stopped": stopped,
        "conditional": bool(model.conditional), "seconds": round(time.perf_counter() - t0, 3), "device": str(device),
    }
    yield Final(ENGINE, [media.to_pil(img) for img in images.float().cpu()], meta, stopped=stopped)


# ---------------------------------------------------------------------------
# Strip and video from the previews
# ---------------------------------------------------------------------------


def side_by_side(x_t: Image.Image, x0_pred: Image.Image, gap: int = 2) -> Image.Image:
    """x_t on the left, x0_pred on the right: one video frame."""
    out = Image.new("RGB", (x_t.width + gap + x0_pred.width, max(x_t.height, x0_pred.height)), (255, 255, 255))
    out.paste(x_t, (0, 0))
    out.paste(x0_pred, (x_t.width + gap, 0))
    return out


def trajectory_strip(frames: list[tuple[Image.Image, Image.Image]], max_columns: int = 12,
                     gap: int = 2) -> Image.Image | None:
    """The run as a strip: x_t on the top row, x0_pred below, at up to max_columns evenly spaced
    previews (first and last included). frames are (x_t, x0_pred) pairs in step order."""
    if not frames:
        return None
    keep = sorted(set(np.linspace(0, len(frames) - 1, min(max_columns, len(frames))).round().astype(int)))
    w, h = frames[0][0].size
    strip = Image.new("RGB", (len(keep) * (w + gap) - gap, 2 * h + gap), (255, 255, 255))
    for col, k in enumerate(keep):
        strip.paste(frames[k][0], (col * (w + gap), 0))
        strip.paste(frames[k][1], (col * (w + gap), h + gap))
    return strip


# ---------------------------------------------------------------------------
# The engine as the page, the command line and the evaluation see it
# ---------------------------------------------------------------------------


def _frame(req, previews) -> Image.Image | None:
    return side_by_side(previews["x_t"], previews["x0_pred"]) if "x_t" in previews else None


def _area(req) -> float:
    """A chosen size's area against 512 x 512 (Stable Diffusion's own); 1 at the model's own size (0)."""
    try:
        return (req.width * req.height) / (512 * 512) if req.width and req.height else 1.0
    except TypeError:
        return 1.0


def _strip(req, previews, final) -> Image.Image | None:
    return trajectory_strip([(p["x_t"], p["x0_pred"]) for p in previews if "x_t" in p])


ENGINE_SPEC = Engine(
    name=ENGINE, label="Diffusion", request=DiffusionRequest, run=run,
    # the built-in latent model needs a VQGAN and the CLIP it reads token states from: the preset's text_encoder
    # where it has one (the built-in preset: the CLIP before the one that sees shapes), else its clip
    needs=(("diffusion",),), optional=("vqgan", "text_encoder", "clip", "taesd"), replaces={"text_encoder": "clip"},
    limits={"steps": (1, MAX_STEPS), "guidance": (0, MAX_GUIDANCE), "eta": (0, 1), "batch": (1, MAX_BATCH),
            "strength": (0, 1), "preview_every": (AUTO, MAX_STEPS), "width": (0, MAX_SIDE), "height": (0, MAX_SIDE),
            "subseed_strength": (0, 1)},
    choices={"sampler": tuple(SAMPLERS), "precision": PRECISIONS},
    image_fields=("init_image",),
    frame=_frame, strip=_strip, check=check,
    # a guided step of the whole batch; image to image runs the last `strength` of the steps
    work=lambda req: req.steps * req.batch * (req.strength if req.init_image is not None else 1) * _area(req),
    cost=(0.0, 0.022),        # measured: shapes preset, one CPU thread (pipelines/estimate.py)
    memory_work=lambda req: req.batch * _area(req) * (2 if req.guidance != 1 else 1),   # a guided batch at once
    memory_cost=1.5 * 2**20,  # measured: peak resident growth, shapes preset, CPU (pipelines/estimate.py)
    fps=10)


if __name__ == "__main__":   # `python -m pipelines.<engine> ...` is `python -m pipelines <engine> ...`
    import sys

    from pipelines.__main__ import main

    sys.exit(main([ENGINE, *sys.argv[1:]]))
