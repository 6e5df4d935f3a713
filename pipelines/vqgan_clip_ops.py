"""Differentiable building blocks of the VQGAN+CLIP optimisation loop: gradient tricks, the
codebook, the prompt loss. The cutouts, their augmentations and the Lanczos resampling they use
are in `pipelines/vqgan_clip_cutouts.py`.

The method is Katherine Crowson's VQGAN+CLIP notebook, as documented in nerdyrodent/VQGAN-CLIP
``generate.py`` (commit 592d555; our notes are ``shared/reference/vqgan_clip.md`` sections 3, 5,
6 and 8). Everything here is written from those notes; the goldens in
``tests/fixtures/vqgan_clip_ops`` were produced by the original function bodies.

Kept exactly (matched by golden tests):

* :func:`replace_grad` / :func:`clamp_with_grad` gradient rules;
* :func:`vector_quantize` returns exact codebook rows with an identity (straight-through)
  gradient, unlike taming's ``z + (e - z).detach()`` which is only equal up to rounding;
* :class:`PromptLoss`: ``|w| * mean(replace_grad(d_s, max(d_s, stop)))``, so ``stop`` only
  affects the gradient, never the value;
* random token initialisation and the per-channel codebook bounds for clamping z.

Changed on purpose:

* **Seedable randomness.** Upstream draws the initial tokens, crop sizes/offsets, kornia
  augmentations and cutout noise from torch's global RNG (and seeds it only after z and the
  image prompts exist, so those were not reproducible). Here every random function accepts a
  ``torch.Generator``. kornia has no per-call generator, so :class:`MakeCutouts` forks the
  global RNG state (``torch.random.fork_rng``), seeds it from one draw of the passed generator,
  runs the augmentations and restores the global state: the caller's global RNG is untouched
  and the result depends only on the generator.
* :func:`vector_quantize` computes the code distances under ``no_grad`` (the indices carry no
  gradient anyway) and gathers rows by index instead of a one-hot matmul; both give the exact
  rows, and the golden check is bit-identical.
* **One resampling for the geometric augmentations.** A run of ``Af`` / ``Pe`` codes draws
  kornia's parameters but composes their matrices and samples the image once
  (:class:`WarpAugment`), where kornia resamples once per code: a little sharper, and 3.8 -> 1.5 ms
  for 16 cutouts' forward and backward.
* Arguments are validated with ``ValueError`` messages that list the allowed values.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "replace_grad",
    "clamp_with_grad",
    "vector_quantize",
    "spherical_dist",
    "PromptLoss",
    "random_init_tokens",
    "init_z_from_tokens",
    "codebook_bounds",
]


# --------------------------------------------------------------------------------------------
# Gradient tricks
# --------------------------------------------------------------------------------------------
class _ReplaceGrad(torch.autograd.Function):
    """Forward: the first tensor. Backward: the gradient goes to the second tensor."""

    @staticmethod
    def forward(ctx, forward_value: Tensor, backward_into: Tensor) -> Tensor:  # type: ignore[override]
        ctx.backward_shape = backward_into.shape
        return forward_value

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # The second input may have been broadcast against the first; fold the gradient back.
        return None, grad.sum_to_size(ctx.backward_shape)


def replace_grad(forward_value: Tensor, backward_into: Tensor) -> Tensor:
    """Value of ``forward_value``; gradient flows (unchanged) into ``backward_into``."""
    return _ReplaceGrad.apply(forward_value, backward_into)


class _ClampWithGrad(torch.autograd.Function):
    """Clamp whose gradient passes wherever a descent step would move x toward the range."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:  # type: ignore[override]
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # Inside the range x - clamp(x) == 0, so the gradient always passes there. Outside,
        # it passes only when -grad points back toward the range.
        keep = grad * (x - x.clamp(ctx.lo, ctx.hi)) >= 0
        return grad * keep, None, None


def clamp_with_grad(x: Tensor, lo: float, hi: float) -> Tensor:
    """``x.clamp(lo, hi)`` forward; backward passes g where ``g * (x - clamp(x)) >= 0``."""
    return _ClampWithGrad.apply(x, lo, hi)


