"""VQGAN+CLIP: optimise VQGAN latents until CLIP sees the prompts in the picture.

The method is Katherine Crowson's notebook as packaged by nerdyrodent/VQGAN-CLIP
(`generate.py`; our notes: shared/reference/vqgan_clip.md). One iteration:

    z      latent grid (1, C, h, w), the only thing optimised
    z_q    = vector_quantize(z)                      exact codebook rows, identity gradient
    x      = clamp_with_grad((decode(z_q) + 1) / 2)  image in [0, 1]
    cuts   = make_cutouts(x)                          (cutn, 3, s, s) at CLIP's input size
    loss   = sum_p  w_p * mean(spherical_dist(clip(cuts), e_p))  [+ init term]
    step the optimiser on z, then clamp z to the codebook's per-channel range

Where Atelier differs from the reference, on purpose:
  - the seed fixes the whole run: initial tokens, image-prompt cutouts, noise prompts
    and every augmentation draw from one per-request torch.Generator (the reference
    seeds only after z and the image prompts exist);
  - the init-image term pulls z towards the encoded init image (the reference compares
    z with zeros; its z_orig version is commented out), decaying as 1/(2i+1) as there;
  - story mode (`^` phases) replaces the text prompts only; image and noise prompts stay;
  - previews reuse the image of the iteration's forward pass (no extra decoder pass);
  - precision "auto" runs the decoder and CLIP passes under bfloat16 autocast on a CPU that
    multiplies bfloat16 in hardware, each pass only where its images together are large enough
    to gain (`compute_dtype`): at the 32 px shapes preset the decoder stays float32 and CLIP's
    pass over 16 cutouts runs in bfloat16; z, the quantiser, cutouts, losses, the optimiser and
    the final decode stay float32;
  - the Af/Pe augmentations resample once for the whole run of codes (`WarpAugment`);
  - the cutouts' noise is a setting (`cut_noise`, the reference's fixed 0.1 by default): the shapes preset
    uses 0.03, within the noise its CLIP was trained on (up to 0.05); at 0.1 and 0.3 its pictures came out
    right less often (docs/model-history.md);
  - a preset may name a second CLIP (`clip_2`, weighted `clip_2_weight` against the first): the loop
    answers to both at once (`CLIPEnsemble`), as Disco Diffusion users pair CLIPs; a picture that fools
    one CLIP seldom fools a second trained differently;
  - random starts (`starts`, off by default): several random latent grids optimised side by side for
    the first `starts_for` iterations, then only the one whose CLIP loss is lowest goes on. Where
    the picture settles early (a background colour, say) and a run stays in the valley it fell in,
    more starts find a better valley for a fraction of the cost of whole extra runs.

`subseed` and `subseed_strength` vary the random start (pipelines/seeds.py); an init image has none.

Command line: `python -m pipelines vqgan_clip "a red circle:1 | on a blue background:0.5"`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import __version__, media
from pipelines import prompts as P
from pipelines.engine import Engine
from pipelines.events import AUTO, Final, Pause, PreviewCadence, Step, StopCheck, never_stop
from pipelines.models.clip import CLIPEnsemble
from pipelines.presets import load_preset
from pipelines.registry import PRECISIONS, autocast, compute_dtype
from pipelines.seeds import generator as seeded, slerp
from pipelines.validation import MAX_SEED, variation
from pipelines.validation import number as _number
from pipelines.vqgan_clip_cutouts import AUGMENT_CODES, CUT_METHODS, MakeCutouts
from pipelines.vqgan_clip_ops import (PromptLoss, clamp_with_grad, codebook_bounds, init_z_from_tokens,
                                      random_init_tokens, vector_quantize)

log = logging.getLogger(__name__)

ENGINE = "vqgan_clip"
OPTIMISERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "Adagrad": torch.optim.Adagrad,
              "Adamax": torch.optim.Adamax, "RAdam": torch.optim.RAdam, "RMSprop": torch.optim.RMSprop}
MAX_ITERATIONS = 5000     # more is capped, with a notice
# Pixels per side. On a GPU 512, the reference's own default there (its README: about 10 GB at 512x512).
# Elsewhere 256, its CPU default: one iteration's decoder pass (forward and backward, random weights of the
# real f16 architecture, 2 CPU threads) takes 4.9 s at 256x256 and 18.9 s at 512x512 (f8: 2.7 and 20.8 s),
# so a 300-iteration run at 512 would hold the one engine slot for well over an hour, before CLIP's share.
MAX_SIDE = 512
MAX_SIDE_CPU = 256
MAX_CUTN = 128
MAX_STARTS = 16
MAX_CLIP_2_WEIGHT = 100   # the second CLIP against the first; past this the first hardly counts


@dataclass(frozen=True)
class ImagePrompt:
    image: Image.Image
    weight: float = 1.0
    stop: float = float("-inf")
    name: str = "image"


@dataclass(frozen=True)
class VQGANCLIPRequest:
    prompt: str = ""                               # "text:weight:stop | ... ^ next phase"
    preset: str = "shapes"
    image_prompts: tuple[ImagePrompt, ...] = ()    # target images
    noise_prompts: tuple[tuple[int, float], ...] = ()  # (seed, weight)
    init_image: Image.Image | None = None
    init_weight: float = 0.0
    seed: int = 0
    width: int = 32
    height: int = 32
    iterations: int = 150
    lr: float = 0.1
    optimiser: str = "Adam"
    cutn: int = 16
    cut_pow: float = 1.0
    cut_method: str = "latest"
    cut_noise: float = 0.1                         # cutout k gets N(0, s_k^2) noise, s_k ~ U(0, cut_noise)
    augments: tuple[str, ...] = ("Af", "Pe")
    preview_every: int = 5                         # 0 = no previews (and no video frames); -1 (AUTO): under 10 %
    change_prompt_every: int = 0                   # story mode: next '^' phase every N iterations
    precision: str = "auto"                        # autocast dtype of the decoder and CLIP passes (PRECISIONS)
    subseed: int = 0                               # vary seed (pipelines/seeds.py): the random start is mixed
    subseed_strength: float = 0.0                  # with the subseed's by this much; 0 = off
    starts: int = 1                                # random starts optimised side by side at first
    starts_for: int = 50                           # iterations before the best start is kept alone
    clip_2_weight: float = 1.0                     # the preset's second CLIP against its first (1 = equal, 0 = unused)

    def replace(self, **kw) -> "VQGANCLIPRequest":
        return dataclasses.replace(self, **kw)


def max_side(device) -> int:
    """The largest width and height a run may ask for on `device` (see MAX_SIDE)."""
    return MAX_SIDE if torch.device(device).type == "cuda" else MAX_SIDE_CPU


def check_size(req: VQGANCLIPRequest, device) -> None:
    """Width and height within the device's limit: one sentence naming it (checked before any model loads)."""
    most = max_side(device)

    def side(v):
        try:
            v = float(v)
        except (TypeError, ValueError):
            return 0.0                          # not a number: validate() says so
        return v if math.isfinite(v) else 0.0

    w, h = side(req.width), side(req.height)
    if w > most or h > most:
        where = "on a GPU" if most == MAX_SIDE else f"on this {torch.device(device).type.upper()} ({MAX_SIDE} on a GPU)"
        raise ValueError(f"Width and height may be at most {most} pixels {where}; {w:g}x{h:g} was asked for.")


