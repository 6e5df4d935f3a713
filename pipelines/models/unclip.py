"""unCLIP: a diffusion prior from CLIP text to CLIP image embeddings, and a decoder that paints from them.

Paper: Ramesh, Dhariwal, Nichol, Chu, Chen, "Hierarchical Text-Conditional Image
Generation with CLIP Latents" (2022), the DALL-E 2 recipe, at toy scale. Both parts
are denoisers with the interface of `pipelines/models/diffusion.py`, so the diffusion
engine's loop (`pipelines/diffusion_sampling.denoise`) and diffusers' schedulers run
them unchanged:

    model(x_t, t, cond) -> network output       model.conditional, .sample_shape, .scheduler_config

`DiffusionPrior` (paper section 2.1, "diffusion prior"): a decoder-only (causal)
transformer over the sequence

    [CLIP text token states (T), CLIP text embedding, timestep, noised image embedding, query]

whose output at the final query is the *clean* image embedding (the paper predicts
z_i directly rather than the noise). Embeddings live on the unit sphere scaled by
sqrt(D), so each coordinate has roughly unit variance, as DALLE2-pytorch does.
Classifier-free guidance uses the empty caption, which training swaps in for 10 % of
captions.

`UnCLIPDecoder` (section 2.1, "decoder"): the diffusion engine's latent UNet over the
built-in VQGAN's 8x8x16 latents, conditioned on the image embedding twice, as GLIDE
was adapted in the paper: projected and added to the timestep embedding (diffusers'
`class_embed_type="projection"`), and projected into a few extra cross-attention
tokens. Guidance drops the embedding to zeros (10 % in training). With `text_cond` it
also reads the caption's CLIP token states after those tokens, as the paper's decoder
may; it is trained with the caption often missing, so variations (no text) still work.

Notation: e = CLIP embedding on the unit sphere (D,); x = sqrt(D) e what the prior
denoises; z the decoder's normalised VQGAN latent; cond the prior's packed
conditioning (see `encode_prompt`).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from pipelines import media
from pipelines.models.diffusion import DiffusionConfig, LatentDiffusion, encode_text, text_states

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# Prior: blocks in dependency order (nanoGPT's layout)
# ---------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        assert n_embd % n_head == 0, f"n_embd {n_embd} must divide into {n_head} heads"
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (u.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for u in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of integer timesteps t (B,), as in the Transformer and DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


@dataclass
class PriorConfig:
    embed_dim: int = 128              # CLIP's projection_dim: the embeddings the prior maps between
    text_dim: int = 128               # width of the CLIP text encoder's hidden states
    text_len: int = 32                # CLIP context length: captions are always padded to it
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # the cosine schedule the paper's prior uses
    clip: str = "shapes-clip"         # the built-in CLIP it was trained with (provenance)
    extra: dict = field(default_factory=dict)  # provenance (training command, metrics); not architecture

    def __post_init__(self):
        if self.embed_dim % self.text_dim:
            # encode_prompt folds the text embedding into rows of the token states' width
            raise ValueError(f"embed_dim ({self.embed_dim}) must be a multiple of text_dim ({self.text_dim})")

    @property
    def cond_len(self) -> int:
        return self.text_len + self.embed_dim // self.text_dim

    def scheduler_config(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "prediction_type": "sample",       # the network outputs the clean embedding
                "clip_sample": False,              # x = sqrt(D) e has coordinates beyond [-1, 1]
                "timestep_spacing": "trailing"}


class DiffusionPrior(nn.Module):
    conditional = True
    latent = False

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        c = config
        self.text_in = nn.Linear(c.text_dim, c.n_embd)     # token states -> width
        self.emb_in = nn.Linear(c.embed_dim, c.n_embd)     # text embedding -> one token
        self.x_in = nn.Linear(c.embed_dim, c.n_embd)       # noised image embedding -> one token
        self.time_in = nn.Sequential(nn.Linear(c.n_embd, c.n_embd), nn.SiLU(), nn.Linear(c.n_embd, c.n_embd))
        self.query = nn.Parameter(torch.zeros(1, 1, c.n_embd))
        self.pos = nn.Parameter(torch.zeros(1, c.text_len + 4, c.n_embd))
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.out = nn.Linear(c.n_embd, c.embed_dim)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.query, std=0.02)

    @property
    def sample_shape(self) -> tuple[int]:
        return (self.config.embed_dim,)

    @property
    def scheduler_config(self) -> dict:
        return self.config.scheduler_config()

    @property
    def scale(self) -> float:
        return math.sqrt(self.config.embed_dim)           # unit sphere -> about unit variance per coordinate

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The clean embedding x0 (B, D) predicted from x_t (B, D) at timesteps t (B,) given cond (B, L, W)."""
        c = self.config
        B = x_t.shape[0]
        assert x_t.shape == (B, c.embed_dim), f"expected (B, {c.embed_dim}), got {tuple(x_t.shape)}"
        assert cond.shape == (B, c.cond_len, c.text_dim), f"expected cond (B, {c.cond_len}, {c.text_dim}), got {tuple(cond.shape)}"
        tokens, text_emb = cond[:, :c.text_len], cond[:, c.text_len:].reshape(B, c.embed_dim)
        seq = torch.cat([
            self.text_in(tokens),                                          # (B, T, W)
            self.emb_in(text_emb)[:, None],                                # (B, 1, W)
            self.time_in(timestep_embedding(t, c.n_embd))[:, None],        # (B, 1, W)
            self.x_in(x_t)[:, None],                                       # (B, 1, W)
            self.query.expand(B, -1, -1),                                  # (B, 1, W)
        ], dim=1) + self.pos
        for block in self.blocks:
            seq = block(seq)
        return self.out(self.ln_f(seq[:, -1]))                             # (B, D): read at the query


