"""Tests for pipelines.vqgan_clip_ops against the nerdyrodent/VQGAN-CLIP goldens, plus cutouts.

The synth goldens (`synth_out`, `synth_grad_z`) need the VQGAN model and are checked by
`test_synth_matches_golden`, which lives with the model code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.vqgan_clip_cutouts import AUGMENT_CODES, CUT_METHODS, MakeCutouts, lanczos_kernel, ramp, resample
from pipelines.vqgan_clip_ops import (
    PromptLoss,
    clamp_with_grad,
    codebook_bounds,
    init_z_from_tokens,
    random_init_tokens,
    replace_grad,
    spherical_dist,
    vector_quantize,
)

FIXTURES = Path(__file__).parent / "fixtures"
OPS_DIR = FIXTURES / "vqgan_clip_ops"
TINY_DIR = FIXTURES / "taming_vqgan_tiny"
ATOL = 1e-6


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(OPS_DIR / "golden_ops.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((OPS_DIR / "meta.json").read_text())


@pytest.fixture(scope="module")
def codebook() -> torch.Tensor:
    state = torch.load(TINY_DIR / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return state["quantize.embedding.weight"]


@pytest.fixture(scope="module")
def taming_golden() -> dict[str, torch.Tensor]:
    return load_file(str(TINY_DIR / "golden.safetensors"))


# ---------------------------------------------------------------------------------------------
# Prompt loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", ["w1_nostop", "wneg0p5_nostop", "w1_stop1p2", "w2_stop1p2"])
def test_prompt_loss_value_and_grad_match_golden(golden, meta, cfg):
    weight, stop = meta["prompt_cfgs"][cfg]
    loss_fn = PromptLoss(golden["prompt_embed"], float(weight), float(stop))
    x = golden["prompt_input"].clone().requires_grad_(True)
    value = loss_fn(x)
    value.backward()
    assert value.shape == ()
    torch.testing.assert_close(value, golden[f"prompt_{cfg}_value"], atol=ATOL, rtol=0)
    assert value.item() == pytest.approx(meta["scalars"][f"prompt_{cfg}_value"], abs=ATOL)
    torch.testing.assert_close(x.grad, golden[f"prompt_{cfg}_grad"], atol=ATOL, rtol=0)


def test_prompt_stop_zeroes_rows_below_stop(golden):
    dists = golden["prompt_raw_dists"]
    x = golden["prompt_input"].clone().requires_grad_(True)
    PromptLoss(golden["prompt_embed"], 1.0, 1.2)(x).backward()
    below = dists[:, 0] < 1.2
    assert below.any() and (x.grad[below] == 0).all()
    assert (x.grad[~below].abs().sum(dim=1) > 0).all()


def test_spherical_dist_matches_golden_and_geometry(golden):
    d = spherical_dist(golden["prompt_input"], golden["prompt_embed"])
    torch.testing.assert_close(d, golden["prompt_raw_dists"], atol=ATOL, rtol=0)
    e = torch.eye(3)
    pairs = spherical_dist(e, e)
    assert pairs.shape == (3, 3)
    torch.testing.assert_close(pairs.diagonal(), torch.zeros(3), atol=ATOL, rtol=0)
    assert pairs[0, 1].item() == pytest.approx(math.pi**2 / 8, abs=1e-5)  # orthogonal
    assert spherical_dist(e[:1], -e[:1]).item() == pytest.approx(math.pi**2 / 2, abs=1e-4)


def test_prompt_loss_shapes_and_validation():
    loss = PromptLoss(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), -2.0, -1.0)
    out = loss(torch.randn(3, 8, generator=torch.Generator().manual_seed(1)))
    assert out.shape == () and out.item() < 0
    with pytest.raises(ValueError):
        PromptLoss(torch.randn(8), 1.0)
    with pytest.raises(ValueError):
        PromptLoss(torch.randn(1, 8), float("nan"))


# ---------------------------------------------------------------------------------------------
# Gradient tricks
# ---------------------------------------------------------------------------------------------
def test_clamp_with_grad_matches_golden(golden):
    x = golden["clamp_in"].clone().requires_grad_(True)
    out = clamp_with_grad(x, 0.0, 1.0)
    out.backward(golden["clamp_grad_out"])
    assert torch.equal(out, golden["clamp_out"])
    assert torch.equal(x.grad, golden["clamp_grad_in"])


def test_replace_grad_value_and_broadcast_backward():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = torch.tensor([10.0, 20.0], requires_grad=True)  # broadcast against a
    out = replace_grad(a * 2, b)
    assert torch.equal(out, a.detach() * 2)
    out.backward(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert a.grad is None
    assert torch.equal(b.grad, torch.tensor([4.0, 6.0]))  # summed back to b's shape


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------
def test_lanczos_kernel_matches_golden(golden):
    kernel = lanczos_kernel(ramp(0.4, 2), 2)
    assert kernel.shape == (9,)
    torch.testing.assert_close(kernel, golden["lanczos_ramp_ratio0p4"], atol=ATOL, rtol=0)
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("size", [(12, 12), (12, 20)])
def test_resample_matches_golden(golden, size):
    out = resample(golden["resample_in"], size)
    torch.testing.assert_close(out, golden[f"resample_out_{size[0]}x{size[1]}"], atol=ATOL, rtol=0)


def test_resample_upsamples_without_prefilter():
    x = torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    out = resample(x, (10, 12))
    expected = torch.nn.functional.interpolate(x, (10, 12), mode="bicubic", align_corners=True)
    assert torch.equal(out, expected)


# ---------------------------------------------------------------------------------------------
# Codebook helpers
# ---------------------------------------------------------------------------------------------
def test_vector_quantize_bit_identical_with_identity_backward(golden, taming_golden, codebook):
    z = taming_golden["h"].clone().requires_grad_(True)
    out = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
    assert torch.equal(out, golden["vq_out"])
    assert torch.equal(out, taming_golden["z_q_from_code"])
    w = torch.linspace(-1, 1, 4096).reshape(2, 8, 16, 16)
    (out * w).sum().backward()
    assert torch.equal(z.grad, w)


def test_vector_quantize_rejects_dim_mismatch(codebook):
    with pytest.raises(ValueError):
        vector_quantize(torch.zeros(1, 4, 4, 3), codebook)


def test_codebook_bounds_match_golden(golden, codebook):
    z_min, z_max = codebook_bounds(codebook)
    assert z_min.shape == z_max.shape == (1, 8, 1, 1)
    assert torch.equal(z_min, golden["z_min"])
    assert torch.equal(z_max, golden["z_max"])


def test_random_init_tokens_seed5_matches_golden_and_global_stream(golden):
    tokens = random_init_tokens(256, 64, torch.Generator().manual_seed(5))
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, golden["init_tokens_seed5"])
    # Same stream as upstream's global draw after torch.manual_seed(5) (global state restored).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        assert torch.equal(torch.randint(64, [256]), tokens)


def test_random_init_tokens_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    random_init_tokens(16, 8, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(ValueError):
        random_init_tokens(0, 8, torch.Generator())


def test_init_z_from_tokens_layout(golden, codebook):
    tokens = golden["init_tokens_seed5"]
    z = init_z_from_tokens(tokens, codebook, 16, 16)
    assert z.shape == (1, 8, 16, 16) and z.is_contiguous()
    # Upstream: one-hot @ codebook -> view [1, toksY, toksX, C] -> channels first.
    one_hot = torch.nn.functional.one_hot(tokens, 64).to(codebook.dtype)
    expected = (one_hot @ codebook).view(1, 16, 16, 8).permute(0, 3, 1, 2)
    assert torch.equal(z, expected)
    assert torch.equal(z[0, :, 2, 5], codebook[tokens[2 * 16 + 5]])
    with pytest.raises(ValueError):
        init_z_from_tokens(tokens, codebook, 16, 15)
    with pytest.raises(ValueError):
        init_z_from_tokens(torch.full((4,), 64), codebook, 2, 2)


# ---------------------------------------------------------------------------------------------
# Cutouts
# ---------------------------------------------------------------------------------------------
CUT, N = 24, 4


def _image(seed: int = 0, h: int = 40, w: int = 48) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("method", CUT_METHODS)
def test_cutouts_shape_grad_and_reproducibility(method):
    mc = MakeCutouts(CUT, N, method=method)
    x = _image().requires_grad_(True)
    out = mc(x, _gen(1))
    assert out.shape == (N, 3, CUT, CUT)
    assert torch.isfinite(out).all()
    # Same seed -> identical, whatever the global RNG does in between; other seed -> different.
    torch.manual_seed(123)
    again = mc(x, _gen(1))
    torch.manual_seed(456)
    assert torch.equal(out, again)
    assert not torch.equal(out, mc(x, _gen(2)))
    # Differentiable w.r.t. the image.
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_cutouts_with_generator_leave_global_rng_alone():
    mc = MakeCutouts(CUT, N, method="nrupdated", augments=("Af", "Pe", "Ji", "Er"))
    state = torch.random.get_rng_state()
    mc(_image(), _gen(3))
    assert torch.equal(state, torch.random.get_rng_state())


def test_cutouts_all_augment_codes_run_and_are_seeded():
    mc = MakeCutouts(CUT, N, method="latest", augments=AUGMENT_CODES, noise_fac=0.0)
    x = _image().requires_grad_(True)
    out = mc(x, _gen(7))
    assert out.shape == (N, 3, CUT, CUT)
    assert torch.equal(out, mc(x, _gen(7)))
    # With noise off, differences between seeds come from the (seeded) augmentations alone.
    assert not torch.equal(out, mc(x, _gen(8)))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_latest_without_augments_or_noise_is_the_pooled_image():
    x = _image()
    out = MakeCutouts(CUT, N, augments=(), noise_fac=0.0)(x, _gen(0))
    pool = (
        torch.nn.functional.adaptive_avg_pool2d(x, CUT) + torch.nn.functional.adaptive_max_pool2d(x, CUT)
    ) / 2
    assert torch.equal(out, pool.expand(N, -1, -1, -1))


def test_original_is_clamped_and_small_images_upsample():
    out = MakeCutouts(CUT, N, cut_pow=0.5, method="original")(_image(h=16, w=20), _gen(0))
    assert out.shape == (N, 3, CUT, CUT)
    assert out.min() >= 0 and out.max() <= 1


def test_cutouts_without_generator_use_global_rng():
    mc = MakeCutouts(CUT, N, method="updated")
    torch.manual_seed(11)
    a = mc(_image())
    torch.manual_seed(11)
    assert torch.equal(a, mc(_image()))


def test_augments_accept_comma_string():
    assert MakeCutouts(CUT, 1, augments="Af, Pe").augment_codes == ("Af", "Pe")


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"cutn": 0}, ["cutn", "256"]),
        ({"cutn": 257}, ["cutn", "256"]),
        ({"cut_pow": 0.0}, ["cut_pow"]),
        ({"cut_pow": float("nan")}, ["cut_pow"]),
        ({"method": "fancy"}, ["fancy", "latest", "original", "nrupdated"]),
        ({"augments": ("Af", "Zz")}, ["'Zz'", "Ji", "Re"]),
        ({"noise_fac": -0.1}, ["noise_fac"]),
        ({"cut_size": 0}, ["cut_size"]),
    ],
)
def test_cutouts_bad_arguments(kwargs, words):
    args = {"cut_size": CUT, "cutn": N, **kwargs}
    with pytest.raises(ValueError) as info:
        MakeCutouts(**args)
    for word in words:
        assert word in str(info.value)


def test_cutouts_bad_image_shape():
    with pytest.raises(ValueError, match=r"\[1, 3, H, W\]"):
        MakeCutouts(CUT, N)(torch.rand(2, 3, 32, 32))


# --------------------------------------------------------------------------------------------
# WarpAugment: Af / Pe as one resampling
# --------------------------------------------------------------------------------------------


def test_warp_matrices_are_kornias():
    """The affine and perspective matrices follow kornia's conventions exactly (its functions as the reference)."""
    from kornia.geometry.transform import get_affine_matrix2d, get_perspective_transform

    from pipelines.vqgan_clip_cutouts import WarpAugment

    g = _gen(0)
    n, h, w = 6, 20, 28
    angle = torch.rand(n, generator=g) * 60 - 30
    translate = torch.rand(n, 2, generator=g) * 6 - 3
    shear_x = torch.rand(n, generator=g) * 0.2 - 0.1
    center = torch.tensor([[w / 2 - 0.5, h / 2 - 0.5]]).expand(n, 2)
    ref = get_affine_matrix2d(translate, center, torch.ones(n, 2), angle, shear_x, torch.zeros(n))
    assert torch.allclose(WarpAugment.affine_matrix(angle, translate, shear_x, h, w), ref, atol=1e-5)
    start = torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]]).expand(n, 4, 2)
    end = start + torch.rand(n, 4, 2, generator=g) * 5 * torch.tensor([[1.0, 1], [-1, 1], [-1, -1], [1, -1]])
    assert torch.allclose(WarpAugment.perspective_matrix(start, end), get_perspective_transform(start, end), atol=1e-4)


