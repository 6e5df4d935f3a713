"""Stand-ins for Stable Diffusion-family checkpoints and TAESD, in the hub's layouts (diffusers' save_pretrained).

Tiny and randomly initialised: 64 px pictures through an 8x VAE, a 2-layer text encoder. They prove
the `sd-v1-5`, `sd-turbo` and TAESD loading paths offline; their pictures are noise.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from lab.standin_builders.common import tiny_clip_tokenizer
from lab.standins import HUB


def save_tiny_standin(folder: str | Path, turbo: bool = False, seed: int = 0) -> Path:
    """A randomly initialised Stable Diffusion with tiny configs, saved by `StableDiffusionPipeline.save_pretrained`
    (the hub layout): 64 px pictures through an 8x VAE. `turbo`: SD-Turbo's Euler schedule (trailing spacing)."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer(max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    common = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                  prediction_type="epsilon")
    scheduler = EulerDiscreteScheduler(timestep_spacing="trailing", steps_offset=1, **common) if turbo else \
        PNDMScheduler(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, **common)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def save_tiny_taesd(folder: str | Path, seed: int = 0) -> Path:
    """A randomly initialised AutoencoderTiny in `madebyollin/taesd`'s layout (config + weights at the top)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(folder)
    return Path(folder)


HUB["stable-diffusion-v1-5/stable-diffusion-v1-5"] = partial(save_tiny_standin, turbo=False, seed=15)
HUB["stabilityai/sd-turbo"] = partial(save_tiny_standin, turbo=True, seed=21)
HUB["madebyollin/taesd"] = save_tiny_taesd