def encode_prompt(clip, prompts: list[str], text_len: int) -> torch.Tensor:
    """The prior's conditioning (N, text_len + D/W, W): the CLIP token states, then the projected,
    unit-norm text embedding folded into D/W rows of the same width. One tensor, so the diffusion
    loop can batch the conditional and unconditional passes with torch.cat."""
    tokens = encode_text(clip, prompts, text_len)                           # (N, T, W)
    emb = F.normalize(clip.encode_text(prompts), dim=-1)                    # (N, D)
    return torch.cat([tokens, emb.view(len(prompts), -1, tokens.shape[-1])], dim=1)


def image_embedding(clip, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-norm CLIP image embeddings (N, D) of images in [-1, 1] (N, 3, H, W)."""
    return F.normalize(clip.encode_image(clip.resize((pixels.float() + 1) / 2)), dim=-1)


# ---------------------------------------------------------------------------
# Decoder: the diffusion engine's latent UNet, conditioned on the image embedding
# ---------------------------------------------------------------------------


@dataclass
class DecoderConfig(DiffusionConfig):
    image_dim: int = 128              # CLIP embedding width (projection_dim)
    image_tokens: int = 4             # extra cross-attention tokens projected from the embedding (the paper uses 4)
    x0_clip: float = 3.0              # eps-prediction only: sampling clamps the implied clean latent (see ClampedDenoiser)
    text_cond: bool = False           # also reads the caption's CLIP token states (the paper's optional text input)
    image_clip: str = ""              # the built-in CLIP whose image embeddings it paints from, when that is not
                                      # `clip` (whose text encoder gives the token states), as GLIDE-style decoders
                                      # keep their own text encoder (provenance; "" = the same CLIP)

    @property
    def cond_dim(self) -> int:
        """Width of the flat conditioning vector: the embedding, then (text_cond) the token states."""
        return self.image_dim + (self.text_len * self.context_dim if self.text_cond else 0)


def pack_cond(image_emb: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder's conditioning as one (B, D [+ T * W]) tensor, so guidance batches it like any other."""
    return image_emb if tokens is None else torch.cat([image_emb, tokens.flatten(1)], dim=1)


class UnCLIPDecoder(LatentDiffusion):
    def __init__(self, config: DecoderConfig):
        super().__init__(config, class_embed_type="projection",
                         projection_class_embeddings_input_dim=config.image_dim)
        self.to_tokens = nn.Linear(config.image_dim, config.image_tokens * config.context_dim)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The prediction (eps or v) for z_t (B, C, 8, 8) at t (B,) given `cond` (B, cond_dim): a unit-norm
        image embedding (zeros = unconditional), followed with text_cond by the caption's CLIP token
        states (the empty caption's when there is no text); see pack_cond."""
        c = self.config
        B = z_t.shape[0]
        assert z_t.shape[1:] == self.sample_shape, f"expected (B, {self.sample_shape}), got {tuple(z_t.shape)}"
        assert cond.shape == (B, c.cond_dim), f"expected cond (B, {c.cond_dim}), got {tuple(cond.shape)}"
        x = cond[:, :c.image_dim] * math.sqrt(c.image_dim)                      # about unit variance per coordinate
        tokens = self.to_tokens(x).view(B, c.image_tokens, c.context_dim)       # (B, k, W)
        if c.text_cond:                                                         # image tokens, then the caption's
            tokens = torch.cat([tokens, cond[:, c.image_dim:].view(B, c.text_len, c.context_dim)], dim=1)
        return self.unet(z_t, t, encoder_hidden_states=tokens, class_labels=x).sample

    @torch.no_grad()
    def init_from_diffusion(self, diffusion: LatentDiffusion) -> None:
        """Start from a trained text-to-image UNet (same widths): every UNet weight is copied, and the two
        new inputs (the class embedding and the image tokens) start at zero, so at step 0 the decoder
        denoises nearly as the text model does (the zero tokens only take a little attention) and
        training mostly has to teach it the embedding."""
        missing, unexpected = self.unet.load_state_dict(diffusion.unet.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("class_embedding.") for k in missing), (missing, unexpected)
        self.set_latent_stats(diffusion.latent_mean.flatten(), diffusion.latent_std.flatten())
        for p in (*self.unet.class_embedding.linear_2.parameters(), *self.to_tokens.parameters()):
            p.zero_()


def decoder_cond(decoder: UnCLIPDecoder, clip, image_emb: torch.Tensor, captions: list[str] | None = None) -> torch.Tensor:
    """The decoder's conditioning for embeddings (N, D): with text_cond, packed with the captions' CLIP
    token states (the empty caption's where captions is None, as for variations and interpolation)."""
    if not decoder.config.text_cond:
        return image_emb
    captions = [""] * len(image_emb) if captions is None else list(captions)
    return pack_cond(image_emb, text_states(decoder, clip, captions).to(image_emb.dtype))


class ClampedDenoiser(nn.Module):
    """A noise-predicting latent denoiser whose implied clean sample is clamped to +-limit.

    Why: on DDPM's linear schedule sqrt(alphas_cumprod) at t = 999 is 0.006, so the clean
    estimate x0 = (z_t - sqrt(1 - a) eps) / sqrt(a) multiplies any error in eps by about 150.
    A few-step sampler that starts there takes that estimate at face value and never
    recovers (the unclamped samples reach a standard deviation of about 30 where the data
    has 1). Clamping x0 to the data's range and re-deriving eps from it, as diffusers' DDIM
    does for pixels with `clip_sample`, keeps every sampler (DDIM, DPM-Solver++, DDPM) on
    track. Normalised latents have unit variance per channel, so +-3 clips almost nothing real.

        x0 = (z_t - sqrt(1 - a) eps) / sqrt(a);  x0 <- clamp(x0, -limit, limit);  eps <- (z_t - sqrt(a) x0) / sqrt(1 - a)
    """
    conditional = True
    latent = True

    def __init__(self, model: UnCLIPDecoder, limit: float):
        super().__init__()
        from diffusers import DDPMScheduler

        self.model, self.limit = model, float(limit)
        alphas = DDPMScheduler.from_config(model.scheduler_config).alphas_cumprod
        self.register_buffer("alphas_cumprod", alphas.float(), persistent=False)

    config = property(lambda self: self.model.config)
    sample_shape = property(lambda self: self.model.sample_shape)
    scheduler_config = property(lambda self: self.model.scheduler_config)

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.normalize(h)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.denormalize(z)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, image_emb: torch.Tensor) -> torch.Tensor:
        eps = self.model(z_t, t, image_emb)
        a = self.alphas_cumprod.to(z_t.device)[t.long()].view(-1, 1, 1, 1).to(z_t.dtype)
        x0 = ((z_t - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-self.limit, self.limit)
        return (z_t - a.sqrt() * x0) / (1 - a).sqrt()


def sampling_denoiser(decoder: UnCLIPDecoder) -> nn.Module:
    """The decoder as samplers should run it: clamped when it predicts noise and its config asks for it
    (v-prediction needs no clamp: its clean estimate does not amplify the error at t = T)."""
    limit = getattr(decoder.config, "x0_clip", 0.0)
    if decoder.config.prediction_type != "epsilon" or not limit or limit <= 0:
        return decoder
    return ClampedDenoiser(decoder, limit).eval()


# ---------------------------------------------------------------------------
# Checkpoints: config.json + model.safetensors, float16 on disk
# ---------------------------------------------------------------------------

KINDS = {"prior": (PriorConfig, DiffusionPrior), "decoder": (DecoderConfig, UnCLIPDecoder)}


def save_pretrained(model: DiffusionPrior | UnCLIPDecoder, directory: str | Path) -> None:
    from safetensors.torch import save_file

    kind = "prior" if isinstance(model, DiffusionPrior) else "decoder"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"unclip": kind, **asdict(model.config)}, indent=2))
    save_file({k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()},
              str(directory / "model.safetensors"))


