"""VQGAN: a convolutional autoencoder with a vector-quantized bottleneck.

Paper: Esser, Rombach, Ommer, "Taming Transformers for High-Resolution Image
Synthesis" (2021). Module names and state_dict keys match CompVis
taming-transformers (`taming/models/vqgan.py` VQModel,
`taming/modules/diffusionmodules/model.py`, `taming/modules/vqvae/quantize.py`
VectorQuantizer2, and GumbelVQ's GumbelQuantize), so the original `last.ckpt` +
`model.yaml` files (ImageNet f16 1024 and 16384, OpenImages Gumbel f8 8192) load into
it strictly (`pipelines/models/vqgan_files.py`), without the `taming` or Lightning packages. Written from the notes
in shared/reference/taming_vqgan.md; no upstream code is reproduced.

The same class is Atelier's built-in shapes tokenizer: it is trained by
`lab/train/vqgan.py` and saved as `config.json` + `model.safetensors`.

Notation: x is an image in [-1, 1] (B, 3, H, W); h the pre-quantization latent
(B, embed_dim, H/f, W/f); z_q its quantized value; idx the code indices.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Building blocks (taming's diffusionmodules/model.py, without timestep input)
# ---------------------------------------------------------------------------


def Normalize(channels: int) -> nn.GroupNorm:
    # taming uses 32 groups everywhere, so every channel count is a multiple of 32
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # a 1x1 shortcut only where the width changes (taming's `nin_shortcut`)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, scaled by 1/sqrt(C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).permute(0, 2, 1)  # (B, N, C), N = H*W in row-major order
        k = self.k(h).reshape(B, C, H * W)                    # (B, C, N)
        v = self.v(h).reshape(B, C, H * W)                    # (B, C, N)
        attn = torch.softmax(torch.bmm(q, k) * C ** -0.5, dim=2)  # (B, N_query, N_key)
        out = torch.bmm(v, attn.permute(0, 2, 1)).reshape(B, C, H, W)  # out[c, i] = sum_j v[c, j] attn[i, j]
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        # asymmetric zero pad (right and bottom only), as taming does
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block.{j}`, optional `attn.{j}`, optional resampler."""

    def __init__(self, blocks, attns, resample_name=None, resample=None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample_name is not None:
            setattr(self, resample_name, resample)

    def forward(self, h):
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclass
class VQGANConfig:
    """The `model.params` of a taming model.yaml (loss settings dropped)."""

    embed_dim: int = 256          # codebook vector width
    n_embed: int = 1024           # codebook size
    z_channels: int = 256
    resolution: int = 256         # attention placement follows this, not the input size
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    double_z: bool = False
    quantizer: str = "vq"         # "vq" (VQModel) or "gumbel" (GumbelVQ)
    extra: dict = field(default_factory=dict)  # provenance (training command, metrics); not architecture

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        for c in [self.ch * m for m in self.ch_mult]:
            if c % 32:
                raise ValueError(f"every channel count must be a multiple of 32 (GroupNorm(32)); got {c}")
        if self.quantizer not in ("vq", "gumbel"):
            raise ValueError(f"quantizer must be 'vq' or 'gumbel', not {self.quantizer!r}")
        if self.quantizer == "gumbel" and self.embed_dim != self.z_channels:
            # GumbelVQ applies quant_conv (z_channels -> embed_dim) before proj, which reads z_channels
            raise ValueError(f"a GumbelVQ needs embed_dim == z_channels (got {self.embed_dim} and {self.z_channels})")

    @property
    def factor(self) -> int:
        """Downsampling factor f: a W x H image gives a (W/f) x (H/f) token grid."""
        return 2 ** (len(self.ch_mult) - 1)


# ---------------------------------------------------------------------------
# Encoder, decoder, quantizers
# ---------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        L, R = len(cfg.ch_mult), cfg.num_res_blocks
        in_mult = (1,) + cfg.ch_mult
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        levels, res = [], cfg.resolution
        for i in range(L):
            c_in, c_out = cfg.ch * in_mult[i], cfg.ch * cfg.ch_mult[i]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, cfg.dropout) for j in range(R)]
            attns = [AttnBlock(c_out) for _ in range(R)] if res in cfg.attn_resolutions else []
            if i < L - 1:
                levels.append(_Level(blocks, attns, "downsample", Downsample(c_out)))
                res //= 2
            else:
                levels.append(_Level(blocks, attns))
        self.down = nn.ModuleList(levels)
        c_last = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(c_last, cfg.dropout)
        self.norm_out = Normalize(c_last)
        self.conv_out = nn.Conv2d(c_last, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        L, R = len(cfg.ch_mult), cfg.num_res_blocks
        c_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (L - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _Mid(c_in, cfg.dropout)
        # built from the lowest resolution up, stored so that up[i] is level i
        up = [None] * L
        for i in reversed(range(L)):
            c_out = cfg.ch * cfg.ch_mult[i]
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, cfg.dropout) for j in range(R + 1)]
            attns = [AttnBlock(c_out) for _ in range(R + 1)] if res in cfg.attn_resolutions else []
            if i > 0:
                up[i] = _Level(blocks, attns, "upsample", Upsample(c_out))
                res *= 2
            else:
                up[i] = _Level(blocks, attns)
            c_in = c_out
        self.up = nn.ModuleList(up)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # no tanh: outputs may leave [-1, 1]


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantization, VectorQuantizer2 semantics (legacy beta placement)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def nearest(self, h: torch.Tensor) -> torch.Tensor:
        """Code index of every latent vector; h is (B, C, H, W), result (B*H*W,) in (b, h, w) order."""
        h_flat = h.permute(0, 2, 3, 1).reshape(-1, self.embed_dim)  # (N, C)
        e = self.embedding.weight
        # squared distances in the expanded form |h|^2 + |e|^2 - 2 h.e (argmin ties go to the first)
        d = h_flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * h_flat @ e.t()  # (N, n_embed)
        return d.argmin(dim=1)

    def forward(self, h):
        B, C, H, W = h.shape
        idx = self.nearest(h)
        z_q = self.embedding(idx).view(B, H, W, C).permute(0, 3, 1, 2)
        # 1. commitment (weight 1) and codebook (weight beta) terms, as taming's legacy default
        loss = F.mse_loss(z_q.detach(), h) + self.beta * F.mse_loss(z_q, h.detach())
        # 2. straight-through estimator: value of z_q, gradient of h
        z_q = (h + (z_q - h).detach()).contiguous()
        return z_q, loss, idx

    def lookup(self, idx: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """Codebook rows for flat or (B, H, W) indices, as (B, C, H, W); taming's get_codebook_entry."""
        B, H, W = shape
        return self.embedding(idx.reshape(-1)).view(B, H, W, self.embed_dim).permute(0, 3, 1, 2).contiguous()


class GumbelQuantize(nn.Module):
    """taming's GumbelQuantize (the OpenImages f8 8192 `vqgan_gumbel_f8` checkpoint): `proj` turns the latent
    into logits over the codes, `embed` holds the codebook.

    Deliberately deterministic: taming samples gumbel noise even in eval mode, so its GumbelVQ.encode
    differs from call to call; here a code is the argmax of the logits (the noise-free hard sample), so
    an init image always encodes to the same tokens. VQGAN+CLIP never uses `proj` while optimising: it
    snaps z to the nearest `embed` row (`pipelines/vqgan_clip_ops.vector_quantize`), as upstream does.
    """

    def __init__(self, z_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.proj = nn.Conv2d(z_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, h):
        B, C, H, W = h.shape
        idx = self.proj(h).argmax(dim=1).reshape(-1)  # the hard one-hot of eval mode, without gumbel noise
        z_q = self.lookup(idx, (B, H, W))
        return z_q, h.new_zeros(()), idx

    def lookup(self, idx, shape):
        B, H, W = shape
        return self.embed(idx.reshape(-1)).view(B, H, W, self.embed_dim).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------


class VQGAN(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.quantizer == "gumbel":
            self.quantize = GumbelQuantize(config.z_channels, config.n_embed, config.embed_dim)
        else:
            self.quantize = VectorQuantizer(config.n_embed, config.embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.codebook  # (n_embed, embed_dim)

    def check_size(self, height: int, width: int) -> None:
        f = self.factor
        if height % f or width % f or height < f or width < f:
            raise ValueError(
                f"Width and height must be positive multiples of {f} for this VQGAN "
                f"(got {width}x{height}; try {max(f, width // f * f)}x{max(f, height // f * f)})."
            )

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latent h (B, embed_dim, H/f, W/f) of an image in [-1, 1]."""
        assert x.dim() == 4, f"expected (B, C, H, W), got shape {tuple(x.shape)}"
        self.check_size(x.shape[2], x.shape[3])
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor):
        """(z_q, quantization loss, flat indices), like taming's VQModel.encode."""
        return self.quantize(self.encode_latent(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W), roughly in [-1, 1] and not clamped."""
        return self.decoder(self.post_quant_conv(z_q.contiguous()))

    def decode_indices(self, idx: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """Decode code indices (flat or (B, h, w)) to an image; `shape` is (B, h, w)."""
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.n_embed):
            raise ValueError(f"code indices must lie in 0..{self.config.n_embed - 1}")
        return self.decode(self.quantize.lookup(idx, shape))

    def forward(self, x):
        z_q, qloss, idx = self.encode(x)
        return self.decode(z_q), qloss, idx


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in [0, 1]."""
    mse = F.mse_loss(a.clamp(0, 1), b.clamp(0, 1)).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)
