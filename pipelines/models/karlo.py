"""Karlo unCLIP (Kakao Brain, 2022) in diffusers' `UnCLIPPipeline` layout, behind Atelier's unCLIP interface.

The checkpoint `kakaobrain/karlo-v1-alpha` is a folder with `model_index.json` and one
subfolder per part: `prior` (PriorTransformer), `text_encoder` (CLIPTextModelWithProjection)
and `tokenizer`, `text_proj` (UnCLIPTextProjModel), `decoder` (UNet2DConditionModel, 64 px,
eps plus learned variance), `super_res_first` / `super_res_last` (UNet2DModel, 64 -> 256 px)
and three UnCLIPSchedulers. `karlo-v1-alpha-image-variations` drops the prior and adds
`image_encoder` (CLIPVisionModelWithProjection) with its `feature_extractor`: with one of
those, variations and image ends of an interpolation work too.

The parts are adapted to the denoiser interface of `pipelines/models/diffusion.py` so the
engine drives them with the same loop and samplers as the built-in pair; the calls follow
diffusers' `pipeline_unclip.py` (prior on the text embedding and token states with the
attention mask; decoder conditioned through `text_proj` on the image embedding and the
text; super-resolution from the bicubically enlarged 64 px picture). Since the denoise loop
batches conditioning with `torch.cat`, each stage's conditioning is packed into one tensor:

    prior cond    (B, 1 + L, C):  row 0 the text embedding, rows 1.. the token states
    decoder cond  (B, 2 + L, C):  row 0 the image embedding, row 1 the text embedding, rows 2.. the token states
    C = widest of them + 1; the last column holds the attention mask of the token rows.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines import media

log = logging.getLogger(__name__)


def _pack(vectors: list[torch.Tensor], states: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of vectors (B, d_i) then states (B, L, W) into (B, len(vectors) + L, width + 1)."""
    B, L, W = states.shape
    out = states.new_zeros(B, len(vectors) + L, width + 1)
    for i, v in enumerate(vectors):
        out[:, i, :v.shape[-1]] = v
    out[:, len(vectors):, :W] = states
    out[:, len(vectors):, -1] = mask.to(states.dtype)
    return out


def _unpack(cond: torch.Tensor, dims: list[int], state_width: int):
    n = len(dims)
    vectors = [cond[:, i, :d] for i, d in enumerate(dims)]
    return vectors, cond[:, n:, :state_width], cond[:, n:, -1] > 0.5


def _scheduler_config(scheduler, prediction_type: str) -> dict:
    """An UnCLIPScheduler's noise schedule as a config for the engine's samplers."""
    c = scheduler.config
    return {"num_train_timesteps": c.num_train_timesteps, "beta_schedule": c.get("beta_schedule", "squaredcos_cap_v2"),
            "prediction_type": prediction_type, "clip_sample": bool(c.get("clip_sample", False)),
            "clip_sample_range": float(c.get("clip_sample_range", 1.0)), "timestep_spacing": "linspace"}


class KarloPrior(nn.Module):
    """PriorTransformer -> model(x_t, t, cond) predicting the clean (normalised) image embedding."""
    conditional = True
    latent = False

    def __init__(self, prior, scheduler, text_dim: int, state_width: int, width: int):
        super().__init__()
        self.prior = prior
        self._scheduler_config = _scheduler_config(scheduler, "sample")
        self.text_dim, self.state_width, self.width = text_dim, state_width, width

    @property
    def sample_shape(self) -> tuple[int]:
        return (self.prior.config.embedding_dim,)

    @property
    def scheduler_config(self) -> dict:
        return dict(self._scheduler_config)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        (text_emb,), states, mask = _unpack(cond, [self.text_dim], self.state_width)
        return self.prior(x_t, timestep=t, proj_embedding=text_emb, encoder_hidden_states=states,
                          attention_mask=mask).predicted_image_embedding


class KarloDecoder(nn.Module):
    """text_proj + the 64 px UNet -> model(x_t, t, cond) predicting eps (the learned variance is dropped)."""
    conditional = True
    latent = False

    def __init__(self, decoder, text_proj, scheduler, image_dim: int, text_dim: int, state_width: int, width: int):
        super().__init__()
        self.decoder, self.text_proj = decoder, text_proj
        self._scheduler_config = _scheduler_config(scheduler, "epsilon")
        self.image_dim, self.text_dim, self.state_width, self.width = image_dim, text_dim, state_width, width

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = self.decoder.config.sample_size
        return (self.decoder.config.in_channels, s, s)

    @property
    def scheduler_config(self) -> dict:
        return dict(self._scheduler_config)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        (image_emb, text_emb), states, mask = _unpack(cond, [self.image_dim, self.text_dim], self.state_width)
        states, additive = self.text_proj(image_embeddings=image_emb, prompt_embeds=text_emb,
                                          text_encoder_hidden_states=states, do_classifier_free_guidance=False)
        mask = F.pad(mask, (self.text_proj.clip_extra_context_tokens, 0), value=True)
        out = self.decoder(sample=x_t, timestep=t, encoder_hidden_states=states, class_labels=additive,
                           attention_mask=mask).sample
        return out[:, :x_t.shape[1]]


