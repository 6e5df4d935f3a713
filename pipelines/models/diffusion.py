"""Denoisers for the diffusion engine: a latent text-to-image model and hub pixel models.

Papers: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models" (2020);
Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models"
(2022), whose recipe this follows at toy scale; Ho & Salimans, "Classifier-Free
Diffusion Guidance" (2022). The network is diffusers' `UNet2DConditionModel`
(ResNet blocks, self- and cross-attention), not written again here.

`LatentDiffusion` (Atelier's built-in shapes model) denoises the built-in VQGAN's
pre-quantisation latents: a 32 px image is an 8x8 grid of 16-channel vectors, 48x
fewer numbers than its pixels, so each training image costs a fraction of a
pixel-space UNet's compute. The latents are shifted and scaled per channel to zero
mean and unit variance (statistics measured once on training scenes and kept in the
config). Text enters through cross-attention on the built-in CLIP's text-encoder
hidden states, always padded to the full context length so that a caption has one
encoding whatever the batch. `text_inputs` says which states: the last layer's
("last"), and optionally, side by side in each token's vector, the token embeddings
that enter the encoder ("embed"). The shapes CLIP's layers all but erase the shape
word (captions differing only in it have last-layer states at cosine 0.975 after
that word, against 0.44 for a colour word), while its embeddings still tell the six
shapes apart (cosine 0.62). It is saved as `config.json` + `model.safetensors`
(float16 on disk, float32 in memory), trained by `lab/train/diffusion.py`.

`PixelDiffusion` wraps an unconditional diffusers checkpoint (`UNet2DModel` plus a
scheduler config, the layout of `google/ddpm-cifar10-32`) behind the same interface:

    model(x_t, t, text_emb) -> eps (or v)        # (B, C, H, W)
    model.conditional, model.sample_shape, model.scheduler_config, model.latent

Notation: x is an image in [-1, 1]; h the VQGAN's pre-quantisation latent; z = (h -
mean) / std the normalised latent that diffusion runs on; z_t its noised version at
timestep t; text_emb the CLIP hidden states (B, T, D).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


TEXT_INPUTS = ("last", "embed")   # CLIP text-encoder states a UNet can read (see encode_text)


def parse_text_inputs(value: str) -> tuple[str, ...]:
    """'last,embed' -> ('last', 'embed'): the trainers' --text-inputs."""
    import argparse

    inputs = tuple(v.strip() for v in value.split(",") if v.strip())
    if not inputs or set(inputs) - set(TEXT_INPUTS):
        raise argparse.ArgumentTypeError(f"{value!r}: give some of {', '.join(TEXT_INPUTS)}, comma-separated")
    return inputs


@dataclass
class DiffusionConfig:
    latent_channels: int = 16         # the built-in VQGAN's embed_dim
    latent_size: int = 8              # 32 px through an f4 encoder
    image_size: int = 32
    block_out_channels: tuple[int, ...] = (64, 128)  # two levels (8x8, 4x4) suffice for an 8x8 grid
    layers_per_block: int = 1
    n_head: int = 8
    text_dim: int = 128               # width of the CLIP text encoder's hidden states
    text_len: int = 32                # CLIP context length: captions are always padded to it
    text_inputs: tuple[str, ...] = ("last",)  # CLIP text states per token, concatenated: "last", "embed"
    top_left_first: bool = False      # captions rewritten with the top or left object named first (shapes.top_left_first)
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"     # DDPM's schedule, beta 1e-4 .. 0.02
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    latent_mean: tuple[float, ...] = ()  # per channel, measured on training scenes
    latent_std: tuple[float, ...] = ()
    preview_rgb: tuple[tuple[float, ...], ...] = ()  # (C + 1) x 3 linear map z -> RGB for cheap previews
    preview_codes: tuple[tuple[float, ...], ...] = ()  # n_embed x 3: each VQGAN code's mean cell colour (x0 previews)
    vqgan: str = "shapes-vqgan"       # the built-in components it was trained with (provenance)
    clip: str = "shapes-clip"
    extra: dict = field(default_factory=dict)  # provenance (training command, metrics); not architecture

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.latent_mean = tuple(float(v) for v in self.latent_mean) or (0.0,) * self.latent_channels
        self.latent_std = tuple(float(v) for v in self.latent_std) or (1.0,) * self.latent_channels
        self.preview_rgb = tuple(tuple(float(v) for v in row) for row in self.preview_rgb)
        self.preview_codes = tuple(tuple(float(v) for v in row) for row in self.preview_codes)
        self.text_inputs = tuple(self.text_inputs)
        if not self.text_inputs or set(self.text_inputs) - set(TEXT_INPUTS):
            raise ValueError(f"text_inputs must be some of {TEXT_INPUTS}, got {self.text_inputs}")
        if len(self.latent_mean) != self.latent_channels or len(self.latent_std) != self.latent_channels:
            raise ValueError(f"latent_mean and latent_std need {self.latent_channels} values each")

    @property
    def context_dim(self) -> int:
        """Width of each token the UNet's cross-attention reads."""
        return self.text_dim * len(self.text_inputs)

    def scheduler_config(self) -> dict:
        """What every diffusers scheduler needs to match the training noise schedule."""
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "beta_start": self.beta_start, "beta_end": self.beta_end, "prediction_type": self.prediction_type,
                "clip_sample": False,              # latents are not bounded like pixels
                "timestep_spacing": "trailing"}    # few-step schedules start at t = T - 1 (Lin et al., 2023)


