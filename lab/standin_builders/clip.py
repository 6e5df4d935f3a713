"""Stand-ins for OpenAI's CLIPs on the hub (transformers' layout), as VQGAN+CLIP, DALL-E reranking and
unCLIP presets name them. The patch sizes keep each one's ratio of image to patch small but distinct."""
from __future__ import annotations

from functools import partial

from lab.standin_builders.common import tiny_clip
from lab.standins import HUB

HUB["openai/clip-vit-base-patch32"] = partial(tiny_clip, image_size=32, patch_size=16, seed=32)
HUB["openai/clip-vit-base-patch16"] = partial(tiny_clip, image_size=32, patch_size=8, seed=16)
HUB["openai/clip-vit-large-patch14"] = partial(tiny_clip, image_size=28, patch_size=14, width=48, seed=14)