class KarloUnCLIP(nn.Module):
    """The whole checkpoint with the interface of `pipelines.models.unclip.UnCLIPParts`."""

    def __init__(self, parts: dict):
        super().__init__()
        enc, prior, text_proj = parts["text_encoder"], parts.get("prior"), parts["text_proj"]
        self.tokenizer = parts["tokenizer"]
        self.text_encoder = enc
        text_dim = enc.config.projection_dim
        state_width = enc.config.hidden_size
        image_dim = text_proj.clip_image_embeddings_project_to_time_embeddings.in_features
        width = max(text_dim, state_width, image_dim)
        self.prior = KarloPrior(prior, parts["prior_scheduler"], text_dim, state_width, width) if prior is not None else None
        self.decoder = KarloDecoder(parts["decoder"], text_proj, parts["decoder_scheduler"], image_dim, text_dim,
                                    state_width, width)
        self.super_res_first, self.super_res_last = parts["super_res_first"], parts["super_res_last"]
        self.super_res_scheduler = parts["super_res_scheduler"]
        self.image_encoder = parts.get("image_encoder")
        self.feature_extractor = parts.get("feature_extractor")
        self.super_res_steps = 7          # diffusers' default for Karlo

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @property
    def pool_key(self):
        return self.text_encoder

    # -- text and images ------------------------------------------------------------------------

    def _encode(self, prompts: list[str]):
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        out = self.text_encoder(enc.input_ids.to(self.device))
        return out.text_embeds, out.last_hidden_state, enc.attention_mask.bool().to(self.device)

    def prompt_cond(self, prompts: list[str]) -> torch.Tensor:
        if self.prior is None:
            raise ValueError("This Karlo checkpoint has no prior (an image-variations one): use variations, "
                             "or image ends for interpolation.")
        text_emb, states, mask = self._encode(prompts)
        return _pack([text_emb], states, mask, self.prior.width)

    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(self._encode(prompts)[0].float(), dim=-1)

    def image_embedding(self, images) -> torch.Tensor:
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError("This Karlo checkpoint has no image encoder: variations and image ends need "
                             "kakaobrain/karlo-v1-alpha-image-variations.")
        pixels = self.feature_extractor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        dtype = next(self.image_encoder.parameters()).dtype
        return self.image_encoder(pixels.to(self.device, dtype)).image_embeds

    def to_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior.prior.post_process_latents(x)        # un-normalise with the prior's CLIP statistics

    # -- decoder --------------------------------------------------------------------------------

    def decoder_cond(self, emb: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        text_emb, states, mask = self._encode(prompts if prompts is not None else [""] * len(emb))
        return _pack([emb.to(text_emb.dtype), text_emb], states, mask, self.decoder.width)

    def decoder_null(self, n: int) -> torch.Tensor:
        text_emb, states, mask = self._encode([""] * n)
        null = self.decoder.text_proj.learned_classifier_free_guidance_embeddings[None].expand(n, -1)
        return _pack([null, text_emb], states, mask, self.decoder.width)

    def preview(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1)                                    # the 64 px picture, before super-resolution

    def encode(self, images) -> torch.Tensor:
        """PIL pictures -> the decoder's 64 px space in [-1, 1] (centre-cropped squares)."""
        side = self.decoder.sample_shape[-1]
        return media.to_tensor([media.square(im.convert("RGB"), side) for im in images]).to(self.device)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The 64 px sample -> super-resolved pictures in [-1, 1], as diffusers' pipeline does."""
        small = x.clamp(-1, 1)
        side = self.super_res_first.config.sample_size
        up = F.interpolate(small, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
        sched = self.super_res_scheduler
        sched.set_timesteps(self.super_res_steps, device=x.device)
        steps = sched.timesteps
        gen = generator or torch.Generator().manual_seed(0)
        z = torch.randn((len(x), self.super_res_first.config.in_channels // 2, side, side),
                        generator=gen).to(x.device, x.dtype) * sched.init_noise_sigma
        for i, t in enumerate(steps):
            unet = self.super_res_last if i == len(steps) - 1 else self.super_res_first
            eps = unet(sample=torch.cat([z, up], dim=1), timestep=t).sample
            prev = None if i + 1 == len(steps) else steps[i + 1]
            z = sched.step(eps, t, z, prev_timestep=prev, generator=gen).prev_sample
        return z.clamp(-1, 1)


PARTS = ("prior", "text_encoder", "tokenizer", "text_proj", "decoder", "super_res_first", "super_res_last",
         "prior_scheduler", "decoder_scheduler", "super_res_scheduler", "image_encoder", "feature_extractor")


def load_karlo(where: str | Path, revision: str | None = None, local_files_only: bool = True) -> KarloUnCLIP:
    """A diffusers UnCLIPPipeline (or UnCLIPImageVariationPipeline) folder or hub id, part by part:
    diffusers keeps the unCLIP classes among its deprecated pipelines, where `DiffusionPipeline`
    cannot resolve `text_proj` from model_index.json, so each subfolder is loaded with its class."""
    import json

    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from huggingface_hub import hf_hub_download
    from transformers import CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    local = isinstance(where, Path)
    if local:
        index_path = where / "model_index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{where.name} has no model_index.json (not a diffusers pipeline folder)")
    else:
        index_path = hf_hub_download(where, "model_index.json", revision=revision, local_files_only=local_files_only)
    index = json.loads(Path(index_path).read_text())
    if index.get("_class_name") not in ("UnCLIPPipeline", "UnCLIPImageVariationPipeline"):
        raise ValueError(f"{where} holds a {index.get('_class_name')}, not an unCLIP pipeline")
    classes = {"prior": PriorTransformer, "decoder": UNet2DConditionModel, "text_proj": UnCLIPTextProjModel,
               "super_res_first": UNet2DModel, "super_res_last": UNet2DModel,
               "text_encoder": CLIPTextModelWithProjection, "tokenizer": CLIPTokenizer,
               "image_encoder": CLIPVisionModelWithProjection, "feature_extractor": CLIPImageProcessor,
               "prior_scheduler": UnCLIPScheduler, "decoder_scheduler": UnCLIPScheduler,
               "super_res_scheduler": UnCLIPScheduler}
    present = set(index) | ({p for p in ("image_encoder", "feature_extractor") if (where / p).is_dir()} if local else set())
    parts = {}
    for name in PARTS:
        if name not in present:
            parts[name] = None
            continue
        kw = {"subfolder": name, "local_files_only": local_files_only}
        if not local:
            kw["revision"] = revision
        parts[name] = classes[name].from_pretrained(str(where), **kw)
    missing = [p for p in ("decoder", "text_proj", "text_encoder", "tokenizer", "super_res_first", "super_res_last",
                           "decoder_scheduler", "super_res_scheduler") if parts[p] is None]
    if missing:
        raise ValueError(f"the unCLIP pipeline lacks {', '.join(missing)}")
    if parts["prior_scheduler"] is None:
        parts["prior_scheduler"] = parts["decoder_scheduler"]
    return KarloUnCLIP(parts).eval()


def save_tiny_standin(directory: str | Path, seed: int = 0, image_encoder: bool = True) -> Path:
    """A randomly initialised Karlo-shaped pipeline with tiny configs, saved in Karlo's exact layout
    (`UnCLIPPipeline.save_pretrained`), for tests and for trying the loader offline. With image_encoder,
    the image encoder and feature extractor are saved beside it (as in the image-variations checkpoint)."""
    import json

    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPPipeline, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)

    directory = Path(directory)
    torch.manual_seed(seed)
    d = 32                                                  # every embedding width
    import tempfile

    vocab_dir = Path(tempfile.mkdtemp(prefix="karlo-vocab-"))
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=16)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=d, projection_dim=d, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, num_layers=1, embedding_dim=d,
                             num_embeddings=16)
    text_proj = UnCLIPTextProjModel(clip_extra_context_tokens=2, clip_embeddings_dim=d, time_embed_dim=d * 4,
                                    cross_attention_dim=d)
    decoder = UNet2DConditionModel(sample_size=16, in_channels=3, out_channels=6, layers_per_block=1,
                                   block_out_channels=(32, 64), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
                                   up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
                                   mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=d,
                                   attention_head_dim=16, class_embed_type="identity", resnet_time_scale_shift="scale_shift")

    def super_res():
        return UNet2DModel(sample_size=32, in_channels=6, out_channels=3, layers_per_block=1,
                           block_out_channels=(32, 64), down_block_types=("ResnetDownsampleBlock2D",) * 2,
                           up_block_types=("ResnetUpsampleBlock2D",) * 2, resnet_time_scale_shift="scale_shift")

    pipe = UnCLIPPipeline(
        prior=prior, decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
        super_res_first=super_res(), super_res_last=super_res(),
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        clip_sample=True, clip_sample_range=5.0),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log"))
    pipe.save_pretrained(directory)
    if image_encoder:
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=d, projection_dim=d, intermediate_size=64,
                                                             num_hidden_layers=2, num_attention_heads=2,
                                                             image_size=32, patch_size=8))
        enc.save_pretrained(directory / "image_encoder")
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            directory / "feature_extractor")
        index = json.loads((directory / "model_index.json").read_text())
        index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        (directory / "model_index.json").write_text(json.dumps(index, indent=2))
    return directory