# ---------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------


def build_unet(cfg: DiffusionConfig, **extra):
    """The UNet for cfg; `extra` goes to UNet2DConditionModel as is (the unCLIP decoder adds a class embedding)."""
    from diffusers import UNet2DConditionModel

    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n, up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=cfg.context_dim, attention_head_dim=cfg.n_head,  # diffusers' name for the head count
        norm_num_groups=32, **extra)


class LatentDiffusion(nn.Module):
    conditional = True
    latent = True

    def __init__(self, config: DiffusionConfig, **unet_extra):
        super().__init__()
        self.config = config
        self.unet = build_unet(config, **unet_extra)
        c = config.latent_channels
        self.register_buffer("latent_mean", torch.tensor(config.latent_mean).view(1, c, 1, 1))
        self.register_buffer("latent_std", torch.tensor(config.latent_std).view(1, c, 1, 1))
        self._preview_cache: dict = {}

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.config.latent_channels, self.config.latent_size, self.config.latent_size)

    @property
    def scheduler_config(self) -> dict:
        return self.config.scheduler_config()

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Record the per-channel statistics of h (training only; they travel in the config)."""
        self.latent_mean.copy_(mean.view_as(self.latent_mean))
        self.latent_std.copy_(std.view_as(self.latent_std))
        self.config.latent_mean = tuple(mean.flatten().tolist())
        self.config.latent_std = tuple(std.flatten().tolist())

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.latent_mean) / self.latent_std       # h -> z, unit variance per channel

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std + self.latent_mean         # z -> h, ready for the VQGAN's quantizer

    def preview_rgb(self, z: torch.Tensor) -> torch.Tensor | None:
        """A cheap look at latents: each 8x8 cell's colour by a fitted linear map (B, 3, 8, 8) in [-1, 1],
        as Stable Diffusion UIs preview latents. None when the config has no map (decode fully then)."""
        if not self.config.preview_rgb:
            return None
        m = self._preview_tensor("preview_rgb", z)                                    # (C + 1, 3)
        return (torch.einsum("bchw,cd->bdhw", z, m[:-1]) + m[-1].view(1, 3, 1, 1)).clamp(-1, 1)

    def preview_clean(self, z: torch.Tensor, vqgan) -> torch.Tensor | None:
        """A cheap look at clean-latent estimates (x0): each cell takes the mean colour of its nearest
        VQGAN code, which is what the decoder will draw there, far closer than the linear map (mean
        error 0.24 against 0.41 on the built-in preset). Falls back to preview_rgb."""
        if not self.config.preview_codes or not hasattr(vqgan.quantize, "nearest"):
            return self.preview_rgb(z)
        table = self._preview_tensor("preview_codes", z)                               # (n_embed, 3)
        B, _, H, W = z.shape
        idx = vqgan.quantize.nearest(self.denormalize(z).to(vqgan.codebook.dtype))     # (B*H*W,)
        return table[idx].view(B, H, W, 3).permute(0, 3, 1, 2)

    def _preview_tensor(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """The config's preview_rgb or preview_codes as a tensor beside z, made once per device and dtype
        (building it from the config's tuples costs more than using it)."""
        key = (name, z.device, z.dtype)
        if key not in self._preview_cache:
            self._preview_cache[key] = torch.tensor(getattr(self.config, name), device=z.device, dtype=z.dtype)
        return self._preview_cache[key]

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """The network's prediction (eps) for z_t (B, C, 8, 8) at timesteps t (B,) given text_emb (B, T, D)."""
        assert z_t.shape[1:] == self.sample_shape, f"expected (B, {self.sample_shape}), got {tuple(z_t.shape)}"
        assert text_emb.shape[0] == z_t.shape[0], "one text embedding per latent"
        return self.unet(z_t, t, encoder_hidden_states=text_emb).sample


class PixelDiffusion(nn.Module):
    """An unconditional diffusers UNet2DModel with the scheduler config it was trained with."""
    conditional = False
    latent = False

    def __init__(self, unet, scheduler_config: dict):
        super().__init__()
        self.unet = unet
        self._scheduler_config = dict(scheduler_config)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, h, w)

    @property
    def scheduler_config(self) -> dict:
        return dict(self._scheduler_config)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x_t, t).sample


