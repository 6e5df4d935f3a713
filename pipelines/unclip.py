"""unCLIP (DALL-E 2): text -> CLIP image embedding (the prior) -> picture (the decoder).

    text to image    e_txt = CLIP(prompt);  the prior samples K candidate image embeddings and
                     keeps the one closest to e_txt (as DALLE2-pytorch does); the decoder paints it
    variations       e_img = CLIP(upload);  the decoder paints it N times from different noise; below
                     strength 1 it starts from the upload itself noised to that share of the schedule
                     (image to image, as in the diffusion tab), so the layout survives as well
    interpolation    two ends (prompts through the prior, or images through CLIP), spherically
                     interpolated, e(w) = slerp(e_a, e_b, w); every frame is painted from the same
                     noise so the only change between frames is the embedding

Both stages are denoisers driven by the diffusion engine's loop
(`pipelines/diffusion_sampling.denoise`) and any of its samplers, with classifier-free
guidance each: the prior against the empty caption, the decoder against the zero embedding.
The prior stage's previews are its current clean estimate shown by its nearest captions
from a pool of the shapes grammar; the decoder's are x_t and x0_pred, as in the diffusion tab.
Stop ends the run at the next step: in the decoder it keeps the last clean estimate, in the
prior nothing is painted yet.

The built-in shapes pair comes from `pipelines/models/unclip.py`; Karlo's diffusers
checkpoint runs through the adapter in `pipelines/models/karlo.py` with the same interface
(`UnCLIPParts`, in `pipelines/models/unclip.py`).

`subseed` and `subseed_strength` vary the prior's and the decoder's starting noise (pipelines/seeds.py).

Command line: `python -m pipelines unclip "a red circle above a blue square"`,
`--mode variations --image picture.png --batch 4`,
`--mode interpolate "a red circle" --prompt-b "a blue star" --frames 16 --video`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import __version__, media
from pipelines.diffusion import side_by_side, trajectory_strip
from pipelines.diffusion_sampling import ALPHA_SAMPLERS as SAMPLERS
from pipelines.diffusion_sampling import denoise, img2img_start, make_scheduler, noised, watched
from pipelines.engine import Engine
from pipelines.events import AUTO, Final, Pause, PreviewCadence, Step, StopCheck, never_stop
from pipelines.captions import nearest_captions
from pipelines.models import unclip as unclip_models
from pipelines.presets import load_preset
from pipelines.seeds import varied_randn
from pipelines.validation import MAX_BATCH, MAX_GUIDANCE, MAX_SEED, MAX_STEPS, squarish, variation
from pipelines.validation import number as _number

log = logging.getLogger(__name__)

ENGINE = "unclip"
MODES = ("text", "variations", "interpolate")
MAX_CANDIDATES = 16
MAX_FRAMES = 64           # interpolation frames are painted in one batch
PREVIEW_COLUMNS = 8       # previews of a bigger batch show this many, evenly spaced


@dataclass(frozen=True)
class UnCLIPRequest:
    mode: str = "text"                    # a MODES entry
    prompt: str = ""                      # text: what to draw; interpolate: the first end (unless image)
    preset: str = "shapes"
    prior_sampler: str = "DDIM"
    prior_steps: int = 25
    prior_guidance: float = 2.0
    candidates: int = 2                   # prior samples per picture; the one closest to the text is kept
    sampler: str = "DPM-Solver++"         # the decoder's
    steps: int = 25
    guidance: float = 3.0
    seed: int = 0
    batch: int = 1                        # pictures (text), variations (variations); 1 for interpolate
    image: Image.Image | None = None      # variations: the source; interpolate: the first end
    prompt_b: str = ""                    # interpolate: the second end (unless image_b)
    image_b: Image.Image | None = None
    frames: int = 8                       # interpolate: pictures from end a to end b, both included
    strength: float = 1.0                 # variations: share of the decoder's schedule run from the noised
                                          # source; 1 = from pure noise (only the embedding is kept)
    preview_every: int = 5                # 0 = no previews; -1 (AUTO): under 10 % of the run
    subseed: int = 0                      # vary seed (pipelines/seeds.py): the decoder's and the prior's starting
    subseed_strength: float = 0.0         # noise mixed with the subseed's by this much; 0 = off

    def replace(self, **kw) -> "UnCLIPRequest":
        return dataclasses.replace(self, **kw)


def _end(req: UnCLIPRequest, which: str) -> tuple[str, str | Image.Image]:
    """An interpolation end as ('image', picture) or ('text', prompt)."""
    image, prompt = (req.image, req.prompt) if which == "a" else (req.image_b, req.prompt_b)
    return ("image", image) if image is not None else ("text", prompt.strip())


def validate(req: UnCLIPRequest) -> UnCLIPRequest:
    """Check every field before any model loads; numbers come back as int/float."""
    if req.mode not in MODES:
        raise ValueError(f"Unknown mode {req.mode!r}: choose one of {', '.join(MODES)}.")
    for name, value in (("Prior sampler", req.prior_sampler), ("Decoder sampler", req.sampler)):
        if value not in SAMPLERS:
            raise ValueError(f"Unknown {name.lower()} {value!r}: choose one of {', '.join(SAMPLERS)}.")
    if not isinstance(req.prompt, str) or not isinstance(req.prompt_b, str):
        raise ValueError("Prompts must be text.")
    squarish(req.image, "image")
    squarish(req.image_b, "second image")
    if req.mode == "variations" and req.image is None:
        raise ValueError("Variations need a picture: upload one.")
    if req.mode == "interpolate":
        a, b = _end(req, "a"), _end(req, "b")
        for (kind, value), which in ((a, "first"), (b, "second")):
            if kind == "text" and not value:
                raise ValueError(f"The {which} end of the interpolation is empty: give a prompt or an image.")
        same = a[0] == b[0] and (a[1] == b[1] if a[0] == "text" else media.image_digest(a[1]) == media.image_digest(b[1]))
        if same:
            raise ValueError("The two ends of the interpolation are the same: there is nothing to blend. "
                             "Give two different prompts or images.")
    subseed, subseed_strength = variation(req.subseed, req.subseed_strength)
    return req.replace(
        subseed=subseed, subseed_strength=subseed_strength,
        prior_steps=_number("Prior steps", req.prior_steps, 1, MAX_STEPS, integer=True),
        prior_guidance=_number("Prior guidance", req.prior_guidance, 0, MAX_GUIDANCE),
        candidates=_number("Prior samples", req.candidates, 1, MAX_CANDIDATES, integer=True),
        steps=_number("Decoder steps", req.steps, 1, MAX_STEPS, integer=True),
        guidance=_number("Decoder guidance", req.guidance, 0, MAX_GUIDANCE),
        seed=_number("Seed", req.seed, 0, MAX_SEED, integer=True),
        batch=_number("Batch size", req.batch, 1, MAX_BATCH, integer=True),
        frames=_number("Frames", req.frames, 2, MAX_FRAMES, integer=True),
        strength=_number("Variation strength", req.strength, 0, 1),
        preview_every=_number("Preview every", req.preview_every, AUTO, MAX_STEPS, integer=True))


# ---------------------------------------------------------------------------
# The models behind one interface (UnCLIPParts in pipelines/models/unclip.py, Karlo's adapter in karlo.py)
# ---------------------------------------------------------------------------


def parts_from(models: dict):
    if "karlo" in models:
        return models["karlo"]          # the loader returns the adapter itself
    # every embedding from the preset's CLIP; the decoder's token states from the preset's text encoder where it
    # has one (the CLIP the decoder learnt to read, as the diffusion model does), else from the same CLIP
    return unclip_models.UnCLIPParts(models["unclip_prior"], models["unclip_decoder"], models["vqgan"], models["clip"],
                                     text_clip=models.get("text_encoder"))


def run(req: UnCLIPRequest, registry, should_stop: StopCheck = never_stop, resume: "BlendState | None" = None,
        max_steps: int | None = None) -> Iterator[Step | Final | Pause]:
    """The engine: validate, take the preset's models from the registry, then `sample` (which see for
    `resume` and `max_steps`: a long interpolation in bounded pieces)."""
    req = validate(req)
    preset = load_preset(req.preset)
    specs = ENGINE_SPEC.components(preset)
    with registry.use(*specs.values()) as models:
        info = {"preset": preset.name, "models": registry.describe(**specs)}   # by role: clip and text_encoder may both be CLIPs
        yield from sample(req, parts_from(dict(zip(specs, models))), registry.device, should_stop, info, resume,
                          max_steps)


# ---------------------------------------------------------------------------
# Interpolation
# ---------------------------------------------------------------------------


def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the directions of a and b (D,) at weights w (F,) -> (F, D);
    the norm goes linearly from |a| to |b| (1 throughout for unit vectors)."""
    na, nb = a.norm(), b.norm()
    ua, ub = a / na, b / nb
    omega = torch.arccos((ua * ub).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    w = w[:, None].to(a.dtype)
    direction = (torch.sin((1 - w) * omega) * ua + torch.sin(w * omega) * ub) / torch.sin(omega)
    return direction * ((1 - w) * na + w * nb)


# ---------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------


def _show(x: torch.Tensor) -> Image.Image:
    """A preview row of at most PREVIEW_COLUMNS pictures."""
    keep = np.unique(np.linspace(0, len(x) - 1, min(PREVIEW_COLUMNS, len(x))).round().astype(int))
    return media.row(x[torch.from_numpy(keep)])


class _Stopped(Exception):
    pass


def _prior_stage(req, parts, prompts: list[str], gen, stage_count: int, t0: float, should_stop, out: dict):
    """Sample req.candidates embeddings per prompt; keep the one closest to its text. Yields Steps;
    leaves the chosen (len(prompts), D) embeddings and their scores in out."""
    K, N = req.candidates, len(prompts)
    device = parts.device
    with torch.no_grad():
        cond = parts.prompt_cond([p for p in prompts for _ in range(K)])              # (N K, ...)
        null = parts.prompt_cond([""] * (N * K))
    dtype = next(parts.prior.parameters()).dtype
    scheduler = make_scheduler(req.prior_sampler, parts.prior.scheduler_config)
    scheduler.set_timesteps(req.prior_steps, device=device)
    x = varied_randn((N * K, *parts.prior.sample_shape), gen, (req.subseed + 1) % 2**63, req.subseed_strength)
    x = x.to(device, dtype) * scheduler.init_noise_sigma
    done, x0 = 0, x
    cadence = PreviewCadence(req.preview_every, req.prior_steps)
    for s in denoise(parts.prior, scheduler, x, cond.to(dtype), null.to(dtype), req.prior_guidance, gen):
        x, x0, done = s.x_next, s.x0_pred, s.i + 1
        captions = ()
        if cadence.due(s.i):
            t_preview = time.perf_counter()
            near = nearest_captions(parts, parts.to_embedding(x0[:1]))[0]
            captions = tuple(f"{c} ({sim:.2f})" for c, sim in near)
            cadence.took(s.i, time.perf_counter() - t_preview)
        yield Step(ENGINE, "prior", done, req.prior_steps, 0, stage_count, t=float(s.t), captions=captions,
                   elapsed_s=time.perf_counter() - t0)
        if should_stop():
            raise _Stopped
    # keep, per prompt, the candidate closest to its text
    with torch.no_grad():
        emb = parts.to_embedding(x).view(N, K, -1)
        text = parts.text_embedding(prompts).to(emb.device)                              # (N, D)
        sims = (F.normalize(emb.float(), dim=-1) * text[:, None]).sum(-1)                  # (N, K)
        pick = sims.argmax(1)
    out["emb"] = emb[torch.arange(N), pick]
    out["prior"] = [{"candidate": int(p), "similarity": [round(float(v), 4) for v in row],
                     "nearest": [c for c, _ in near]}
                    for p, row, near in zip(pick, sims, nearest_captions(parts, out["emb"]))]


def _decoder_stage(req, parts, emb: torch.Tensor, prompts: list[str] | None, noise: torch.Tensor, gen,
                   stage_index: int, stage_count: int, t0: float, should_stop, out: dict,
                   source: torch.Tensor | None = None):
    """Paint pictures from unit-norm embeddings (B, D), starting from noise (B, ...), or, given a
    source sample (1, ...) and req.strength < 1, from the source noised to the last req.strength of
    the schedule. Yields Steps; leaves the pictures in [-1, 1] and how far it got in out."""
    dec = parts.decoder
    device, dtype = noise.device, noise.dtype
    scheduler = make_scheduler(req.sampler, dec.scheduler_config)
    scheduler.set_timesteps(req.steps, device=device)
    B = len(emb)
    with torch.no_grad():
        cond, null = parts.decoder_cond(emb.to(device), prompts), parts.decoder_null(B)
    start = img2img_start(scheduler, req.steps, req.strength) if source is not None else 0
    total = req.steps - start
    if start:
        x = noised(scheduler, source.to(device, dtype).expand(B, *source.shape[1:]), noise, start)
    else:
        x = noise * scheduler.init_noise_sigma
    x0, done = x, 0
    cadence = PreviewCadence(req.preview_every, total)

    def step(s, previews: dict) -> Step:
        return Step(ENGINE, "decoder", s.i + 1, total, stage_index, stage_count, t=float(s.t), previews=previews,
                    metrics=cadence.metrics, elapsed_s=time.perf_counter() - t0)

    def preview(s, last: bool = False) -> dict:
        """The sample after the step and the clean estimate; the last preview (the end, or what a Stop
        keeps) is the result itself, decoded as the result is."""
        t_preview = time.perf_counter()
        with torch.no_grad():
            if s.i + 1 == total or last:
                result = out["x"] = parts.decode(s.x_next if s.i + 1 == total else s.x0_pred)   # kept below
                shown_t, shown_0 = (result if s.i + 1 == total else parts.preview(s.x_next)), result
            else:
                both = parts.preview(torch.cat([s.x_next, s.x0_pred]))
                shown_t, shown_0 = both[:B], both[B:]
        cadence.took(s.i, time.perf_counter() - t_preview)
        return {"x_t": _show(shown_t), "x0_pred": _show(shown_0)}

    steps = denoise(dec, scheduler, x, cond.to(dtype), null.to(dtype), req.guidance, gen, start=start)
    for s, ev in watched(steps, total, cadence, step, preview, should_stop):
        x, x0, done = s.x_next, s.x0_pred, s.i + 1
        yield ev
    out["done"], out["total"] = done, total
    if "x" not in out:                          # no last preview decoded it already
        with torch.no_grad():
            out["x"] = parts.decode(x0 if done < total else x)


# ---------------------------------------------------------------------------
# The run over given models
# ---------------------------------------------------------------------------


@dataclass
class BlendState:
    """Where a paused interpolation stands (CPU data: it pickles): its two end embeddings, the prior's
    report, the frames painted so far and the seconds spent."""
    ends: torch.Tensor
    prior: list | None
    frames: list
    seconds: float


def sample(req: UnCLIPRequest, parts, device, should_stop: StopCheck = never_stop, info: dict | None = None,
           resume: BlendState | None = None, max_steps: int | None = None) -> Iterator[Step | Final | Pause]:
    """The run over given models. An interpolation given `max_steps` (decoder steps x frames) paints
    as many frames as fit, then yields a `Pause` whose state `resume` continues from (`max_steps=0`:
    end where it stands); each frame comes from the same noise, so the pieces make the frames one
    run makes. Other modes run whole."""
    if req.mode == "interpolate" and (resume is not None or max_steps is not None):
        yield from _blend_in_pieces(req, parts, device, should_stop, info, resume, max_steps)
        return
    t0 = time.perf_counter()
    req = validate(req)
    # one generator per stage, so the decoder's noise is the same whether or not the prior ran first
    gen = torch.Generator().manual_seed(req.seed)
    prior_gen = torch.Generator().manual_seed((req.seed + 1) % 2**63)
    state: dict = {}
    dtype = next(parts.decoder.parameters()).dtype
    source = None
    meta = {"engine": ENGINE, "app_version": __version__, **(info or {}), "settings": ENGINE_SPEC.settings(req),
            "mode": req.mode, "device": str(device)}
    prior_used = False
    try:
        # 1. the embeddings to paint
        if req.mode == "text":
            prior_used = True
            yield from _prior_stage(req, parts, [req.prompt] * req.batch, prior_gen, 2, t0, should_stop, state)
            emb = state["emb"]
            meta["prior"] = state["prior"]
        elif req.mode == "variations":
            with torch.no_grad():
                emb = parts.image_embedding([req.image]).repeat(req.batch, 1)
                if req.strength < 1:
                    source = parts.encode([req.image]).to(dtype)
        else:
            prior_used = any(k == "text" for k, _ in (_end(req, "a"), _end(req, "b")))
            e = yield from _interpolation_ends(req, parts, prior_gen, t0, should_stop, state, meta)
            emb = slerp(e[0], e[1], torch.linspace(0, 1, req.frames))
        # 2. the decoder, from one noise per picture (one shared noise for all interpolation frames)
        n_noise = 1 if req.mode == "interpolate" else len(emb)
        noise = varied_randn((n_noise, *parts.decoder.sample_shape), gen, req.subseed, req.subseed_strength)
        noise = noise.to(device, dtype)
        noise = noise.expand(len(emb), *noise.shape[1:]).contiguous()
        prompts = [req.prompt] * len(emb) if req.mode == "text" else None
        yield from _decoder_stage(req, parts, emb, prompts, noise, gen, int(prior_used), 1 + int(prior_used), t0,
                                  should_stop, state, source)
    except _Stopped:
        meta.update(stopped_in="prior", steps_done=0, steps_total=req.steps, stopped=True,
                    seconds=round(time.perf_counter() - t0, 3))
        yield Final(ENGINE, [], meta, stopped=True)
        return
    stopped = state["done"] < state["total"]
    meta.update(steps_done=state["done"], steps_total=state["total"], stopped=stopped,
                seconds=round(time.perf_counter() - t0, 3))
    if stopped:
        meta["stopped_in"] = "decoder"
    if req.mode == "variations":  # how close CLIP finds each variation to its source
        with torch.no_grad():
            out_emb = F.normalize(parts.image_embedding([media.to_pil(x) for x in state["x"].float().cpu()]).float(), dim=-1)
        src = F.normalize(emb[0].float(), dim=-1).to(out_emb.device)
        meta["similarity_to_source"] = [round(float(v), 4) for v in out_emb @ src]
    yield Final(ENGINE, [media.to_pil(img) for img in state["x"].float().cpu()], meta, stopped=stopped)


def _interpolation_ends(req, parts, prior_gen, t0, should_stop, state: dict, meta: dict):
    """The two ends' embeddings (2, D): prompts through the prior (its Steps yielded, its report in
    meta), pictures through CLIP; refused when they are the same."""
    ends = [_end(req, "a"), _end(req, "b")]
    texts = [v for k, v in ends if k == "text"]
    by_text = {}
    if texts:
        yield from _prior_stage(req, parts, texts, prior_gen, 2, t0, should_stop, state)
        by_text = dict(zip(texts, state["emb"]))
        meta["prior"] = state["prior"]
    with torch.no_grad():
        e = [by_text[v] if k == "text" else parts.image_embedding([v])[0] for k, v in ends]
        if float(F.cosine_similarity(e[0], e[1], dim=0)) > 0.9999:
            raise ValueError("The two ends of the interpolation have the same embedding: there is "
                             "nothing to blend. Give two different prompts or images.")
    return torch.stack(e)


def _blend_in_pieces(req, parts, device, should_stop, info, resume, max_steps):
    """An interpolation as `sample` runs it, a piece of its frames at a time (see `sample`)."""
    t0 = time.perf_counter()
    req = validate(req)
    meta = {"engine": ENGINE, "app_version": __version__, **(info or {}), "settings": ENGINE_SPEC.settings(req),
            "mode": req.mode, "device": str(device)}
    if resume is None:          # the first piece finds the ends, as the whole run does
        prior_gen = torch.Generator().manual_seed((req.seed + 1) % 2**63)
        try:
            ends = yield from _interpolation_ends(req, parts, prior_gen, t0, should_stop, {}, meta)
        except _Stopped:
            meta.update(stopped_in="prior", steps_done=0, steps_total=req.steps, stopped=True,
                        seconds=round(time.perf_counter() - t0, 3))
            yield Final(ENGINE, [], meta, stopped=True)
            return
        resume = BlendState(ends.cpu(), meta.get("prior"), [], 0.0)
    gen = torch.Generator().manual_seed(req.seed)
    dtype = next(parts.decoder.parameters()).dtype
    noise = varied_randn((1, *parts.decoder.sample_shape), gen, req.subseed, req.subseed_strength).to(device, dtype)
    emb = slerp(resume.ends[0], resume.ends[1], torch.linspace(0, 1, req.frames)).to(device)
    frames, done = list(resume.frames), len(resume.frames)
    n = req.frames - done if max_steps is None else min(req.frames - done, max(1, max_steps // req.steps))
    state: dict = {}
    if max_steps != 0 and n > 0:           # this piece's frames, from the one noise every frame shares
        stages = 1 + int(resume.prior is not None)
        yield from _decoder_stage(req, parts, emb[done:done + n], None, noise.expand(n, *noise.shape[1:]).contiguous(),
                                  gen, stages - 1, stages, t0, should_stop, state)
        frames += [np.asarray(media.to_pil(x)) for x in state["x"].float().cpu()]
    seconds = resume.seconds + time.perf_counter() - t0
    stopped = state.get("done", 0) < state.get("total", 0) or max_steps == 0
    if len(frames) < req.frames and not stopped:
        yield Pause(ENGINE, BlendState(resume.ends, resume.prior, frames, seconds), len(frames), req.frames)
        return
    meta.update(frames_done=len(frames), stopped=stopped, steps_done=state.get("done", 0), steps_total=req.steps,
                seconds=round(seconds, 3), **({"prior": resume.prior} if resume.prior else {}))
    yield Final(ENGINE, [Image.fromarray(f) for f in frames], meta, stopped=stopped)


# ---------------------------------------------------------------------------
# The engine as the page, the command line and the evaluation see it
# ---------------------------------------------------------------------------


def _frame(req, previews) -> Image.Image | None:
    """The decoder's x_t | x0_pred; an interpolation's video is its frames instead."""
    return side_by_side(previews["x_t"], previews["x0_pred"]) if "x_t" in previews and req.mode != "interpolate" else None


def _strip(req, previews, final) -> Image.Image | None:
    if req.mode == "interpolate":
        return media.strip(final.images)
    return trajectory_strip([(p["x_t"], p["x0_pred"]) for p in previews if "x_t" in p])


def _work(req) -> float:
    """Prior samples (text ends only) plus decoder steps of every picture."""
    n = req.frames if req.mode == "interpolate" else req.batch
    prior = req.prior_steps * req.candidates * (req.batch if req.mode == "text" else 2 if req.mode == "interpolate" else 0)
    return prior + req.steps * n


def _memory_work(req) -> float:
    """Held at once, in prior samples: the prior's samples and the decoder's guided batch (a picture ~ 14)."""
    n = req.frames if req.mode == "interpolate" else req.batch
    prior = req.candidates * (req.batch if req.mode == "text" else 2 if req.mode == "interpolate" else 0)
    return prior + 14 * n


ENGINE_SPEC = Engine(
    name=ENGINE, label="unCLIP", request=UnCLIPRequest, run=run,
    # Karlo's pipeline folder, or the built-in prior, decoder, VQGAN and CLIP (plus the CLIP whose token states
    # the decoder reads, `text_encoder`, where the preset has one)
    needs=(("karlo",), ("unclip_prior", "unclip_decoder", "vqgan", "clip")), optional=("text_encoder",),
    limits={"prior_steps": (1, MAX_STEPS), "prior_guidance": (0, MAX_GUIDANCE), "candidates": (1, MAX_CANDIDATES),
            "steps": (1, MAX_STEPS), "guidance": (0, MAX_GUIDANCE), "batch": (1, MAX_BATCH),
            "frames": (2, MAX_FRAMES), "strength": (0, 1), "preview_every": (AUTO, MAX_STEPS),
            "subseed_strength": (0, 1)},
    choices={"mode": MODES, "prior_sampler": tuple(SAMPLERS), "sampler": tuple(SAMPLERS)},
    image_fields=("image", "image_b"),
    frame=_frame, strip=_strip,
    check=lambda req, models, device: validate(req) and None,
    closing_frames=lambda req, final: final.images if req.mode == "interpolate" else (),
    pausable=True,            # an interpolation, by frames (sample)
    work=_work,
    cost=(0.02, 0.0089),      # measured: shapes preset, one CPU thread (pipelines/estimate.py)
    memory_work=_memory_work,
    memory_cost=0.35 * 2**20,  # measured: peak resident growth per prior sample, shapes preset, CPU
    fps=8)


if __name__ == "__main__":   # `python -m pipelines.<engine> ...` is `python -m pipelines <engine> ...`
    import sys

    from pipelines.__main__ import main

    sys.exit(main([ENGINE, *sys.argv[1:]]))