def test_warp_is_the_sequential_kornia_warps_resampled_once():
    """On a linear ramp (where bilinear interpolation is exact) the one resampling equals kornia's warp per code,
    wherever no frame edge is involved; pixels of a code that looks outside its input are zero in both."""
    from kornia.geometry.transform import warp_perspective

    from pipelines.vqgan_clip_cutouts import WarpAugment

    n, h, w = 32, 24, 24
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ramp = torch.stack([0.03 * xs + 0.1, 0.02 * ys + 0.2, 0.01 * (xs + ys) + 0.05])[None].expand(n, 3, h, w)
    aug = WarpAugment(("Af", "Pe"))
    mats = aug.matrices(n, h, w, _gen(5))
    ours = aug(ramp, _gen(5))
    seq = ramp
    for m in mats:
        seq = warp_perspective(seq, m, (h, w), mode="bilinear", padding_mode="zeros", align_corners=False)
    # where each code reads its input strictly inside the frame, away from the bilinear edge (the second code's
    # 4 neighbours, up to ~1.5 px away once mapped back through the first, must read the image itself)
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
    inv2 = torch.linalg.inv(mats[1])
    inside = torch.ones(n, h * w, dtype=torch.bool)
    for inv, margin in ((inv2, 0.0), (torch.linalg.inv(mats[0]) @ inv2, 1.5)):
        q = pix @ inv.transpose(1, 2)
        q = q[..., :2] / q[..., 2:]
        inside &= ((q >= margin) & (q <= torch.tensor([w - 1.0, h - 1.0]) - margin)).all(-1)
    inside = inside.view(n, 1, h, w).expand_as(ours)
    assert inside.float().mean() > 0.25
    assert torch.allclose(ours[inside], seq[inside], atol=1e-4)
    far = (seq == 0).all(1, keepdim=True).expand_as(ours)      # outside every frame in kornia's result
    assert far.any() and (ours[far] == 0).all()