# ---------------------------------------------------------------------------
# Text conditioning
# ---------------------------------------------------------------------------


def encode_text(clip, prompts: list[str], length: int, inputs: tuple[str, ...] = ("last",)) -> torch.Tensor:
    """CLIP text-encoder states (N, length, D x len(inputs)), each prompt padded to `length` tokens.

    inputs: "last" (the last layer's hidden states, after the final layer norm) and/or
    "embed" (token plus position embeddings, before the first layer), side by side. The
    embeddings are layer-normed (no learnt scale) to the last layer's unit scale per
    coordinate: raw, the shapes CLIP's are 25x smaller, and a UNet learning to read them
    would need weights 25x larger.
    """
    enc = clip.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=length,
                         return_tensors="pt")
    device = clip.mean.device
    out = clip.model.text_model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                                output_hidden_states="embed" in inputs)
    states = {"last": out.last_hidden_state}
    if "embed" in inputs:
        e = out.hidden_states[0]
        states["embed"] = torch.nn.functional.layer_norm(e, e.shape[-1:])
    return torch.cat([states[k] for k in inputs], dim=-1) if len(inputs) > 1 else states[inputs[0]]


def text_states(model, clip, prompts: list[str]) -> torch.Tensor:
    """The text states `model` (a LatentDiffusion) was trained to read, for prompts (in the caption form
    it was trained on: see DiffusionConfig.top_left_first)."""
    if model.config.top_left_first:
        from shapes import top_left_first

        prompts = [top_left_first(p) for p in prompts]
    return encode_text(clip, prompts, model.config.text_len, model.config.text_inputs)