def clip_2_weight(req: VQGANCLIPRequest) -> float:
    """The second CLIP's weight against the first's 1, or a ValueError naming the setting (checked before loading:
    at 0 the second CLIP is not loaded)."""
    return _number("Second CLIP's weight", req.clip_2_weight, 0, MAX_CLIP_2_WEIGHT)


def validate(req: VQGANCLIPRequest, factor: int, device="cpu") -> tuple[VQGANCLIPRequest, list[list[P.WeightedPrompt]],
                                                                       list[str]]:
    """Check every field; return the request (iterations capped), the parsed story, and notices."""
    notices = []
    phases = P.parse_prompts(req.prompt) if (req.prompt.strip() or not (req.image_prompts or req.noise_prompts)) else [[]]
    _number("Seed", req.seed, 0, MAX_SEED, integer=True)
    variation(req.subseed, req.subseed_strength)
    check_size(req, device)
    for name, v in (("Width", req.width), ("Height", req.height)):
        _number(name, v, factor, max_side(device), integer=True)
        if int(v) % factor:
            raise ValueError(f"{name} must be a multiple of {factor} for this VQGAN (got {v}; "
                             f"try {max(factor, int(v) // factor * factor)}).")
    iters = _number("Iterations", req.iterations, 1, float("inf"), integer=True)
    if iters > MAX_ITERATIONS:
        notices.append(f"Iterations capped at {MAX_ITERATIONS} (asked for {iters}).")
        req = req.replace(iterations=MAX_ITERATIONS)
    _number("Learning rate", req.lr, 1e-5, 10)
    _number("Cutouts", req.cutn, 1, MAX_CUTN, integer=True)
    _number("Cut power", req.cut_pow, 0.01, 10)
    _number("Cutout noise", req.cut_noise, 0, 1)
    clip_2_weight(req)
    _number("Init weight", req.init_weight, 0, 1e4)
    _number("Preview every", req.preview_every, AUTO, 10**6, integer=True)
    _number("Change prompt every", req.change_prompt_every, 0, 10**6, integer=True)
    _number("Random starts", req.starts, 1, MAX_STARTS, integer=True)
    _number("Keep the best start after", req.starts_for, 1, 10**6, integer=True)
    if req.optimiser not in OPTIMISERS:
        raise ValueError(f"Optimiser must be one of {', '.join(OPTIMISERS)} (got {req.optimiser!r})")
    if req.precision not in PRECISIONS:
        raise ValueError(f"Precision must be one of {', '.join(PRECISIONS)} (got {req.precision!r})")
    if req.cut_method not in CUT_METHODS:
        raise ValueError(f"Cutout method must be one of {', '.join(CUT_METHODS)} (got {req.cut_method!r})")
    bad = [a for a in req.augments if a not in AUGMENT_CODES]
    if bad:
        raise ValueError(f"Unknown augmentation {', '.join(bad)}; choose from {', '.join(AUGMENT_CODES)}")
    for ip in req.image_prompts:
        _number(f"Weight of {ip.name}", ip.weight, -1e4, 1e4)
    for s, w in req.noise_prompts:
        _number("Noise prompt weight", w, -1e4, 1e4)
    if all(p.weight == 0 for ph in phases for p in ph) and all(ip.weight == 0 for ip in req.image_prompts) \
            and all(w == 0 for _, w in req.noise_prompts):
        raise ValueError("All prompt weights are zero: give at least one prompt a non-zero weight.")
    if req.init_image is not None and int(req.starts) > 1:
        notices.append("Random starts need a random start, and an init image is the start here: one start runs.")
        req = req.replace(starts=1)
    if req.init_image is not None and float(req.subseed_strength) > 0:
        notices.append("Vary seed changes the random start, and an init image is the start here: "
                       "the subseed has no effect.")
    return req, phases, notices


