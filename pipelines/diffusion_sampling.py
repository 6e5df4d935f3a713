"""The denoising loop of the diffusion engine, over diffusers schedulers.

Kept apart from the engine (`pipelines/diffusion.py`) so the training command draws
its sample grids with exactly the loop the app runs. The loop is a generator of
`SamplerStep`s, the same names in every sampler:

    x_t      the sample entering step i (noisy; pure noise at i = 0 for text-to-image)
    x0_pred  the model's estimate of the clean sample from x_t   (diffusers: pred_original_sample)
    x_next   the sample after the step                           (diffusers: prev_sample)

Each step is two calls, as in diffusers' pipelines: the model, then `scheduler.step`.
x0_pred is computed here from the model output, so every scheduler (DPM-Solver++
returns none) previews the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

# name shown to the user -> (diffusers class name, extra config)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "DPM-Solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DDIM": ("DDIMScheduler", {"set_alpha_to_one": False}),
    "DDPM": ("DDPMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),   # SD-Turbo's: fresh noise at every step
}
ETA_SAMPLERS = ("DDIM",)
ALPHA_SAMPLERS = ("DPM-Solver++", "DDIM", "DDPM")   # over sqrt(a) x0 + sqrt(1 - a) eps: unCLIP's prior and decoder   # the only one whose step takes eta (0: deterministic, 1: DDPM-like noise)


@dataclass(frozen=True)
class SamplerStep:
    i: int
    t: int
    x_t: torch.Tensor
    x0_pred: torch.Tensor
    x_next: torch.Tensor


def make_scheduler(name: str, config: dict):
    """A fresh diffusers scheduler for `name` (a SAMPLERS key) matching the model's noise schedule."""
    import diffusers

    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}.")
    cls_name, extra = SAMPLERS[name]
    return getattr(diffusers, cls_name).from_config({**config, **extra})


def predict_x0(scheduler, out: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
    """x0 from the network output at timestep t, for eps-, v- or sample-prediction models.

    Notation: a = alphas_cumprod[t];  x_t = sqrt(a) x0 + sqrt(1 - a) eps;  v = sqrt(a) eps - sqrt(1 - a) x0.
    """
    a = scheduler.alphas_cumprod[int(t)].to(x_t.device, x_t.dtype)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * out
    return out


@torch.no_grad()
def denoise(model, scheduler, x: torch.Tensor, text_emb: torch.Tensor | None, null_emb: torch.Tensor | None,
            guidance: float, generator: torch.Generator, eta: float = 0.0, start: int = 0) -> Iterator[SamplerStep]:
    """Run `scheduler.timesteps[start:]` from x; classifier-free guidance when guidance != 1.

    text_emb (B, T, D) conditions the model, null_emb (B, T, D) is the empty caption's; both are
    None for unconditional models. With guidance g the prediction is u + g (c - u): the
    conditional and unconditional passes share one batch.
    """
    guided = model.conditional and guidance != 1.0
    step_kwargs = {"generator": generator}
    if isinstance(scheduler, _ddim()):
        step_kwargs["eta"] = eta
    for i, t in enumerate(scheduler.timesteps[start:]):
        # 1. the model's prediction at t, guided
        x_in = scheduler.scale_model_input(x, t)
        t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        if guided:
            both = model(torch.cat([x_in, x_in]), torch.cat([t_batch, t_batch]), torch.cat([null_emb, text_emb]))
            uncond, cond = both.chunk(2)
            out = uncond + guidance * (cond - uncond)
        else:
            out = model(x_in, t_batch, text_emb)
        # 2. one scheduler step to the next, less noisy sample
        stepped = scheduler.step(out, t, x, **step_kwargs)
        x_next = stepped.prev_sample
        # 3. the clean-sample estimate, for previews (Euler's samples are scaled by sigma: it knows x0 itself)
        x0_pred = stepped.pred_original_sample if _sigma_space(scheduler) else predict_x0(scheduler, out, x, t)
        yield SamplerStep(i, int(t), x, x0_pred, x_next)
        x = x_next


def _sigma_space(scheduler) -> bool:
    """Karras-style samplers (Euler) keep x = x0 + sigma eps rather than sqrt(a) x0 + sqrt(1 - a) eps."""
    return type(scheduler).__name__.startswith("Euler")


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler


def img2img_start(scheduler, steps: int, strength: float) -> int:
    """Where image to image enters a schedule of `steps`: it runs the last `strength` share of it
    (diffusers' img2img convention); tells the scheduler, where it keeps a step index."""
    start = steps - min(steps, int(round(steps * strength)))
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return start


def noised(scheduler, z0: torch.Tensor, noise: torch.Tensor, start: int) -> torch.Tensor:
    """z0 (B, ...) noised to the schedule's timestep `start`; z0 itself when no step is left to run."""
    if start >= scheduler.num_inference_steps:
        return z0
    return scheduler.add_noise(z0, noise, scheduler.timesteps[start:start + 1].repeat(len(z0)))


def watched(steps: Iterator[SamplerStep], total: int, cadence, make_step, make_preview, should_stop):
    """A sampler loop as every denoising engine shows it: for each step, `make_step(s, previews)` with
    `make_preview(s)` when the cadence says so (events.PreviewCadence); on Stop one more step event
    previewing what the run keeps (`make_preview(s, last=True)`). Yields (sampler step, event)."""
    for s in steps:
        yield s, make_step(s, make_preview(s) if cadence.due(s.i) else {})
        if should_stop():
            if cadence.every and s.i + 1 < total:      # the picture Stop keeps, as the last preview
                yield s, make_step(s, make_preview(s, last=True))
            break