# --------------------------------------------------------------------------------------------
# Codebook helpers
# --------------------------------------------------------------------------------------------
def vector_quantize(x_channels_last: Tensor, codebook: Tensor) -> Tensor:
    """Snap each ``[..., C]`` vector to its nearest codebook row, straight-through gradient.

    Args:
        x_channels_last: latent with channels last, e.g. ``z.movedim(1, 3)``.
        codebook: ``[n_codes, C]``.
    Returns:
        Exact codebook rows, same shape as the input; the gradient reaches the input unchanged.
    """
    if x_channels_last.shape[-1] != codebook.shape[-1]:
        raise ValueError(
            f"vector_quantize: last input dim {x_channels_last.shape[-1]} != codebook dim "
            f"{codebook.shape[-1]}"
        )
    with torch.no_grad():
        # 1. Squared distances |x|^2 + |e|^2 - 2 x.e to every code.
        x = x_channels_last.detach()
        dist = (
            x.pow(2).sum(dim=-1, keepdim=True)
            + codebook.detach().pow(2).sum(dim=1)
            - 2 * x @ codebook.detach().T
        )
        # 2. The nearest code per position.
        indices = dist.argmin(dim=-1)
    # 3. Exact rows forward, identity gradient backward.
    quantized = codebook[indices].to(x_channels_last.dtype)
    return replace_grad(quantized, x_channels_last)


def random_init_tokens(n_tokens: int, n_codes: int, generator: torch.Generator) -> Tensor:
    """``n_tokens`` uniform code ids in ``[0, n_codes)`` drawn from ``generator`` (not global RNG).

    Seeded with the same number, this draws the same stream as upstream's
    ``torch.manual_seed(s); torch.randint(n_codes, [n_tokens])``.
    """
    if n_tokens < 1 or n_codes < 1:
        raise ValueError(f"n_tokens and n_codes must be >= 1, got {n_tokens} and {n_codes}")
    return torch.randint(n_codes, (n_tokens,), generator=generator, device=generator.device)


def init_z_from_tokens(tokens: Tensor, codebook: Tensor, toks_h: int, toks_w: int) -> Tensor:
    """Initial latent ``[1, C, toks_h, toks_w]`` (contiguous) made of the given codebook rows.

    Row-major token order: ``tokens[i * toks_w + j]`` is latent row i, column j.
    """
    # 1. Validate the token grid.
    if tokens.numel() != toks_h * toks_w:
        raise ValueError(
            f"init_z_from_tokens: {tokens.numel()} tokens do not fill a {toks_h}x{toks_w} grid"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook.shape[0]):
        raise ValueError(f"init_z_from_tokens: token ids must lie in [0, {codebook.shape[0]})")
    # 2. Gather rows (same values as upstream's one-hot @ codebook), then channels first.
    rows = codebook[tokens.reshape(-1).to(codebook.device)]
    return rows.reshape(1, toks_h, toks_w, codebook.shape[1]).permute(0, 3, 1, 2).contiguous()


def codebook_bounds(codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (min, max) over all codebook rows, each ``[1, C, 1, 1]``; z is clamped to them."""
    z_min = codebook.amin(dim=0)[None, :, None, None]
    z_max = codebook.amax(dim=0)[None, :, None, None]
    return z_min, z_max


# --------------------------------------------------------------------------------------------
# Spherical-distance prompt loss
# --------------------------------------------------------------------------------------------
def spherical_dist(x: Tensor, y: Tensor) -> Tensor:
    """Squared great-circle distance / 2 between all pairs: ``[N, D] x [M, D] -> [N, M]``.

    ``2 * arcsin(|x_hat - y_hat| / 2)^2`` equals ``theta^2 / 2`` with theta the angle.
    """
    x_hat = F.normalize(x.unsqueeze(1), dim=2)  # [N, 1, D]
    y_hat = F.normalize(y.unsqueeze(0), dim=2)  # [1, M, D]
    chord = (x_hat - y_hat).norm(dim=2)  # [N, M]
    return chord.div(2).arcsin().pow(2).mul(2)


class PromptLoss(nn.Module):
    """Loss pulling the cutout embeddings toward ``embed`` (or pushing, with a negative weight).

    Forward value ``weight * mean(d)``; a pair contributes gradient only while its signed
    distance ``d * sign(weight)`` is above ``stop``.
    """

    def __init__(self, embed: Tensor, weight: float = 1.0, stop: float = float("-inf")) -> None:
        super().__init__()
        if embed.dim() != 2:
            raise ValueError(f"PromptLoss: embed must be [M, D], got shape {tuple(embed.shape)}")
        if not math.isfinite(float(weight)):
            raise ValueError(f"PromptLoss: weight must be finite, got {weight}")
        self.register_buffer("embed", embed.detach())
        self.register_buffer("weight", torch.as_tensor(float(weight)))
        self.register_buffer("stop", torch.as_tensor(float(stop)))

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - torch naming
        # 1. All-pairs spherical distances [N, M].
        dists = spherical_dist(input, self.embed)
        # 2. Sign by the weight, so "closer" always means "smaller signed distance".
        signed = dists * self.weight.sign()
        # 3. Stop acts on the gradient only; value is |w| * mean(signed) = w * mean(d).
        gated = replace_grad(signed, torch.maximum(signed, self.stop))
        return self.weight.abs() * gated.mean()