def _settings(req: VQGANCLIPRequest) -> dict:
    """The request as plain JSON data; images become names and digests."""
    d = {f.name: getattr(req, f.name) for f in dataclasses.fields(req)}
    d["image_prompts"] = [{"name": ip.name, "weight": ip.weight, "stop": ip.stop, "digest": media.image_digest(ip.image)}
                          for ip in req.image_prompts]
    d["noise_prompts"] = [list(p) for p in req.noise_prompts]
    d["init_image"] = media.image_digest(req.init_image) if req.init_image is not None else None
    d["augments"] = list(req.augments)
    return d


def run(req: VQGANCLIPRequest, registry, should_stop: StopCheck = never_stop, resume: "OptimiseState | None" = None,
        max_steps: int | None = None) -> Iterator[Step | Final | Pause]:
    """The engine: models from the registry for the request's preset, then `optimise` (which see for
    `resume` and `max_steps`: a long run in bounded pieces)."""
    preset = load_preset(req.preset)
    roles = ENGINE_SPEC.components(preset)
    check_size(req, registry.device)          # before any download or load: a 2048x2048 request costs nothing
    # a preset's second CLIP (`clip_2`) judges beside the first, weighted `clip_2_weight` to the first's 1: the
    # loop answers to both at once (weight 0: the first alone, and the second is not loaded)
    w2 = clip_2_weight(req)
    if w2 == 0:
        roles.pop("clip_2", None)
    with registry.use(*roles.values()) as loaded:
        models = dict(zip(roles, loaded))
        clip = CLIPEnsemble([models["clip"], models["clip_2"]], weights=[1.0, w2]) if "clip_2" in models \
            else models["clip"]
        info = {"preset": preset.name, "models": registry.describe(**roles)}
        yield from optimise(req, models["vqgan"], clip, registry.device, should_stop, info, resume, max_steps)