def test_warp_draws_kornias_distribution_and_keeps_the_rest_exact():
    from pipelines.vqgan_clip_cutouts import WarpAugment

    n, h, w = 4000, 16, 16
    af, pe = WarpAugment(("Af",)).matrices(n, h, w, _gen(1))[0], WarpAugment(("Pe",)).matrices(n, h, w, _gen(2))[0]
    eye = torch.eye(3)
    for m in (af, pe):
        applied = ~torch.isclose(m, eye, atol=1e-7).flatten(1).all(1)
        assert abs(applied.float().mean() - 0.7) < 0.03          # p = 0.7, as kornia's modules
    angle = torch.rad2deg(torch.atan2(af[:, 1, 0], af[:, 0, 0]))  # shear leaves column 0 alone
    assert angle.abs().max() <= 15 + 1e-4 and angle.abs().max() > 14
    # the corners of a perspective stay within 0.7 * half a side of where they were, moving inwards
    corner = pe @ torch.tensor([0.0, 0.0, 1.0])
    corner = corner[:, :2] / corner[:, 2:]
    assert (corner >= -1e-4).all() and (corner <= 0.7 * 8 + 1e-4).all() and corner.max() > 5
    x = _image(h=h, w=w).expand(5, 3, h, w)
    none = WarpAugment(("Af", "Pe"))
    none.settings = {code: {**st, "p": 0.0} for code, st in none.settings.items()}
    assert torch.equal(none(x, _gen(0)), x)                      # not applied: the image, exactly
    assert torch.equal(WarpAugment(("Af", "Pe"))(x, _gen(3)), WarpAugment(("Af", "Pe"))(x, _gen(3)))


def test_cutouts_group_each_run_of_geometric_codes():
    from pipelines.vqgan_clip_cutouts import WarpAugment

    mc = MakeCutouts(CUT, N, augments=("Af", "Pe", "Ji", "Pe", "Er"))
    kinds = [type(a).__name__ for a in mc.augs]
    assert kinds == ["WarpAugment", "ColorJitter", "WarpAugment", "RandomErasing"]
    assert mc.augs[0].codes == ("Af", "Pe") and isinstance(mc.augs[2], WarpAugment) and mc.augs[2].codes == ("Pe",)