def with_text_inputs(model: LatentDiffusion, inputs: tuple[str, ...]) -> LatentDiffusion:
    """The same model reading more text states: every cross-attention key and value projection gets
    zero columns for the new ones, so the widened model predicts exactly what the old one did, and
    training then learns to use them. The old inputs must come first, in the same order."""
    import dataclasses

    old = model.config.text_inputs
    inputs = tuple(inputs)
    if inputs == old:
        return model
    if inputs[:len(old)] != old:
        raise ValueError(f"can only add text inputs after {old}, got {inputs}")
    wide = type(model)(dataclasses.replace(model.config, text_inputs=inputs, extra=dict(model.config.extra)))
    state = model.state_dict()
    for name, w in wide.state_dict().items():
        if name not in state or state[name].shape == w.shape:
            continue
        old = state[name]
        if name.startswith("to_tokens."):    # the unCLIP decoder's image tokens: (k x W, ...) -> (k x W', ...)
            k = model.config.image_tokens
            old = old.reshape(k, -1, *old.shape[1:])
            pad = torch.zeros(k, w.shape[0] // k - old.shape[1], *old.shape[2:], dtype=w.dtype)
            state[name] = torch.cat([old, pad], dim=1).reshape(w.shape)
        else:                                # attn2.to_k / attn2.to_v weights (out, D) -> (out, D')
            state[name] = torch.cat([old, torch.zeros(w.shape[0], w.shape[1] - old.shape[1], dtype=w.dtype)], dim=1)
    wide.load_state_dict(state, strict=True)
    return wide.train(model.training)


@torch.no_grad()
def fit_preview_rgb(model: LatentDiffusion, vqgan, images: torch.Tensor) -> None:
    """Least-squares map from normalised latents to the mean colour of each f x f cell of the images
    (B, 3, H, W) in [-1, 1], and the mean cell colour of each VQGAN code; stored in the config, so
    previews need no decoder pass."""
    f = vqgan.factor
    z = model.normalize(vqgan.encode_latent(images))                             # (B, C, h, w)
    target = torch.nn.functional.avg_pool2d(images, f)                           # (B, 3, h, w)
    a = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), torch.ones(z.numel() // z.shape[1], 1)], 1)
    cells = target.permute(0, 2, 3, 1).reshape(-1, 3)                                # (B h w, 3)
    m = torch.linalg.lstsq(a, cells).solution                                         # (C + 1, 3)
    model.config.preview_rgb = tuple(tuple(round(float(v), 5) for v in row) for row in m)
    if hasattr(vqgan.quantize, "nearest"):   # each code's mean cell colour; unseen codes by the linear map
        idx = vqgan.quantize.nearest(model.denormalize(z))
        k = vqgan.codebook.shape[0]
        sums = torch.zeros(k, 3).index_add_(0, idx, cells)
        counts = torch.bincount(idx, minlength=k).float()[:, None]
        code_z = model.normalize(vqgan.codebook.detach()[:, :, None, None].float()).flatten(1)
        linear = (code_z @ m[:-1] + m[-1]).clamp(-1, 1)
        table = torch.where(counts > 0, sums / counts.clamp(min=1), linear)
        model.config.preview_codes = tuple(tuple(round(float(v), 3) for v in row) for row in table)
    model._preview_cache.clear()


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def save_pretrained(model: LatentDiffusion, directory: str | Path) -> None:
    """`config.json` + `model.safetensors` (float16: half the size, no measurable loss for sampling)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.latent_mean = tuple(model.latent_mean.flatten().tolist())  # the statistics in use
    model.config.latent_std = tuple(model.latent_std.flatten().tolist())
    (directory / "config.json").write_text(json.dumps(asdict(model.config), indent=2))
    save_file({k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()},
              str(directory / "model.safetensors"))


def from_pretrained(directory: str | Path) -> LatentDiffusion:
    from safetensors.torch import load_file

    directory = Path(directory)
    model = LatentDiffusion(DiffusionConfig(**json.loads((directory / "config.json").read_text())))
    state = {k: v.float() for k, v in load_file(str(directory / "model.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_pixel_pipeline(directory: str | Path) -> PixelDiffusion:
    """A diffusers unconditional pipeline folder: `unet/` + `scheduler/scheduler_config.json` (what
    `DDPMPipeline.save_pretrained` writes), or the flat layout of `google/ddpm-cifar10-32` (the UNet's
    config.json and weights beside scheduler_config.json)."""
    from diffusers import UNet2DModel

    directory = Path(directory)
    nested = (directory / "unet" / "config.json").is_file()
    unet_dir = directory / "unet" if nested else directory
    sched = directory / "scheduler" / "scheduler_config.json" if nested else directory / "scheduler_config.json"
    if not (unet_dir / "config.json").is_file() or not sched.is_file():
        raise FileNotFoundError(f"{directory.name} has no UNet config.json and scheduler_config.json")
    unet = UNet2DModel.from_pretrained(str(unet_dir))
    if getattr(unet.config, "class_embed_type", None) or getattr(unet.config, "num_class_embeds", None):
        raise ValueError("class-conditional UNets are not supported (unconditional only)")
    config = {k: v for k, v in json.loads(sched.read_text()).items() if not k.startswith("_")}
    if "timesteps" in config:  # the first diffusers releases named it so
        config.setdefault("num_train_timesteps", config.pop("timesteps"))
    return PixelDiffusion(unet, config).eval()


def load_any(directory: str | Path) -> nn.Module:
    """Atelier's latent model (config.json at the top) or a diffusers pipeline folder (model_index.json)."""
    directory = Path(directory)
    if (directory / "model_index.json").is_file() or (directory / "unet").is_dir() \
            or (directory / "scheduler_config.json").is_file():
        return load_pixel_pipeline(directory)
    if (directory / "config.json").is_file():
        return from_pretrained(directory)
    raise FileNotFoundError(f"{directory.name} is neither an Atelier diffusion folder nor a diffusers pipeline")