@dataclass
class OptimiseState:
    """Where a paused run stands (CPU tensors: it pickles): the next iteration, the latents, the
    optimiser's state, the generator's state, the seconds spent so far, and which random start went
    on alone (None before the pick, or with one start)."""
    next: int
    z: torch.Tensor
    opt: dict
    gen: torch.Tensor
    seconds: float
    kept: int | None = None


def _keep_start(z: torch.Tensor, z_init: torch.Tensor, opt, k: int, optimiser, lr: float):
    """Row k of the starts alone: new latents, their init, and an optimiser of the same kind that carries on
    with row k of every per-element state (Adam's moments; its step count is shared)."""
    one = z.detach()[k:k + 1].clone().requires_grad_(True)
    state = opt.state_dict()
    for st in state["state"].values():
        for name, v in list(st.items()):
            if torch.is_tensor(v) and v.shape[:1] == z.shape[:1] and v.dim() == z.dim():
                st[name] = v[k:k + 1].clone()
    new = optimiser([one], lr=lr)
    new.load_state_dict(state)
    return one, z_init[k:k + 1], new


def _cpu(obj):
    """An optimiser state_dict (nested dicts and lists of tensors) with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def optimise(req: VQGANCLIPRequest, vqgan, clip, device, should_stop: StopCheck = never_stop,
             info: dict | None = None, resume: OptimiseState | None = None,
             max_steps: int | None = None) -> Iterator[Step | Final | Pause]:
    """The VQGAN+CLIP loop over given models (the benchmark drives it with its own).

    With `max_steps` it runs at most that many iterations and then, before the end, yields a
    `Pause` whose state `resume` continues from; the pieces make the same picture as one run.
    `resume` with `max_steps=0` ends a paused run where it stands (a Stop between pieces).
    """
    t0 = time.perf_counter()
    req, phases, notices = validate(req, vqgan.factor, device)
    gen = torch.Generator().manual_seed(int(req.seed))
    H, W = int(req.height), int(req.width)
    toks_h, toks_w = H // vqgan.factor, W // vqgan.factor
    codebook = vqgan.codebook.detach().float()
    z_min, z_max = (b.to(device) for b in codebook_bounds(codebook))
    cutouts = MakeCutouts(clip.image_size, int(req.cutn), req.cut_pow, req.cut_method, req.augments,
                          noise_fac=float(req.cut_noise))
    dtype = compute_dtype(device, req.precision, H * W)                          # the decoder's passes
    clip_dtype = compute_dtype(device, req.precision, clip.image_size ** 2 * int(req.cutn))  # CLIP's, all cutouts

    def encode_image(pixels):
        with autocast(device, clip_dtype):
            return clip.encode_image(pixels).float()

    # 1. initial latents: an encoded init image, or random codebook rows (seeded)
    if req.init_image is not None:
        init = req.init_image.convert("RGB").resize((W, H), Image.Resampling.LANCZOS)
        x_init = media.to_tensor(init, (0, 1)).mul(2).sub(1).to(device)  # [-1, 1]
        with torch.no_grad():
            z = vqgan.encode(x_init)[0].float()
    else:               # one grid of random codebook rows per start, the first drawn as a single start's
        starts, sub, strength = [], seeded(int(req.subseed)), float(req.subseed_strength)
        for _ in range(int(req.starts)):
            tokens = random_init_tokens(toks_h * toks_w, codebook.shape[0], gen)
            z = init_z_from_tokens(tokens, codebook, toks_h, toks_w)
            if strength > 0:        # vary seed: towards the subseed's random start (its own generator)
                other = random_init_tokens(toks_h * toks_w, codebook.shape[0], sub)
                z = slerp(strength, z, init_z_from_tokens(other, codebook, toks_h, toks_w))
            starts.append(z)
        z = torch.cat(starts).to(device)
    z_init = z.detach().clone()

    # 2. targets: text, image and noise prompts
    def synth(z, dtype=dtype):
        z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        with autocast(device, dtype):
            x = vqgan.decode(z_q)
        return clamp_with_grad(x.float().add(1).div(2), 0, 1)

    def text_losses(phase):
        if not phase:
            return []
        with torch.no_grad():
            emb = clip.encode_text([p.text for p in phase]).float()
        return [(f"loss/{p.text}", PromptLoss(emb[k:k + 1], p.weight, p.stop)) for k, p in enumerate(phase)]

    def named(terms):
        """Every loss term keeps its own metric, even when two prompts share a text."""
        seen: dict[str, int] = {}
        out = []
        for name, fn in terms:
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name} ({seen[name]})", fn))
        return out

    extra = []
    for ip in req.image_prompts:
        img = ip.image.convert("RGB")
        scale = math.sqrt(W * H / (img.width * img.height))  # same area as the output, aspect kept
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
        x_img = media.to_tensor(img, (0, 1)).to(device)
        with torch.no_grad():
            emb = encode_image(cutouts(x_img, gen))
        extra.append((f"loss/{ip.name}", PromptLoss(emb, ip.weight, ip.stop)))
    for seed, weight in req.noise_prompts:
        emb = torch.randn(1, clip.embed_dim, generator=torch.Generator().manual_seed(int(seed))).to(device)
        extra.append((f"loss/noise {seed}", PromptLoss(emb, weight)))

    total = int(req.iterations)
    pick_at = min(int(req.starts_for), total) if len(z) > 1 else 0    # after this iteration one start goes on
    start, spent = 0, 0.0
    if resume is not None:      # everything above is rebuilt from the request; the moving parts are restored
        start, spent = resume.next, resume.seconds
        z = resume.z.to(device)                         # one start, or all of them before the pick
        if len(z) < len(z_init):
            z_init = z_init[resume.kept:resume.kept + 1]   # the pick was made before the pause
        gen.set_state(resume.gen)
    kept = resume.kept if resume is not None else None  # the start that went on alone, once one has
    lead = 0                                            # the row of z the previews show: the lowest loss so far
    z = z.detach().clone().requires_grad_(True)
    opt = OPTIMISERS[req.optimiser]([z], lr=req.lr)
    if resume is not None:
        opt.load_state_dict(resume.opt)
    phase_index = P.phase_at(phases, start - 1, int(req.change_prompt_every)) if start else 0
    losses = named(text_losses(phases[phase_index]) + extra)
    done = start
    if resume is None:
        for note in notices:
            yield Step(ENGINE, "optimise", 0, total, notice=note)

    # 3. the optimisation loop (its previews reuse the forward pass's picture; the video ends on the result)
    cadence = PreviewCadence(req.preview_every, total)
    final = None
    for i in range(start, total if max_steps != 0 else start):   # max_steps 0: finish a paused run as it is
        k = P.phase_at(phases, i, int(req.change_prompt_every))
        notice = None
        if k != phase_index:
            phase_index, losses = k, named(text_losses(phases[k]) + extra)
            notice = f"Story phase {k + 1}: " + " | ".join(p.text for p in phases[k])
        opt.zero_grad(set_to_none=True)
        x = synth(z)
        # each start's cutouts in turn (one start: exactly the single-picture loop); each term is the mean over all
        embeds = encode_image(torch.cat([cutouts(x[k:k + 1], gen) for k in range(len(x))]))
        terms = {name: fn(embeds) for name, fn in losses}
        if len(x) > 1:          # each start's own loss, to lead the previews and to pick the one that goes on
            with torch.no_grad():
                per_start = [sum(fn(e) for _, fn in losses) for e in embeds.view(len(x), -1, embeds.shape[-1])]
            lead = int(torch.stack([v.float() for v in per_start]).argmin())
        if req.init_weight:
            terms["loss/init"] = F.mse_loss(z, z_init) * req.init_weight / (2 * (2 * i + 1))
        loss = sum(terms.values())
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(torch.maximum(torch.minimum(z, z_max), z_min))
        done = i + 1
        if done == pick_at:     # the start CLIP likes best goes on alone, with its optimiser state
            losses_now = ", ".join(f"{float(v):.3f}" for v in per_start)
            kept = lead
            z, z_init, opt = _keep_start(z, z_init, opt, kept, OPTIMISERS[req.optimiser], req.lr)
            x = x[kept:kept + 1]
            notice = ((notice + " ") if notice else "") + (
                f"Kept random start {kept + 1} of {len(per_start)} after {done} iterations "
                f"(CLIP losses {losses_now}).")
            lead = 0
        metrics = {"loss": float(loss.detach()), **{n: float(v.detach()) for n, v in terms.items()}}
        previews = {}
        if cadence.due(i):
            t_preview = time.perf_counter()
            if done == total:                   # the last preview is the result itself (decoded as below)
                with torch.no_grad():
                    final = media.to_pil(synth(z[lead:lead + 1], torch.float32)[0], value_range=(0, 1))
            previews["current"] = final if done == total else media.to_pil(x[lead].detach(), value_range=(0, 1))
            cadence.took(i, time.perf_counter() - t_preview)
        yield Step(ENGINE, "optimise", done, total, previews=previews,
                   metrics={**metrics, **cadence.metrics}, elapsed_s=spent + time.perf_counter() - t0, notice=notice)
        stopping = should_stop()
        if max_steps is not None and done - start >= max_steps and done < total and not stopping:
            state = OptimiseState(done, _cpu(z), _cpu(opt.state_dict()), gen.get_state(),
                                  spent + time.perf_counter() - t0, kept)
            yield Pause(ENGINE, state, done, total)
            return
        if stopping:
            if cadence.every and done < total:  # the picture Stop keeps, as the last preview
                with torch.no_grad():
                    final = media.to_pil(synth(z[lead:lead + 1], torch.float32)[0], value_range=(0, 1))
                yield Step(ENGINE, "optimise", done, total, previews={"current": final},
                           metrics={**metrics, **cadence.metrics}, elapsed_s=time.perf_counter() - t0)
            break

    # 4. the final image from the last z, decoded in float32 (the last preview's, when it was one)
    if final is None:
        with torch.no_grad():
            final = media.to_pil(synth(z[lead:lead + 1], torch.float32)[0], value_range=(0, 1))
    meta = {
        "engine": ENGINE, "app_version": __version__, **(info or {}),
        "settings": _settings(req), "iterations_done": done, "stopped": done < total,
        **({"kept_start": kept + 1} if kept is not None else {}),
        "seconds": round(spent + time.perf_counter() - t0, 2), "device": str(device),
        "precision": {"decoder": str(dtype).removeprefix("torch."), "clip": str(clip_dtype).removeprefix("torch.")},
    }
    yield Final(ENGINE, [final], meta, stopped=done < total)


# ---------------------------------------------------------------------------
# The engine as the page, the command line and the evaluation see it
# ---------------------------------------------------------------------------


def image_prompts_from(text: str) -> tuple[ImagePrompt, ...]:
    """'a.png:1 | b.png:0.5' -> target images, each read by media.load_image (its limits, clear errors)."""
    return tuple(ImagePrompt(media.load_image(ip.text, name=ip.text), ip.weight, ip.stop, ip.text)
                 for ip in P.parse_image_prompts(text))


def noise_prompts_from(text: str) -> tuple[tuple[int, float], ...]:
    """'1:0.5 | 2:-0.5' -> (seed, weight) noise prompts."""
    pairs = [piece.split(":") for piece in text.split("|") if piece.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError("Noise prompts are seed:weight pieces separated by '|', e.g. '1:0.5 | 2:-0.5'.")
    return tuple(P.parse_noise_prompts(", ".join(s for s, _ in pairs), ", ".join(w for _, w in pairs)))


ENGINE_SPEC = Engine(
    name=ENGINE, label="VQGAN+CLIP", request=VQGANCLIPRequest, run=run,
    needs=(("vqgan", "clip"),), kinds={"vqgan": ("vqgan",)},   # a VQGAN it can encode and optimise (not min-dalle's decoder)
    optional=("clip_2",),                                      # a second CLIP judging beside the first (CLIPEnsemble)
    limits={"iterations": (1, MAX_ITERATIONS), "width": (1, MAX_SIDE), "height": (1, MAX_SIDE), "cutn": (1, MAX_CUTN),
            "subseed_strength": (0, 1), "starts": (1, MAX_STARTS), "cut_noise": (0, 1),
            "clip_2_weight": (0, MAX_CLIP_2_WEIGHT)},
    choices={"optimiser": tuple(OPTIMISERS), "cut_method": tuple(CUT_METHODS), "precision": tuple(PRECISIONS)},
    image_fields=("image_prompts", "init_image"),
    parse={"image_prompts": image_prompts_from, "noise_prompts": noise_prompts_from,
           "augments": lambda text: tuple(s.strip() for s in text.split(",") if s.strip())},
    frame=lambda req, previews: previews.get("current"),
    closing_frames=lambda req, final: final.images[:1],   # the video ends on the result
    image_meta=lambda final, k: {},
    settings=_settings,
    check=lambda req, models, device: validate(req, getattr(models.get("vqgan"), "factor", 1), device) and None,
    # an iteration: decode, cutouts, CLIP; its cost grows with the picture's area and the cutouts
    work=lambda req: (req.iterations + (req.starts - 1) * min(req.starts_for, req.iterations))
    * max(1.0, req.width * req.height / 1024) * max(1.0, req.cutn / 16),
    # measured: shapes preset, one CPU thread (pipelines/estimate.py); its second CLIP makes a run 1.52x as long
    # (25.8 against 17.0 s, one process, weight 0.5 against 0), so 0.031 became 0.047
    cost=(0.04, 0.047),
    # held at once: the decoder's activations (with gradients) grow with the area, CLIP's with the cutouts
    memory_work=lambda req: req.starts * (req.width * req.height / 1024 + req.cutn / 3),
    memory_cost=5.5 * 2**20,  # measured: peak resident growth, shapes preset, CPU (pipelines/estimate.py)
    pausable=True,
    fps=10)
