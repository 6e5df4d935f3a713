"""Stable Diffusion-family checkpoints behind the diffusion engine's model interface.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (2022). The parts
are diffusers' and transformers' own classes, loaded one by one from a folder in diffusers'
`model_index.json` layout (or a hub id in that layout), so only the files the engine uses download:

    unet/           UNet2DConditionModel      z_t, t, text states -> eps (or v)
    vae/            AutoencoderKL             pixels <-> latents, 8x smaller per side, 4 channels
    text_encoder/   CLIPTextModel             prompt -> last hidden states (B, 77, D)
    tokenizer/      CLIPTokenizer             padded to its context length, truncated
    scheduler/      scheduler_config.json     the training noise schedule; the engine picks the sampler

The safety checker and feature extractor the hub folders carry are not loaded. The same code
serves Stable Diffusion 1.x (`stable-diffusion-v1-5/stable-diffusion-v1-5`), 2.x and SD-Turbo
(`stabilityai/sd-turbo`, 1-4 steps without guidance).

The engine calls it as it calls the built-in model (`pipelines/models/diffusion.py`):

    model(z_t, t, text_emb) -> eps         model.encode_text(prompts) -> text_emb
    model.encode(x) -> z                   model.decode(z) -> x in [-1, 1]
    model.shape_for(width, height)         model.preview_rgb(z) -> a cheap picture of latents

z is the VAE's latent times its `scaling_factor` (what the UNet was trained on), x an image in
[-1, 1]. `preview_rgb` is a linear map from each latent vector to a colour, fitted when the model
loads by encoding a few flat-coloured pictures (least squares from latents to the pictures' colours);
it costs a matrix product, so previews never slow sampling. TAESD (`AutoencoderTiny`, a preset's
optional `taesd` component) decodes x0 estimates far closer to the result for about 1 % of a step.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
LAYOUT = "a Stable Diffusion folder holds model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/"


class StableDiffusion(nn.Module):
    conditional = True
    latent = True
    self_contained = True          # brings its own autoencoder and text encoder (no preset VQGAN or CLIP)
    half_ok = True                 # runs in float16 autocast on a GPU
    preview_budget = 0.05          # auto previews (preview_every -1) stay under 5 % of sampling time

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: dict):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer = tokenizer
        self._scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling = float(vae.config.scaling_factor)
        self.register_buffer("latent_rgb", torch.zeros(vae.config.latent_channels + 1, 3))

    # -- shapes -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """The side, in pixels, the model was trained at (512 for SD 1.5 and SD-Turbo)."""
        s = self.unet.config.sample_size
        return (s if isinstance(s, int) else s[0]) * self.factor

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.shape_for(0, 0)

    def shape_for(self, width: int, height: int) -> tuple[int, int, int]:
        """The latent shape of a width x height picture (0: the model's own size)."""
        w, h = width or self.size, height or self.size
        if w % self.factor or h % self.factor:
            raise ValueError(f"Width and height must be multiples of {self.factor} for this model (got {w}x{h}).")
        return (self.vae.config.latent_channels, h // self.factor, w // self.factor)

    @property
    def scheduler_config(self) -> dict:
        return dict(self._scheduler_config)

    # -- the passes ---------------------------------------------------------------------------

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return self.unet(z_t, t, encoder_hidden_states=text_emb).sample

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder's last hidden states, every prompt padded to the tokenizer's context length."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    def too_long(self, prompt: str) -> bool:
        """Whether the prompt is cut at the context length (the engine says so)."""
        return len(self.tokenizer(prompt).input_ids) > self.tokenizer.model_max_length

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents (the posterior's mean: the same picture, the same latent)."""
        return self.vae.encode(x).latent_dist.mean * self.scaling

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling).sample.clamp(-1, 1)

    def preview_rgb(self, z: torch.Tensor) -> torch.Tensor:
        """Each latent vector's colour by the fitted map, enlarged to the picture's size: (B, 3, H, W) in [-1, 1]."""
        m = self.latent_rgb.to(z.dtype)
        small = torch.einsum("bchw,cd->bdhw", z, m[:-1]) + m[-1].view(1, 3, 1, 1)
        return F.interpolate(small.clamp(-1, 1), scale_factor=self.factor, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def fit_preview_rgb(self, pictures: int = 12, side: int = 64, seed: int = 0) -> float:
        """Fit `latent_rgb` on flat-coloured quadrant pictures: encode them, then least squares from each
        latent vector (and 1) to the mean colour of the pixels it covers. Returns the fit's mean absolute error."""
        g = torch.Generator().manual_seed(seed)
        colours = torch.rand(pictures, 4, 3, generator=g) * 2 - 1               # four flat quadrants each
        half = side // 2
        x = colours.view(pictures, 2, 2, 3).permute(0, 3, 1, 2).repeat_interleave(half, 2).repeat_interleave(half, 3)
        dev = next(self.vae.parameters()).device
        z = self.encode(x.to(dev, next(self.vae.parameters()).dtype)).float().cpu()
        target = F.avg_pool2d(x, self.factor)                                   # each latent's pixels
        A = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), torch.ones(z.numel() // z.shape[1], 1)], 1)
        B = target.permute(0, 2, 3, 1).reshape(-1, 3)
        m = torch.linalg.lstsq(A, B).solution
        self.latent_rgb.copy_(m)
        return float((A @ m - B).abs().mean())


def _read_index(folder: Path) -> dict:
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"no model_index.json ({LAYOUT})")
    data = json.loads(index.read_text())
    missing = [p for p in PARTS if p not in data or not (folder / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"no {', '.join(missing)} ({LAYOUT})")
    if "UnCLIP" in str(data.get("_class_name", "")) or "prior" in data:
        raise ValueError(f"this is a {data.get('_class_name')} folder, not Stable Diffusion")
    return data


def load_stable_diffusion(where: str | Path, revision: str | None = None,
                          local_files_only: bool = True) -> StableDiffusion:
    """A Stable Diffusion folder (a Path) or hub id (a str), part by part: each part downloads only its files."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if isinstance(where, Path):
        _read_index(where)                 # a local folder: say which part is missing before loading any
        kw = {}
    else:
        kw = {"revision": revision, "local_files_only": local_files_only}
    src = str(where)
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=torch.float32, **kw)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=torch.float32, **kw)
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=torch.float32, **kw)
    tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
    scheduler_config = DDIMScheduler.load_config(src, subfolder="scheduler", **kw)
    model = StableDiffusion(unet, vae, text_encoder, tokenizer, dict(scheduler_config)).eval()
    model.fit_preview_rgb()
    return model


def load_taesd(where: str | Path, revision: str | None = None, local_files_only: bool = True) -> nn.Module:
    """TAESD (`madebyollin/taesd`): a tiny decoder of the same latents, for previews of x0."""
    from diffusers import AutoencoderTiny

    kw = {} if isinstance(where, Path) else {"revision": revision, "local_files_only": local_files_only}
    return TinyDecoder(AutoencoderTiny.from_pretrained(str(where), torch_dtype=torch.float32, **kw)).eval()


class TinyDecoder(nn.Module):
    """AutoencoderTiny's decoder over the UNet's (scaled) latents: (B, 4, h, w) -> (B, 3, 8h, 8w) in [-1, 1]."""

    def __init__(self, taesd):
        super().__init__()
        self.taesd = taesd

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.taesd.decode(z / self.taesd.config.scaling_factor).sample.clamp(-1, 1)
