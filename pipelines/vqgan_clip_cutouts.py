"""The cutouts of the VQGAN+CLIP loop: CLIP sees many random crops of the picture, augmented.

Written from the notes on nerdyrodent/VQGAN-CLIP `generate.py` (``shared/reference/vqgan_clip.md``
sections 5, 6 and 8), as `pipelines/vqgan_clip_ops.py` is; the goldens in
``tests/fixtures/vqgan_clip_ops`` cover both. Kept exactly: :func:`resample` (a Lanczos-2
prefilter on shrinking axes, then bicubic ``align_corners=True``) and the cutout methods
``latest`` (default), ``original``, ``updated``, ``nrupdated`` and ``updatedpooling`` with
upstream's kornia augmentation parameters. Changed on purpose: every random draw comes from a
passed ``torch.Generator`` (kornia has none per call, so :class:`MakeCutouts` forks the global
RNG and seeds it from the generator), and a run of ``Af`` / ``Pe`` codes resamples the image
once (:class:`WarpAugment`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.vqgan_clip_ops import clamp_with_grad

__all__ = ["sinc", "lanczos_kernel", "ramp", "resample", "AUGMENT_CODES", "CUT_METHODS", "augment_from_code",
           "add_noise", "MakeCutouts", "WarpAugment"]


# --------------------------------------------------------------------------------------------
# Lanczos resampling
# --------------------------------------------------------------------------------------------
def sinc(x: Tensor) -> Tensor:
    """Normalised sinc, ``sin(pi x) / (pi x)`` with value 1 at 0."""
    return torch.where(x != 0, torch.sin(math.pi * x) / (math.pi * x), x.new_ones([]))


def lanczos_kernel(x: Tensor, a: float) -> Tensor:
    """Lanczos-``a`` window sampled at ``x`` and normalised to sum 1."""
    inside = (x > -a) & (x < a)
    values = torch.where(inside, sinc(x) * sinc(x / a), x.new_zeros([]))
    return values / values.sum()


def ramp(ratio: float, width: float) -> Tensor:
    """Symmetric sample positions ``k * ratio`` for the Lanczos kernel, endpoints dropped.

    ``ramp(0.4, 2)`` gives 9 positions -1.6 ... 1.6.
    """
    # 1. Non-negative positions 0, r, 2r, ... (accumulated by repeated addition).
    n = math.ceil(width / ratio + 1)
    positions: list[float] = []
    current = 0.0
    for _ in range(n):
        positions.append(current)
        current += ratio
    half = torch.tensor(positions)
    # 2. Mirror to negative positions and drop the two outermost samples.
    full = torch.cat([-half[1:].flip(0), half])
    return full[1:-1]


def _lowpass(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """1-D convolution of ``[B, 1, H, W]`` along H (dim=2) or W (dim=3), reflect padded."""
    pad = (kernel.shape[0] - 1) // 2
    if dim == 2:
        x = F.pad(x, (0, 0, pad, pad), mode="reflect")
        return F.conv2d(x, kernel[None, None, :, None])
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    return F.conv2d(x, kernel[None, None, None, :])


def resample(input: Tensor, size: tuple[int, int], align_corners: bool = True) -> Tensor:  # noqa: A002
    """Resize ``[N, C, H, W]`` to ``size``: Lanczos-2 prefilter on shrinking axes, then bicubic."""
    n, c, h, w = input.shape
    out_h, out_w = size
    x = input.reshape(n * c, 1, h, w)
    # 1. Low-pass vertically when the height shrinks.
    if out_h < h:
        kernel = lanczos_kernel(ramp(out_h / h, 2), 2).to(x.device, x.dtype)
        x = _lowpass(x, kernel, dim=2)
    # 2. Low-pass horizontally when the width shrinks.
    if out_w < w:
        kernel = lanczos_kernel(ramp(out_w / w, 2), 2).to(x.device, x.dtype)
        x = _lowpass(x, kernel, dim=3)
    # 3. Bicubic interpolation to the exact size.
    x = x.reshape(n, c, h, w)
    return F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=align_corners)


# --------------------------------------------------------------------------------------------
# Cutouts
# --------------------------------------------------------------------------------------------
AUGMENT_CODES: tuple[str, ...] = ("Ji", "Sh", "Gn", "Pe", "Ro", "Af", "Et", "Ts", "Cr", "Er", "Re")
CUT_METHODS: tuple[str, ...] = ("latest", "original", "updated", "nrupdated", "updatedpooling")
_MAX_CUTN = 256


def _geometric_settings(code: str, method: str) -> dict:
    """Upstream's parameters for ``Af`` and ``Pe`` (reference §8 table; nrupdated uses slightly different ones),
    shared by their kornia modules and :class:`WarpAugment`."""
    nr = method == "nrupdated"
    if code == "Af":
        return {"degrees": 30.0 if nr else 15.0, "translate": 0.1, "shear": 5.0, "p": 0.7}
    return {"distortion_scale": 0.5 if nr else 0.7, "p": 0.7}


def augment_from_code(code: str, cut_size: int, method: str) -> nn.Module:
    """The kornia augmentation for one ``-aug`` code (reference §8 table)."""
    import kornia.augmentation as K

    if code == "Ji":
        return K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7)
    if code == "Sh":
        return K.RandomSharpness(sharpness=0.3, p=0.5)
    if code == "Gn":
        return K.RandomGaussianNoise(mean=0.0, std=1.0, p=0.5)
    if code == "Pe":
        return K.RandomPerspective(**_geometric_settings(code, method))
    if code == "Ro":
        return K.RandomRotation(degrees=15, p=0.7)
    if code == "Af":
        af = _geometric_settings(code, method)
        return K.RandomAffine(
            degrees=af["degrees"], translate=(af["translate"], af["translate"]), shear=af["shear"], p=af["p"],
            padding_mode="zeros", keepdim=True,
        )
    if code == "Et":
        return K.RandomElasticTransform(p=0.7)
    if code == "Ts":
        return K.RandomThinPlateSpline(scale=0.8, same_on_batch=True, p=0.7)
    if code == "Cr":
        return K.RandomCrop(
            size=(cut_size, cut_size), pad_if_needed=True, padding_mode="reflect", p=0.5
        )
    if code == "Er":
        return K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7)
    if code == "Re":
        return K.RandomResizedCrop(
            size=(cut_size, cut_size), scale=(0.1, 1.0), ratio=(0.75, 1.333),
            cropping_mode="resample", p=0.5,
        )
    raise ValueError(f"unknown augmentation code {code!r}; valid codes: {', '.join(AUGMENT_CODES)}")


class WarpAugment(nn.Module):
    """A run of the geometric codes ``Af`` (random affine) and ``Pe`` (random perspective) as one resampling.

    Each code draws what its kornia module (:func:`augment_from_code`) draws, from the same
    :func:`_geometric_settings` and with the same conventions: applied to each image with
    probability p; ``Af`` rotates by U(-degrees, degrees) about the centre, shears along x by
    U(-shear, shear) degrees and translates by up to ``translate`` of each side; ``Pe`` moves each
    corner inwards by U(0, 1) * distortion_scale * half the side on each axis. Each maps pixel coordinates forward by a 3x3 matrix, as kornia's do (a test
    checks the matrices against kornia's ``get_affine_matrix2d`` and ``get_perspective_transform``).

    Where kornia warps the batch once per code, here the matrices are composed and the batch is
    sampled once (bilinear, zeros outside): one interpolation instead of one per code, so the
    result is slightly sharper, and the framework's per-call work is gone. A pixel that an
    intermediate image would not have had (a later code looking outside its input's frame) is
    zeroed by that frame's bilinear edge, as the sequential warps do. On a linear ramp, where
    bilinear interpolation is exact, the two agree wherever no frame edge is involved (test).
    Draws come from ``generator`` (or torch's global RNG without one), in order: per code, the
    applied mask, then its parameters.
    """

    CODES = ("Af", "Pe")

    def __init__(self, codes: Sequence[str], method: str = "latest") -> None:
        super().__init__()
        bad = [c for c in codes if c not in self.CODES]
        if bad:
            raise ValueError(f"WarpAugment takes Af and Pe only, got {', '.join(bad)}")
        self.codes = tuple(codes)
        self.settings = {c: _geometric_settings(c, method) for c in self.CODES}
        self._grid: dict = {}

    @staticmethod
    def affine_matrix(angle: Tensor, translate: Tensor, shear_x: Tensor, h: int, w: int) -> Tensor:
        """kornia's ``get_affine_matrix2d`` at scale 1, shear_y 0: rotation by ``-angle`` (degrees) about the
        centre ((w-1)/2, (h-1)/2), then the translation (B, 2); the x shear (radians) about the centre first."""
        n = angle.shape[0]
        cx, cy = (w - 1) / 2, (h - 1) / 2
        a = torch.deg2rad(-angle)
        cos, sin = torch.cos(a), torch.sin(a)
        rot = torch.zeros(n, 3, 3, dtype=angle.dtype, device=angle.device)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, sin, -sin, cos
        rot[:, 0, 2] = (1 - cos) * cx - sin * cy + translate[:, 0]
        rot[:, 1, 2] = sin * cx + (1 - cos) * cy + translate[:, 1]
        rot[:, 2, 2] = 1
        shear = torch.eye(3, dtype=angle.dtype, device=angle.device).repeat(n, 1, 1)
        b = -torch.tan(shear_x)
        shear[:, 0, 1], shear[:, 0, 2] = b, -b * cy
        return rot @ shear

    @staticmethod
    def perspective_matrix(start: Tensor, end: Tensor) -> Tensor:
        """The homography (B, 3, 3) taking the 4 ``start`` points (B, 4, 2) to ``end`` (direct linear transform)."""
        x, y = start[..., 0].double(), start[..., 1].double()
        u, v = end[..., 0].double(), end[..., 1].double()
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
        rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
        A = torch.cat([rows_u, rows_v], 1)                  # (B, 8, 8)
        h = torch.linalg.solve(A, torch.cat([u, v], 1))     # (B, 8)
        return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3).to(start.dtype)

    def matrices(self, n: int, h: int, w: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """One forward matrix (n, 3, 3) per code, identity where the code is not applied."""
        dev = generator.device if generator is not None else torch.device("cpu")

        def rand(*shape):
            return torch.rand(shape, generator=generator, device=dev)

        out = []
        eye = torch.eye(3, device=dev).expand(n, 3, 3)
        for code in self.codes:
            st = self.settings[code]
            applied = rand(n) < st["p"]
            if code == "Af":
                angle = (rand(n) * 2 - 1) * st["degrees"]
                translate = (rand(n, 2) * 2 - 1) * st["translate"] * torch.tensor([float(w), float(h)], device=dev)
                shear_x = torch.deg2rad((rand(n) * 2 - 1) * st["shear"])
                m = self.affine_matrix(angle, translate, shear_x, h, w)
            else:
                start = torch.tensor([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]],
                                     device=dev).expand(n, 4, 2)
                inwards = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], device=dev)
                factor = st["distortion_scale"] * torch.tensor([w / 2, h / 2], device=dev)
                m = self.perspective_matrix(start, start + factor * rand(n, 4, 2) * inwards)
            out.append(torch.where(applied[:, None, None], m, eye))
        return out

    def _pixels(self, h: int, w: int, device, dtype) -> Tensor:
        key = (h, w, device, dtype)
        if key not in self._grid:
            ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
            self._grid[key] = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3).to(device)  # (h*w, 3)
        return self._grid[key]

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, _, h, w = batch.shape
        mats = [m.to(batch.device, torch.float32) for m in self.matrices(n, h, w, generator)]
        pix = self._pixels(h, w, batch.device, torch.float32)
        inv = torch.eye(3, device=batch.device).expand(n, 3, 3)
        mask = None
        size = torch.tensor([w, h], dtype=torch.float32, device=batch.device)

        def read_at(inv):   # the pixel (x, y) that each output pixel reads from this matrix's input, (n, h*w, 2)
            q = pix @ inv.transpose(1, 2)
            return q[..., :2] / q[..., 2:]

        for k in range(len(mats) - 1, -1, -1):       # back from the last code: where each one's input is read
            inv = torch.linalg.inv(mats[k]) @ inv
            if k > 0:   # an intermediate image: zero outside its frame, with bilinear's one-pixel edge
                q = read_at(inv)
                edge = torch.minimum(q + 1, size - q).clamp(0, 1)
                mask = edge[..., 0] * edge[..., 1] * (1 if mask is None else mask)
        grid = (2 * read_at(inv) + 1) / size - 1     # pixel centres, for align_corners=False
        out = F.grid_sample(batch, grid.view(n, h, w, 2).to(batch.dtype), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        if mask is not None:
            out = out * mask.view(n, 1, h, w).to(out.dtype)
        return out


def _fixed_augments(method: str) -> list[nn.Module]:
    """The hard-wired augmentation lists of ``updated`` and ``updatedpooling``."""
    import kornia.augmentation as K

    if method == "updated":
        return [
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(hue=0.01, saturation=0.01, p=0.7),
            K.RandomSharpness(sharpness=0.3, p=0.4),
            K.RandomAffine(degrees=30, translate=(0.1, 0.1), p=0.8, padding_mode="border"),
            K.RandomPerspective(distortion_scale=0.2, p=0.4),
        ]
    return [  # updatedpooling
        K.RandomAffine(degrees=15, translate=(0.1, 0.1), p=0.7, padding_mode="border"),
        K.RandomPerspective(distortion_scale=0.7, p=0.7),
        K.ColorJitter(hue=0.1, saturation=0.1, p=0.7),
        K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7),
    ]


def _normalise_codes(augments: Sequence[str] | str) -> list[str]:
    """Accept ``['Af', 'Pe']`` or ``'Af,Pe'`` / ``'Af Pe'``."""
    if isinstance(augments, str):
        return [a for a in augments.replace(",", " ").split() if a]
    return [str(a).strip() for a in augments]


def add_noise(batch: Tensor, noise_fac: float, generator: torch.Generator | None = None) -> Tensor:
    """The cutouts' noise on any batch (N, 3, H, W): image k gets ``s_k * N(0, 1)`` with ``s_k ~ U(0, noise_fac)``,
    drawn (the strengths, then the noise) from ``generator`` on its own device; no clamp follows."""
    if noise_fac == 0:
        return batch
    rng_device = generator.device if generator is not None else batch.device
    facs = torch.rand([len(batch), 1, 1, 1], generator=generator, device=rng_device, dtype=batch.dtype)
    noise = torch.randn(batch.shape, generator=generator, device=rng_device, dtype=batch.dtype)
    return batch + (facs * noise_fac * noise).to(batch.device)


class MakeCutouts(nn.Module):
    """Turn the generated image into ``cutn`` CLIP-sized views (reference §8).

    Methods:
        ``latest`` (default): the whole image pooled to ``cut_size`` by
        (adaptive avg + adaptive max) / 2, repeated ``cutn`` times, then the ``augments`` and
        per-cutout noise. ``cut_pow`` is unused.
        ``original``: random square crops, size ``int(u**cut_pow * (max - min) + min)``,
        resampled, ``clamp_with_grad`` to [0, 1]; no augmentation, no noise.
        ``updated``: random crops + upstream's fixed augmentation list + noise.
        ``nrupdated``: random crops + ``augments`` (Pe 0.5, Af 30 degrees) + noise.
        ``updatedpooling``: pooled like ``latest`` + a fixed augmentation list + noise.

    Noise: cutout k gets ``s_k * N(0, 1)`` with ``s_k ~ U(0, noise_fac)``; no clamp follows.

    Augmentations: each run of the geometric codes ``Af`` / ``Pe`` is one :class:`WarpAugment`
    (one resampling for the run, kornia's parameters and conventions); the other codes are
    kornia's modules, as upstream.

    Randomness: with a ``generator``, draws happen in this order: crop sizes/offsets, then per
    augmentation its own draws (a WarpAugment) or one seed (a kornia module, run inside a forked,
    re-seeded global RNG because kornia has no generator argument), then the noise. Without
    one, torch's global RNG is used, as upstream does.
    """

    def __init__(
        self,
        cut_size: int,
        cutn: int,
        cut_pow: float = 1.0,
        method: str = "latest",
        augments: Sequence[str] = ("Af", "Pe", "Ji", "Er"),
        noise_fac: float = 0.1,
    ) -> None:
        super().__init__()
        # 1. Validate.
        if method not in CUT_METHODS:
            raise ValueError(f"unknown cut method {method!r}; choose one of: {', '.join(CUT_METHODS)}")
        if int(cut_size) != cut_size or cut_size < 1:
            raise ValueError(f"cut_size must be a positive whole number, got {cut_size}")
        if int(cutn) != cutn or not 1 <= cutn <= _MAX_CUTN:
            raise ValueError(f"cutn must be a whole number from 1 to {_MAX_CUTN}, got {cutn}")
        if not (math.isfinite(cut_pow) and cut_pow > 0):
            raise ValueError(f"cut_pow must be a positive number, got {cut_pow}")
        if not (math.isfinite(noise_fac) and noise_fac >= 0):
            raise ValueError(f"noise_fac must be a number >= 0, got {noise_fac}")
        codes = _normalise_codes(augments)
        unknown = [c for c in codes if c not in AUGMENT_CODES]
        if unknown:
            raise ValueError(
                f"unknown augmentation code(s) {', '.join(map(repr, unknown))}; "
                f"valid codes: {', '.join(AUGMENT_CODES)}"
            )
        self.cut_size = int(cut_size)
        self.cutn = int(cutn)
        self.cut_pow = float(cut_pow)
        self.method = method
        self.noise_fac = float(noise_fac)
        self.augment_codes = tuple(codes)
        # 2. Build the augmentation chain for this method (kornia imported lazily).
        if method == "original":
            augs: list[nn.Module] = []
        elif method in ("updated", "updatedpooling"):
            augs = _fixed_augments(method)
        else:  # each run of geometric codes (Af, Pe) is one WarpAugment, the other codes kornia's modules
            augs = []
            for c in codes:
                if c in WarpAugment.CODES and augs and isinstance(augs[-1], WarpAugment):
                    augs[-1] = WarpAugment(augs[-1].codes + (c,), method)
                elif c in WarpAugment.CODES:
                    augs.append(WarpAugment((c,), method))
                else:
                    augs.append(augment_from_code(c, self.cut_size, method))
        self.augs = nn.Sequential(*augs)

    # -- pieces of forward ---------------------------------------------------------------
    def _pooled(self, image: Tensor) -> Tensor:
        size = (self.cut_size, self.cut_size)
        if tuple(image.shape[-2:]) == size:  # both pools are the identity, and (x + x) / 2 == x exactly
            pooled = image
        else:
            pooled = (F.adaptive_avg_pool2d(image, size) + F.adaptive_max_pool2d(image, size)) / 2
        return pooled.expand(self.cutn, -1, -1, -1).contiguous()

    def _random_crops(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        side_y, side_x = image.shape[2], image.shape[3]
        max_size = min(side_x, side_y)
        min_size = min(side_x, side_y, self.cut_size)
        rng_device = generator.device if generator is not None else torch.device("cpu")
        cutouts = []
        for _ in range(self.cutn):
            u = torch.rand([], generator=generator, device=rng_device)
            size = int(u**self.cut_pow * (max_size - min_size) + min_size)
            off_x = int(torch.randint(0, side_x - size + 1, (), generator=generator, device=rng_device))
            off_y = int(torch.randint(0, side_y - size + 1, (), generator=generator, device=rng_device))
            crop = image[:, :, off_y : off_y + size, off_x : off_x + size]
            cutouts.append(resample(crop, (self.cut_size, self.cut_size)))
        return torch.cat(cutouts, dim=0)

    def augment_batch(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """This module's augmentations alone, on any batch (N, 3, H, W): each image gets its own draw."""
        return self._augment(batch, generator)

    def _augment(self, batch: Tensor, generator: torch.Generator | None) -> Tensor:
        if len(self.augs) == 0:
            return batch
        if generator is None:
            return self.augs(batch)
        # A WarpAugment draws from the generator itself. kornia samples from torch's global RNG:
        # for its modules, fork it, seed it from one draw of our generator, run, and let fork_rng
        # restore the caller's global state afterwards.
        devices = [batch.device] if batch.device.type == "cuda" else []
        for aug in self.augs:
            if isinstance(aug, WarpAugment):
                batch = aug(batch, generator)
                continue
            seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
            with torch.random.fork_rng(devices=devices):
                torch.random.default_generator.manual_seed(seed)
                if devices:
                    with torch.cuda.device(batch.device):
                        torch.cuda.manual_seed(seed)
                batch = aug(batch)
        return batch

    def _add_noise(self, batch: Tensor, generator: torch.Generator | None) -> Tensor:
        return add_noise(batch, self.noise_fac, generator)

    def forward(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[1, 3, H, W]`` image in [0, 1] -> ``[cutn, 3, cut_size, cut_size]`` (differentiable)."""
        # 1. Check the input.
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"MakeCutouts expects an image of shape [1, 3, H, W], got {tuple(image.shape)}")
        # 2. Pooled whole image or random crops.
        if self.method in ("latest", "updatedpooling"):
            batch = self._pooled(image)
        else:
            batch = self._random_crops(image, generator)
        # 3. "original": clamp, no augmentation or noise.
        if self.method == "original":
            return clamp_with_grad(batch, 0.0, 1.0)
        # 4. Augmentations, then per-cutout noise.
        batch = self._augment(batch, generator)
        return self._add_noise(batch, generator)
