"""CLIP: contrastive text and image encoders (Radford et al., 2021), via transformers.

A thin wrapper over `transformers.CLIPModel` and its tokenizer that serves every
engine: VQGAN+CLIP steers with it (differentiable image encoding), DALL-E reranks
with it, unCLIP conditions on it. It loads any `openai/clip-vit-base-patch32`-style
folder or hub id (config.json, model.safetensors, tokenizer and
preprocessor_config.json), Atelier's built-in shapes CLIP included, which
`lab/train/clip.py` trains and saves in exactly that layout.

The built-in CLIPs' image towers are not ViTs but small convolutional networks, named in the
vision config; their text tower, projections and file layout are transformers' CLIPModel's. On
32 px pictures a small object is 8 px across: the 4-layer ViT of 4x4 patches that the built-in
CLIP had before held shape only in a tangled form (a linear probe read 31 %), and convolutions
keep it. `ConvTower` (`"tower": "conv"`, `presets/weights/shapes-clip-conv`) is one stack;
`FactoredTower` (`"tower": "factored"`, `presets/weights/shapes-clip-factored`, the shapes
preset's `clip`) splits it into a colour-blind shape path and a colour path whose outputs add, so
that a colour and a shape never seen together still compose (docs/model-history.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

# OpenAI CLIP's RGB statistics, used when a folder has no preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConvTower(nn.Module):
    """The built-in CLIP's image tower, in place of transformers' ViT (`"tower": "conv"` in the vision config).

    Three levels of two 3x3 convolutions (32, 64, 128 channels; the first of the second and third levels has
    stride 2), each followed by GroupNorm and GELU; a 1x1 convolution to 32 channels; the (H/4 x W/4) grid
    flattened and mapped to `hidden_size` (GELU), which the CLIPModel's `visual_projection` then maps to the
    embedding. Flattening gives each place of the grid its own weights, so where an object is stays readable
    from the embedding, and the full-resolution convolutions keep the edges that tell a 6 px triangle from a
    diamond. The ViT fields of the config (layers, heads, patch size) are unused.

    Measured on shapes scenes (1 CPU thread, lone-object linear probes after 300 steps of 128 with attribute
    heads alone): this tower read shape 94 % and position 100 %; the 4-layer ViT with a convolutional stem
    30 % and 37 %, at 3.7x the time per step.
    """
    WIDTHS = (32, 64, 128)

    def __init__(self, config):
        super().__init__()
        self.features, self.pool = self.convolutions(config.num_channels, config)

    @classmethod
    def convolutions(cls, channels: int, config) -> tuple[nn.Sequential, nn.Linear]:
        """The convolutions from `channels` input maps to the 32-channel grid, and the linear map of the flattened
        grid to `hidden_size`."""
        layers, c = [], channels
        for level, w in enumerate(cls.WIDTHS):
            for k in range(2):
                layers += [nn.Conv2d(c, w, 3, stride=2 if level and not k else 1, padding=1), nn.GroupNorm(8, w), nn.GELU()]
                c = w
        layers.append(nn.Conv2d(c, 32, 1))
        grid = config.image_size // 2 ** (len(cls.WIDTHS) - 1)
        return nn.Sequential(*layers), nn.Linear(32 * grid * grid, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, **_):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=F.gelu(self.pool(self.features(pixel_values).flatten(1))))


class FactoredTower(nn.Module):
    """A convolutional image tower in two paths whose outputs add (`"tower": "factored"`): one that sees shape but
    no colour, one that sees colour but barely any shape.

    - **Shape path**: ConvTower's convolutions, fed not the colours but where the picture differs from its
      background (1 - exp(-|x - b|^2 / tau^2), b the per-channel median colour of the picture) and whether each
      pixel has its neighbour's colour (right, down and both diagonals). A green triangle and an orange one give it
      the same input, so what it learns of triangles holds in every colour, seen with a triangle or not.
    - **Colour path**: two 1x1 convolutions (each pixel's colour alone), averaged over a 4x4 grid of 8x8 cells:
      which colours are where, with no edge to read a shape from.
    - The two grids, flattened, are mapped linearly to `hidden_size` and added, with no nonlinearity after, so the
      embedding is a sum of a shape part and a colour part, both tied to places: "a green triangle at the top" is
      the triangle-at-the-top part plus the green-at-the-top part, whether or not training ever showed that pair.
    """
    TAU = 0.45         # in normalised units (CLIP's std is about 0.27): palette colours differ by 1.15 or more (orange and
                       # yellow), which leaves 0.25 % of the colour difference in the maps
    OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
    COLOUR_GRID = 4

    def __init__(self, config):
        super().__init__()
        self.features, self.pool = ConvTower.convolutions(1 + len(self.OFFSETS), config)
        self.colour = nn.Sequential(nn.Conv2d(config.num_channels, 32, 1), nn.GELU(), nn.Conv2d(32, 32, 1), nn.GELU())
        self.colour_pool = nn.Linear(32 * self.COLOUR_GRID ** 2, config.hidden_size)

    def shape_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 5, H, W): the foreground map and the four same-colour-as-neighbour maps, all colour-blind."""
        tau2 = self.TAU ** 2
        background = x.detach().flatten(2).median(-1).values[..., None, None]
        maps = [1 - torch.exp(-(x - background).square().sum(1, keepdim=True) / tau2)]
        pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
        H, W = x.shape[-2:]
        for dy, dx in self.OFFSETS:
            shifted = pad[..., 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
            maps.append(torch.exp(-(x - shifted).square().sum(1, keepdim=True) / tau2))
        return torch.cat(maps, 1)

    def shape_part(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(self.shape_input(x)).flatten(1))

    def colour_part(self, x: torch.Tensor) -> torch.Tensor:
        return self.colour_pool(F.adaptive_avg_pool2d(self.colour(x), self.COLOUR_GRID).flatten(1))

    def forward(self, pixel_values: torch.Tensor, **_):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=self.shape_part(pixel_values) + self.colour_part(pixel_values))


TOWERS = {"conv": ConvTower, "factored": FactoredTower}


def install_tower(model) -> None:
    """Give a CLIPModel the image tower its vision config names (`"tower": "conv"` or `"factored"`); a ViT is left
    as it is."""
    tower = getattr(model.config.vision_config, "tower", None)
    if tower is None:
        return
    if tower not in TOWERS:
        raise ValueError(f"unknown CLIP image tower {tower!r} (known: {', '.join(map(repr, TOWERS))})")
    if type(model.vision_model) is not TOWERS[tower]:
        model.vision_model = TOWERS[tower](model.config.vision_config).to(model.visual_projection.weight.dtype)


class CLIP(nn.Module):
    def __init__(self, model, tokenizer, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    @property
    def context_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids padded to the longest text, truncated to the context length."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.mean.device),
                "attention_mask": enc["attention_mask"].to(self.mean.device)}

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Projected text embeddings (N, D), not normalised."""
        return self.model.get_text_features(**self.tokenize(texts)).pooler_output

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (N, D) of images in [0, 1] at the input size; differentiable."""
        assert pixels.shape[-2:] == (self.image_size, self.image_size), (
            f"CLIP expects {self.image_size}x{self.image_size} input, got {tuple(pixels.shape[-2:])}")
        x = (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)
        if self.model.training:  # dropout and the rest of transformers' training path
            return self.model.get_image_features(pixel_values=x.to(self.model.dtype)).pooler_output.float()
        twin = _cpu_autocast_twin(self.model, x)
        if twin is not None:
            with torch.autocast("cpu", enabled=False):
                return _image_features(twin, x.to(twin.visual_projection.weight.dtype)).float()
        return _image_features(self.model, x.to(self.model.dtype)).float()

    def resize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Bicubic resize (with antialiasing) to the model's input size."""
        if pixels.shape[-2:] == (self.image_size, self.image_size):
            return pixels
        return F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic",
                             align_corners=False, antialias=True).clamp(0, 1)

    @torch.no_grad()
    def similarity(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarity (N_images, N_texts) for ranking, e.g. reranking DALL-E candidates."""
        img = F.normalize(self.encode_image(self.resize(pixels)), dim=-1)
        txt = F.normalize(self.encode_text(texts), dim=-1)
        return img @ txt.t()


class CLIPEnsemble:
    """Several CLIPs judging as one, as Disco Diffusion and pixray let a picture answer to several CLIPs at
    once: a picture that fools one CLIP seldom fools a second trained differently.

    Each member's embedding is normalised, scaled by sqrt(weight / total weight), and the pieces are
    concatenated. The result has unit norm, and the squared chord between two such embeddings is the
    weighted mean of the members' squared chords, so VQGAN+CLIP's spherical-distance loss (and a cosine)
    sees every member at once with no change to the loop. Pictures come at the first member's input
    size; the others resize them to theirs. A plain view over the members, not a module: the registry
    owns them (their device and dtype), and nothing here can move them."""

    def __init__(self, members, weights=None):
        if len(members) < 1:
            raise ValueError("A CLIP ensemble needs at least one CLIP.")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members) or min(weights) <= 0:
            raise ValueError("A CLIP ensemble needs one positive weight per CLIP.")
        self.members = tuple(members)
        self.scales = [(w / sum(weights)) ** 0.5 for w in weights]

    @property
    def image_size(self) -> int:
        return self.members[0].image_size

    @property
    def embed_dim(self) -> int:
        return sum(m.embed_dim for m in self.members)

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.normalize(e.float(), dim=-1) * k for e, k in zip(parts, self.scales)], dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N, sum of the members' dims), unit norm."""
        return self._join([m.encode_text(texts) for m in self.members])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, sum of the members' dims), unit norm; differentiable."""
        return self._join([m.encode_image(m.resize(pixels)) for m in self.members])


def _cpu_autocast_twin(model, pixels: torch.Tensor):
    """Under a CPU autocast to bfloat16 or float16: a copy of the vision tower and its projection in that dtype,
    cached on the model while its weights stay the same (`_derived`), so that the pass runs in that dtype with no
    casts. Autocast would cast every weight and bias at every call, and back for the gradients (about 260 copies
    per VQGAN+CLIP iteration with the 4-layer shapes CLIP); the copy made the shapes loop about 15 % faster
    (median of 6 runs of 100 iterations, 21.6 against 17.9 it/s). It costs the tower's size again in that dtype
    (176 MB for ViT-B/32). None elsewhere: on a GPU, in float32, or with weights that require grad."""
    if pixels.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    dtype = torch.get_autocast_dtype("cpu")
    params = tuple(model.vision_model.parameters()) + tuple(model.visual_projection.parameters())
    if dtype == torch.float32 or params[0].dtype != torch.float32 or any(t.requires_grad for t in params):
        return None

    def make(*_):
        import copy
        twin = nn.Module()
        twin.vision_model = copy.deepcopy(model.vision_model).to(dtype)
        twin.visual_projection = copy.deepcopy(model.visual_projection).to(dtype)
        for m in twin.modules():  # the copies' own caches of derived weights belong to the float32 weights
            m.__dict__.pop("_atelier_derived", None)
        return twin
    return _derived(model, params, make, tag=dtype)


def _image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """`model.get_image_features(pixel_values).pooler_output` of an eval-mode CLIPModel, equal to float rounding,
    for less work:
      - the vision tower's modules are called directly (no output capturing or attention dispatch);
      - the patch embedding, a convolution whose stride is its kernel, is a reshape and one matrix product;
      - each layer's query, key and value projections are one matrix product (keys and values one for the last);
      - the last layer runs only for the class token, the one position the embedding reads (its queries,
        attention output and MLP skip the patch tokens);
      - the MLP's quick-GELU is torch's fused SiLU, its constant folded into the two linear layers (`_mlp`).
    Derived weights are cached on their module while its weights stay the same (see `_derived`).
    Forward and backward of 16 cutouts through the 4-layer shapes CLIP (the VQGAN+CLIP loop's main cost), fastest
    of 40 on 2 CPU threads: transformers 47 ms, this pass 28 ms (1.7x; 1.45x with the class-token layer alone)."""
    vm = model.vision_model
    if isinstance(vm, tuple(TOWERS.values())):   # the built-in CLIP's towers have nothing to spare
        return model.visual_projection(vm(pixel_values).pooler_output)
    emb = vm.embeddings
    B, C, H, W = pixel_values.shape
    conv = emb.patch_embedding
    p = conv.kernel_size[0]
    patches = (pixel_values.to(conv.weight.dtype).reshape(B, C, H // p, p, W // p, p)
               .permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p))
    x = F.linear(patches, conv.weight.reshape(conv.weight.shape[0], -1), conv.bias)
    x = torch.cat([emb.class_embedding.to(x.dtype).expand(B, 1, -1), x], dim=1) + emb.position_embedding.weight
    x = vm.pre_layrnorm(x)
    layers = vm.encoder.layers
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        att = layer.self_attn
        h = layer.layer_norm1(x)
        heads = (B, -1, att.num_heads, att.head_dim)
        w, b = _derived(att, (att.q_proj.weight, att.k_proj.weight, att.v_proj.weight,
                              att.q_proj.bias, att.k_proj.bias, att.v_proj.bias),
                        lambda wq, wk, wv, bq, bk, bv: (torch.cat([wq, wk, wv]), torch.cat([bq, bk, bv])))
        d = att.q_proj.weight.shape[0]
        if last:
            q = F.linear(h[:, :1], w[:d], b[:d]).view(heads).transpose(1, 2)
            k, v = F.linear(h, w[d:], b[d:]).view(B, -1, 2, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = F.linear(h, w, b).view(B, -1, 3, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
        a = _attention(q, k, v, att.scale)
        a = att.out_proj(a.transpose(1, 2).reshape(B, q.shape[2], -1))
        x = (x[:, :1] if last else x) + a
        x = x + _mlp(layer.mlp, layer.layer_norm2(x))
    return model.visual_projection(vm.post_layernorm(x[:, 0]))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v. On a CPU in bfloat16 or float16 (autocast) as two batched matrix products around a
    float32 softmax: torch's CPU flash-attention kernel runs its backward 3-4x slower in bfloat16 than in float32
    (16 shapes cutouts: 5.4 against 1.6 ms per layer), which cost more than bfloat16's matrix products saved.
    Elsewhere, and in float32, torch's fused kernel."""
    low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    if q.device.type != "cpu" or low == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    s = torch.matmul(q * scale, k.transpose(-1, -2))
    return torch.matmul(s.float().softmax(-1).to(v.dtype), v)


QUICK_GELU = 1.702   # quick_gelu(y) = y * sigmoid(1.702 y) = silu(1.702 y) / 1.702


def _derived(module: nn.Module, params: tuple, make, tag=None):
    """`make(*params)`, cached on `module` (a plain attribute, not in its state dict) until any of the parameters
    changes: another tensor, an in-place update (load_state_dict, an optimiser step), another device or dtype.
    Parameters that require grad are never cached, so that their gradient flows through `make`."""
    if any(t is not None and t.requires_grad for t in params):
        return make(*params)
    key = tuple((t.data_ptr(), t._version, t.device, t.dtype) if t is not None else None for t in params)
    cache = module.__dict__.setdefault("_atelier_derived", {})
    slot = (id(make.__code__), tag)
    hit = cache.get(slot)
    if hit is None or hit[0] != key:
        with torch.no_grad():
            hit = cache[slot] = (key, make(*params))
    return hit[1]


def _mlp(mlp, h: torch.Tensor) -> torch.Tensor:
    """`mlp(h)`; for OpenAI CLIP's quick-GELU, with the constant folded into the two linear layers so that the
    activation is torch's fused SiLU: fc2(quick_gelu(fc1 h)) = (W2 / 1.702) silu((1.702 W1) h + 1.702 b1) + b2.
    Three element-wise passes over the widest tensor (and their backward) become one."""
    if mlp.config.hidden_act != "quick_gelu":
        return mlp(h)
    w1, b1, w2 = _derived(mlp, (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight),
                          lambda w1, b1, w2: (w1 * QUICK_GELU, b1 * QUICK_GELU, w2 / QUICK_GELU))
    return F.linear(F.silu(F.linear(h, w1, b1)), w2, mlp.fc2.bias)


def load_clip(name_or_path: str | Path, local_files_only: bool = True) -> CLIP:
    """Load a CLIP folder or hub id: weights via CLIPModel, text via the saved tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    config = CLIPConfig.from_pretrained(str(name_or_path), local_files_only=local_files_only)
    if getattr(config.vision_config, "tower", None) is not None:   # the built-in CLIP: a convolutional image tower
        from safetensors.torch import load_file
        model = CLIPModel(config)
        install_tower(model)
        model.load_state_dict({k: v.float() for k, v in load_file(Path(name_or_path) / "model.safetensors").items()})
    else:
        # float32 in memory whatever the file holds (a float16 export would otherwise load as float16)
        model = CLIPModel.from_pretrained(str(name_or_path), local_files_only=local_files_only, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local_files_only)
    mean, std = CLIP_MEAN, CLIP_STD
    pre = Path(name_or_path) / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    return CLIP(model.eval(), tokenizer, mean, std)


def save_clip(clip: CLIP, directory: str | Path, float16: bool = False) -> None:
    """Write the hub layout: config.json + model.safetensors + tokenizer + preprocessor_config.json
    (the weights in float16 if asked: half the size, for CLIPs too wide to commit in float32)."""
    import copy

    from transformers import CLIPImageProcessor

    directory = Path(directory)
    (copy.deepcopy(clip.model).half() if float16 else clip.model).save_pretrained(directory)
    clip.tokenizer.save_pretrained(directory)
    size = clip.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(clip.mean.flatten().tolist()),
                       image_std=list(clip.std.flatten().tolist())).save_pretrained(directory)
