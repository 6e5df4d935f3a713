"""Seeds and their variations: A1111's "variation seed" (subseed) for every engine that samples.

A request's `seed` fixes its randomness. `subseed` and `subseed_strength` (0 = off) vary it a
little: the random start the seed draws is mixed with the one the subseed draws,

    start = slerp(strength, start(seed), start(subseed))       strength 0: the seed's own, 1: the subseed's

so a small strength gives a picture close to the seed's, and strength 1 the subseed's start.
Only the start is mixed; a sampler's later randomness (DDPM, Euler a, DDIM with eta, VQGAN+CLIP's
cutouts) stays the seed's, as in A1111. Where each engine draws its start:

    diffusion     the starting noise z_T (also the noise image-to-image adds to the init)
    unCLIP        the decoder's starting noise, and the prior's (from seed + 1, as the seed's)
    VQGAN+CLIP    the random codebook rows z starts from (an init image has no random start)
    DALL-E        each code's draw: `mixed_exponential` below, per position and code

At strength 0 nothing is drawn from the subseed, so a picture is bit for bit the one the seed
alone makes. This module is plain torch; it knows no engine.
"""
from __future__ import annotations

import math

import torch

MAX_SEED = 2**63 - 1


def generator(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) % (MAX_SEED + 1))


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of each row (first dimension) of a towards the same row of b, by t in
    [0, 1]; a itself at 0 and b itself at 1. Rows nearly parallel are interpolated linearly."""
    if t <= 0:
        return a
    if t >= 1:
        return b
    fa, fb = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    dot = (fa / fa.norm(dim=1, keepdim=True) * fb / fb.norm(dim=1, keepdim=True)).sum(1).clamp(-1, 1)
    omega = torch.arccos(dot)[:, None]
    so = torch.sin(omega)
    parallel = so.abs() < 1e-6
    wa = torch.where(parallel, torch.full_like(so, 1 - t), torch.sin((1 - t) * omega) / so.where(~parallel, 1.0))
    wb = torch.where(parallel, torch.full_like(so, t), torch.sin(t * omega) / so.where(~parallel, 1.0))
    return (wa * fa + wb * fb).reshape(a.shape).to(a.dtype)


def varied_randn(shape, gen: torch.Generator, subseed: int, strength: float) -> torch.Tensor:
    """torch.randn(shape, generator=gen) (the seed's start, drawn as before), mixed with the subseed's
    by `strength`; the subseed draws from a generator of its own on gen's device, so gen's stream is
    the same with or without a variation."""
    x = torch.randn(shape, generator=gen, device=gen.device)
    if strength <= 0:
        return x
    y = torch.randn(shape, generator=generator(subseed, gen.device), device=gen.device)
    return slerp(strength, x, y)


def mixed_exponential(q_seed: torch.Tensor, q_sub: torch.Tensor, strength: float) -> torch.Tensor:
    """Two tensors of independent Exp(1) draws mixed into one of Exp(1) draws that moves from the
    first (strength 0) to the second (strength 1).

    torch.multinomial(p, 1) draws one code as argmax(p / q), q ~ Exp(1) per code (the exponential
    race, the Gumbel-max trick in another form). Each q goes to a standard normal through its
    survival function, n = -ndtri(exp(-q)); the two normals are mixed as cos(pi t / 2) n_seed +
    sin(pi t / 2) n_sub, again exactly N(0, 1); and back, q = -log ndtr(-n). Every mixed q is an
    exact Exp(1) draw, so every code is still an exact sample of the model's distribution, and a
    small strength moves few codes' winners."""
    if strength <= 0:
        return q_seed
    if strength >= 1:
        return q_sub
    tiny = 1e-300

    def normal(q):
        return -torch.special.ndtri(torch.exp(-q.double()).clamp(tiny, 1 - 1e-16))

    angle = math.pi * strength / 2
    n = math.cos(angle) * normal(q_seed) + math.sin(angle) * normal(q_sub)
    return (-torch.special.log_ndtr(-n)).clamp_min(tiny).to(q_seed.dtype)