def from_pretrained(directory: str | Path, kind: str | None = None) -> DiffusionPrior | UnCLIPDecoder:
    """A saved prior or decoder; `kind` ('prior' or 'decoder') checks which one the folder holds."""
    from safetensors.torch import load_file

    directory = Path(directory)
    raw = json.loads((directory / "config.json").read_text())
    found = raw.pop("unclip", None)
    if found not in KINDS or (kind is not None and found != kind):
        raise ValueError(f"{directory.name} holds no unCLIP {kind or 'prior or decoder'} (config says {found!r})")
    config_cls, model_cls = KINDS[found]
    model = model_cls(config_cls(**raw))
    model.load_state_dict({k: v.float() for k, v in load_file(str(directory / "model.safetensors")).items()})
    return model.eval()


# ---------------------------------------------------------------------------
# The built-in pair behind the unCLIP engine's interface (Karlo's adapter: models/karlo.py)
# ---------------------------------------------------------------------------


class UnCLIPParts:
    """The built-in shapes pair: prior + decoder over the built-in VQGAN and CLIP.

    `clip` gives every embedding (the prior's input and output, ranking, variations, the caption
    pool); `text_clip` (default: the same) is the text encoder whose token states the decoder reads,
    as GLIDE-style decoders keep their own: the built-in preset's `text_encoder`, the CLIP before the one
    that sees shapes, whose token states the diffusion model and the decoder learnt to read.

    The interface the engine uses (Karlo's adapter has the same):
        prior, decoder                 denoisers for `denoise` (conditional, sample_shape, scheduler_config)
        prompt_cond(prompts)           the prior's conditioning;  prompt_cond([""]) the unconditional one
        text_embedding(prompts)        unit-norm CLIP text embeddings (N, D), for ranking candidates
        image_embedding(images)        unit-norm CLIP image embeddings (N, D) of PIL pictures
        to_embedding(x)                the prior's sample -> unit-norm embedding (N, D)
        decoder_cond(emb, prompts)     the decoder's conditioning (prompts: text mode's, else None)
        decoder_null(n)                its unconditional input
        decode(z), preview(z)          the decoder's sample -> pictures in [-1, 1] (N, 3, H, W); preview may be cheaper
        encode(images)                 PIL pictures -> the decoder's sample space (variations below strength 1)
        device, pool_key               where it runs; what the caption pool's embeddings depend on
    Embeddings may carry a norm (Karlo's do); similarities and interpolation use their directions.
    """
    def __init__(self, prior, decoder, vqgan, clip, text_clip=None):
        # the decoder as the samplers run it (its clean estimate clamped to the latents' range)
        self.prior, self.decoder, self.vqgan, self.clip = prior, sampling_denoiser(decoder), vqgan, clip
        self.text_clip = clip if text_clip is None else text_clip

    @property
    def image_size(self) -> int:
        return self.decoder.config.image_size

    @property
    def device(self) -> torch.device:
        return self.clip.mean.device

    def prompt_cond(self, prompts: list[str]) -> torch.Tensor:
        return encode_prompt(self.clip, prompts, self.prior.config.text_len)

    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(prompts), dim=-1)

    def image_embedding(self, images: list[Image.Image]) -> torch.Tensor:
        return image_embedding(self.clip, _pixels(images, self.image_size, self.device))

    def to_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)

    @property
    def pool_key(self):
        return self.clip                      # the caption pool's embeddings depend on the CLIP only

    def decoder_cond(self, emb: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        # the embedding's direction, plus (decoders trained with text) the prompt's token states
        return decoder_cond(self.decoder, self.text_clip, F.normalize(emb.float(), dim=-1), prompts)

    def decoder_null(self, n: int) -> torch.Tensor:
        return decoder_cond(self.decoder, self.text_clip, torch.zeros(n, self.decoder.config.image_dim, device=self.device))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z_q = self.vqgan.quantize(self.decoder.denormalize(z))[0]
        return self.vqgan.decode(z_q).clamp(-1, 1)

    preview = decode                          # cheap here: one VQGAN decoder pass

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        return self.decoder.normalize(self.vqgan.encode_latent(_pixels(images, self.image_size, self.device)))


def _pixels(images: list[Image.Image], side: int, device) -> torch.Tensor:
    """PIL pictures -> (N, 3, side, side) in [-1, 1], centre-cropped to squares."""
    return media.to_tensor([media.square(img.convert("RGB"), side) for img in images]).to(device)
