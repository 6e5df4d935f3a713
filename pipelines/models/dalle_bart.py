"""DALL-E Mega and DALL-E Mini as min-dalle publishes them: a BART reads the caption and writes
the picture as 256 codes of a VQGAN, one at a time.

The models are Boris Dayma et al.'s DALL-E Mini and Mega (trained in JAX); Brett Kuprel's
min-dalle (MIT licence) converted them to PyTorch files in the hub repo `kuprel/min-dalle`.
This file is our own code for those files, written from min-dalle 0.4.11's behaviour:

    text   = tokenize(prompt)            (64,)  <s> BPE ids </s>, padded with 1
    state  = encoder(text)               (64, C) a BART encoder (GLU feed-forward, extra LayerNorms)
    codes  = decoder.sample(state)       (256,) one code per step with a KV cache; "supercondition":
                                         logits = cond * s + uncond * (1 - s), uncond = the empty text
    image  = detokenizer(codes)          (3, 256, 256) the f16 VQGAN's decoder on the 16 x 16 grid

Files in `kuprel/min-dalle` (torch.save'd dicts of tensors; the BARTs in float16, the VQGAN in
float32). Mega and Mini share the VQGAN:

    Mega  encoder.pt       decoder.pt       vocab.json       merges.txt       (2.2 + 3.0 GB)
    Mini  encoder_mini.pt  decoder_mini.pt  vocab_mini.json  merges_mini.txt  (405 + 471 MB)
    both  detoker.pt                                                          (187 MB)

min-dalle hardcodes the two models' sizes; here every size is read from the tensors' shapes,
so any checkpoint of this layout loads (our tiny stand-ins too). The one thing shapes cannot
tell is the number of attention heads: both models use 64 channels per head (Mega 2048 / 32,
Mini 1024 / 16), and so does this file. The LayerNorms that DALL-E Mini trains without a
scale have no `.weight` in the files; they load with a scale of 1, as min-dalle's do.

Notation: B batch, T text tokens (64), N image tokens (256), C width, V_img = 16384 codes.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.models.dalle import draw_codes, filter_logits
from pipelines.models.vqgan import Decoder as VQGANDecoder
from pipelines.models.vqgan import VQGANConfig

HEAD_DIM = 64              # channels per attention head in both published models
PAD_ID = 1                 # BART's <pad>: padded text positions are never attended to
N_CODES = 2 ** 14          # the VQGAN's codebook; the decoder's logits beyond it are never sampled
START_CODE = 2 ** 14 - 1   # the decoder's first input, as min-dalle 0.4.11 feeds it
WORD_START = chr(ord(" ") + 256)   # "Ġ": BPE's mark of a word's first letter (GPT-2's byte for a space)

# role -> file name in kuprel/min-dalle; "ckpt" is the main weights (whose digest names the model)
MEGA_FILES = {"ckpt": "decoder.pt", "encoder": "encoder.pt", "vocab": "vocab.json", "merges": "merges.txt"}
MINI_FILES = {"ckpt": "decoder_mini.pt", "encoder": "encoder_mini.pt", "vocab": "vocab_mini.json",
              "merges": "merges_mini.txt"}
DETOKENIZER_FILES = {"ckpt": "detoker.pt"}
# LayerNorms DALL-E Mini/Mega train without a scale ("force_ln_scale": false): no `.weight` in the files
SCALE_FREE_NORMS = ("pre_self_attn_layer_norm", "pre_encoder_attn_layer_norm", "glu.ln0", "glu.ln1", "final_ln")


class LayoutError(ValueError):
    """A file that is not what min-dalle's layout says; `path` names it for the user's message."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{Path(path).name}: {reason}")
        self.path, self.reason = Path(path), reason


def hub_files(mega: bool) -> dict[str, str]:
    """The BART's files in kuprel/min-dalle, by role."""
    return dict(MEGA_FILES if mega else MINI_FILES)


# ---------------------------------------------------------------------------
# The text tokenizer: lower-case ASCII words, each split into BPE subwords of vocab.json
# ---------------------------------------------------------------------------


class TextTokenizer:
    """min-dalle's tokenizer. Differences: words split at any whitespace (min-dalle: spaces only), and
    emoji are dropped with every other non-ASCII character (min-dalle first spells them out in words)."""

    def __init__(self, vocab: Mapping[str, int], merges: list[tuple[str, str]], text_len: int):
        self.vocab = dict(vocab)
        self.rank = {pair: i for i, pair in enumerate(merges)}   # lower rank = merged first
        self.text_len = text_len
        self.bos, self.eos, self.unk = vocab["<s>"], vocab["</s>"], vocab["<unk>"]

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path, text_len: int) -> "TextTokenizer":
        try:
            vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LayoutError(vocab_path, f"not a JSON vocabulary ({e})") from None
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise LayoutError(vocab_path, "not a vocabulary (a JSON object of token -> id)")
        missing = [t for t in ("<s>", "</s>", "<unk>") if t not in vocab]
        if missing:
            raise LayoutError(vocab_path, f"the vocabulary lacks {', '.join(missing)}")
        try:
            lines = Path(merges_path).read_text(encoding="utf-8").split("\n")[1:]   # line 1: "#version: ..."
        except UnicodeDecodeError as e:
            raise LayoutError(merges_path, f"not a text file of BPE merges ({e})") from None
        merges = [tuple(line.split()) for line in lines if line.strip()]
        bad = next((m for m in merges if len(m) != 2), None)
        if bad is not None:
            raise LayoutError(merges_path, f"a merge must be two subwords, not {' '.join(bad)!r}")
        return cls(vocab, merges, text_len)

    @staticmethod
    def words(text: str) -> list[str]:
        """The words the model reads: lower case, ASCII only."""
        return text.lower().encode("ascii", errors="ignore").decode().split()

    def bpe(self, word: str) -> list[str]:
        """Merge the best-ranked adjacent pair (its first occurrence) until no pair has a rank."""
        parts = [WORD_START] + list(word)
        while len(parts) > 1:
            pairs = list(zip(parts, parts[1:]))
            best = min(range(len(pairs)), key=lambda i: self.rank.get(pairs[i], math.inf))
            if pairs[best] not in self.rank:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return parts

    def encode(self, text: str) -> tuple[list[int], str | None]:
        """The ids <s> ... </s> (at most text_len of them) and None, or the words kept when the text was longer.

        Like min-dalle, a text that does not fit keeps its first text_len ids (the end token goes too).
        """
        ids, kept = [self.bos], []
        for word in self.words(text):
            ids += [self.vocab.get(sub, self.unk) for sub in self.bpe(word)]
            if len(ids) <= self.text_len:
                kept.append(word)
        ids.append(self.eos)
        if len(ids) <= self.text_len:
            return ids, None
        return ids[:self.text_len], " ".join(kept)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, list[str | None]]:
        """(B, text_len) ids padded with PAD_ID, and per text None or the part kept (see `encode`)."""
        rows, kept = [], []
        for text in texts:
            ids, part = self.encode(text)
            rows.append(ids + [PAD_ID] * (self.text_len - len(ids)))
            kept.append(part)
        return torch.tensor(rows, dtype=torch.long), kept


# ---------------------------------------------------------------------------
# The BART: attention, GLU, encoder and decoder layers (min-dalle's module names)
# ---------------------------------------------------------------------------


@dataclass
class BartConfig:
    text_vocab: int          # rows of the encoder's embedding (Mega 50272, Mini 50264)
    text_len: int            # caption positions (64)
    image_vocab: int         # the decoder's codes (Mega 16415, Mini 16384); one more row is the start
    image_len: int           # image positions (256 = a 16 x 16 grid)
    embed: int               # width C (Mega 2048, Mini 1024)
    glu: int                 # the GLU's inner width (Mega 4096, Mini 2730)
    encoder_layers: int      # Mega 24, Mini 12
    decoder_layers: int      # Mega 24, Mini 12
    pad_id: int = PAD_ID
    n_codes: int = N_CODES   # codes the sampler draws from (the VQGAN's codebook)

    @property
    def heads(self) -> int:
        return self.embed // HEAD_DIM

    @property
    def grid(self) -> int:
        return math.isqrt(self.image_len)


class Attention(nn.Module):
    """Multi-head attention without biases; keys and values come split into heads."""

    def __init__(self, embed: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(embed, embed, bias=False)
        self.v_proj = nn.Linear(embed, embed, bias=False)
        self.q_proj = nn.Linear(embed, embed, bias=False)
        self.out_proj = nn.Linear(embed, embed, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, heads, T, C / heads)."""
        B, T, C = x.shape
        return x.view(B, T, self.heads, C // self.heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def forward(self, x: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, Tq, C) reads the keys and values (B, heads, Tk, d) where mask (B or 1, 1, Tq or 1, Tk) is True."""
        k, v = keys_values
        out = F.scaled_dot_product_attention(self.split(self.q_proj(x)), k, v, attn_mask=mask)  # scale 1/sqrt(d)
        B, _, T, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, -1))


class GLU(nn.Module):
    """The feed-forward: LayerNorm, GELU(fc0 x) * fc1 x, LayerNorm, fc2 (NormFormer's extra norm)."""

    def __init__(self, embed: int, hidden: int):
        super().__init__()
        self.ln0 = nn.LayerNorm(embed)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc0 = nn.Linear(embed, hidden, bias=False)
        self.fc1 = nn.Linear(embed, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, embed, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln0(x)
        return self.fc2(self.ln1(F.gelu(self.fc0(x)) * self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.self_attn = Attention(cfg.embed, cfg.heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.glu = GLU(cfg.embed, cfg.glu)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        h = self.pre_self_attn_layer_norm(x)
        x = x + self.self_attn_layer_norm(self.self_attn(h, self.self_attn.keys_values(h), text_mask))
        return x + self.glu(x)


class Encoder(nn.Module):
    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.text_vocab, cfg.embed)
        self.embed_positions = nn.Embedding(cfg.text_len, cfg.embed)
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.encoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(cfg.embed)
        self.final_ln = nn.LayerNorm(cfg.embed)

    def forward(self, text_ids: torch.Tensor) -> torch.Tensor:
        """The text's states (B, T, C); padding is never attended to."""
        positions = torch.arange(text_ids.shape[1], device=text_ids.device)
        x = self.layernorm_embedding(self.embed_tokens(text_ids) + self.embed_positions(positions))
        mask = text_mask(text_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_ln(x)


def text_mask(text_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, T): True where a text position holds a token, not padding."""
    return (text_ids != PAD_ID)[:, None, None, :]


@dataclass
class Cache:
    """What the decoder keeps between steps, per layer: the text's keys and values (computed once)
    and those of the image positions read so far."""
    text: list[tuple[torch.Tensor, torch.Tensor]]
    text_mask: torch.Tensor
    image: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    length: int = 0          # image positions in `image`


class DecoderLayer(nn.Module):
    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.pre_self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.self_attn = Attention(cfg.embed, cfg.heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.pre_encoder_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.encoder_attn = Attention(cfg.embed, cfg.heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(cfg.embed)
        self.glu = GLU(cfg.embed, cfg.glu)

    def forward(self, x, past: tuple[torch.Tensor, torch.Tensor] | None, causal: torch.Tensor | None,
                text_kv: tuple[torch.Tensor, torch.Tensor], text_mask: torch.Tensor):
        """x (B, L, C): L new image positions after the cached ones; returns x and the grown keys/values."""
        # 1. self-attention over the image positions so far (cached) and the new ones
        h = self.pre_self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.self_attn_layer_norm(self.self_attn(h, (k, v), causal))
        # 2. cross-attention to the text
        h = self.pre_encoder_attn_layer_norm(x)
        x = x + self.encoder_attn_layer_norm(self.encoder_attn(h, text_kv, text_mask))
        # 3. feed-forward
        return x + self.glu(x), (k, v)


class Decoder(nn.Module):
    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.image_vocab + 1, cfg.embed)
        self.embed_positions = nn.Embedding(cfg.image_len, cfg.embed)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(cfg.embed)
        self.final_ln = nn.LayerNorm(cfg.embed)
        self.lm_head = nn.Linear(cfg.embed, cfg.image_vocab + 1, bias=False)

    def start(self, text_state: torch.Tensor, text_ids: torch.Tensor) -> Cache:
        """An empty cache for these texts, holding every layer's keys and values of the text."""
        return Cache([layer.encoder_attn.keys_values(text_state) for layer in self.layers], text_mask(text_ids))

    def forward(self, tokens: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Logits (B, L, image_vocab + 1) after the inputs `tokens` (B, L), which follow the cache's positions.
        The cache grows by L positions."""
        L, start = tokens.shape[1], cache.length
        positions = torch.arange(start, start + L, device=tokens.device)
        x = self.layernorm_embedding(self.embed_tokens(tokens) + self.embed_positions(positions))
        # position start + i reads positions 0 .. start + i; one new position reads them all
        causal = None if L == 1 else (torch.arange(start + L, device=tokens.device)[None] <= positions[:, None])
        grown = []
        for i, layer in enumerate(self.layers):
            past = cache.image[i] if cache.image else None
            x, kv = layer(x, past, causal, cache.text[i], cache.text_mask)
            grown.append(kv)
        cache.image, cache.length = grown, start + L
        return self.lm_head(self.final_ln(x))


class DalleBart(nn.Module):
    """The encoder, the decoder and the text tokenizer; the DALL-E engine's `dalle` model."""

    generator_device = "cpu"   # codes are drawn with a CPU generator: a seed gives the same codes on any device

    def __init__(self, config: BartConfig, tokenizer: TextTokenizer | None = None):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.text = tokenizer

    def forward(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced scores (B, N, V_img): position i scores code i given the text and codes < i."""
        cache = self.decoder.start(self.encoder(text_ids), text_ids)
        inputs = torch.cat([codes.new_full((codes.shape[0], 1), START_CODE), codes[:, :-1]], dim=1)
        return self.decoder(inputs, cache)[..., :self.config.n_codes]

    @torch.inference_mode()
    def sample(self, text_ids: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               guidance: float = 1.0, generator: torch.Generator | None = None,
               prefix_codes: torch.Tensor | None = None, subgenerator: torch.Generator | None = None,
               subseed_strength: float = 0.0) -> Iterator[torch.Tensor]:
        """Write the image codes of every row of `text_ids` (B, T) as one batch; yields (B, k) after each code.

        `guidance` != 1 also runs the empty text (2B rows) and mixes the two as min-dalle's
        "supercondition": cond * guidance + uncond * (1 - guidance). `prefix_codes` (B, P) are
        known first codes, read in one pass before sampling continues after them. The draw happens on
        the generator's device (the scores are moved there), so a CPU generator works on a GPU too.
        `subgenerator` (on the same device) and `subseed_strength` vary the draws (dalle.draw_codes).
        """
        cfg = self.config
        B, device = text_ids.shape[0], text_ids.device
        guided = guidance != 1.0
        if guided:
            empty = self.text([""])[0].to(device).expand(B, -1)
            text_ids = torch.cat([text_ids, empty])                                  # (2B, T)
        passes = 2 if guided else 1
        cache = self.decoder.start(self.encoder(text_ids), text_ids)
        codes = text_ids.new_zeros((B, 0)) if prefix_codes is None else prefix_codes.to(device)
        x = torch.cat([codes.new_full((B, 1), START_CODE), codes], dim=1).repeat(passes, 1)
        while codes.shape[1] < cfg.image_len:
            logits = self.decoder(x, cache)[:, -1, :cfg.n_codes].float()           # (B or 2B, V_img)
            if guided:
                logits = logits[:B] * guidance + logits[B:] * (1 - guidance)
            probs = F.softmax(filter_logits(logits, top_k, top_p) / temperature, dim=-1)
            draw_on = generator.device if generator is not None else device
            nxt = draw_codes(probs.to(draw_on), generator, subgenerator, subseed_strength).to(device)   # (B, 1)
            codes = torch.cat([codes, nxt], dim=1)
            x = nxt.repeat(passes, 1)          # only the new code next time: the cache has the rest
            yield codes

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------
# The detokenizer: codebook + post_quant_conv + taming's VQGAN decoder
# ---------------------------------------------------------------------------


class Detokenizer(nn.Module):
    """min-dalle's VQGanDetokenizer (DALL-E Mini's f16 16384 VQGAN without its encoder): `embedding`
    (the codebook), `post_quant_conv`, and `decoder.*` in taming's names, which are those of Atelier's
    VQGAN decoder (pipelines/models/vqgan.py), so that decoder is reused here. Without an encoder it
    cannot turn a picture into codes. DALL-E Mini's VQGAN was fine-tuned to draw in [0, 1]; its
    GroupNorms use taming's epsilon (1e-6; min-dalle uses torch's default, 1e-5)."""

    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.n_embed, config.embed_dim)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = VQGANDecoder(config)

    @property
    def factor(self) -> int:
        return self.config.factor

    def decode_indices(self, idx: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """Pictures (B, 3, H, W) in [-1, 1], as Atelier's VQGANs give them, of codes (B, h * w) in raster order."""
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.n_embed):
            raise ValueError(f"code indices must lie in 0..{self.config.n_embed - 1}")
        B, h, w = shape
        z = self.embedding(idx.reshape(B, h, w)).permute(0, 3, 1, 2)
        x = self.decoder(self.post_quant_conv(z))
        return x.clamp(0, 1) * 2 - 1


# ---------------------------------------------------------------------------
# Files: reading them, sizes from shapes, loading strictly
# ---------------------------------------------------------------------------


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A torch.save'd dict of tensors, read safely (weights_only) and memory-mapped where the format allows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # an unpickling error, a broken zip, not a torch file at all
        raise LayoutError(path, f"not a torch file of tensors ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LayoutError(path, "holds no dict of tensors")
    return obj


def _shape(sd: Mapping[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in sd:
        raise LayoutError(path, f"no tensor '{key}', so it is not a min-dalle checkpoint of this part")
    return tuple(sd[key].shape)


def _count(sd: Mapping[str, torch.Tensor], template: str) -> int:
    """How many i make template.format(i) a key (consecutive from 0)."""
    n = 0
    while template.format(n) in sd:
        n += 1
    return n


def bart_config(encoder: Mapping, decoder: Mapping, encoder_path: Path, decoder_path: Path) -> BartConfig:
    """The BART's sizes, read from the shapes of its two files' tensors."""
    text_vocab, embed = _shape(encoder, "embed_tokens.weight", encoder_path)
    text_len, _ = _shape(encoder, "embed_positions.weight", encoder_path)
    glu, _ = _shape(encoder, "layers.0.glu.fc0.weight", encoder_path)
    image_rows, _ = _shape(decoder, "embed_tokens.weight", decoder_path)
    image_len, _ = _shape(decoder, "embed_positions.weight", decoder_path)
    _shape(decoder, "layers.0.encoder_attn.q_proj.weight", decoder_path)   # a decoder, not a second encoder
    if embed % HEAD_DIM:
        raise LayoutError(encoder_path, f"a width of {embed} does not split into heads of {HEAD_DIM}")
    if image_rows - 1 < N_CODES:
        raise LayoutError(decoder_path, f"{image_rows - 1} image codes, fewer than the VQGAN's {N_CODES}")
    if math.isqrt(image_len) ** 2 != image_len:
        raise LayoutError(decoder_path, f"{image_len} image positions do not make a square grid")
    return BartConfig(text_vocab=text_vocab, text_len=text_len, image_vocab=image_rows - 1, image_len=image_len,
                      embed=embed, glu=glu, encoder_layers=_count(encoder, "layers.{}.glu.fc0.weight"),
                      decoder_layers=_count(decoder, "layers.{}.glu.fc0.weight"))


def detokenizer_config(sd: Mapping[str, torch.Tensor], path: Path) -> VQGANConfig:
    """The VQGAN decoder's sizes, read from its tensors: widths per level, blocks, where attention is."""
    n_embed, embed_dim = _shape(sd, "embedding.weight", path)[:2]
    z_channels = _shape(sd, "post_quant_conv.weight", path)[0]
    ch = _shape(sd, "decoder.conv_out.weight", path)[1]
    levels = _count(sd, "decoder.up.{}.block.0.conv1.weight")
    blocks = _count(sd, "decoder.up.0.block.{}.conv1.weight")
    if levels == 0 or blocks == 0:
        raise LayoutError(path, "no tensor 'decoder.up.0.block.0.conv1.weight', so it is not a VQGAN decoder")
    ch_mult = tuple(_shape(sd, f"decoder.up.{i}.block.0.conv2.weight", path)[0] // ch for i in range(levels))
    resolution = 16 * 2 ** (levels - 1)     # attention is placed by resolution: the lowest level is 16
    attn = tuple(resolution // 2 ** i for i in range(levels) if f"decoder.up.{i}.attn.0.q.weight" in sd)
    try:
        return VQGANConfig(embed_dim=embed_dim, n_embed=n_embed, z_channels=z_channels, resolution=resolution,
                           ch=ch, ch_mult=ch_mult, num_res_blocks=blocks - 1, attn_resolutions=attn)
    except ValueError as e:
        raise LayoutError(path, str(e)) from None


def _scale_free(module: nn.Module, key: str, sd: Mapping[str, torch.Tensor]) -> bool:
    """A LayerNorm's weight the file leaves out (a norm trained without a scale): its bias is there."""
    owner, _, name = key.rpartition(".")
    return name == "weight" and f"{owner}.bias" in sd and isinstance(module.get_submodule(owner), nn.LayerNorm)


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> nn.Module:
    """Put the file's tensors into `module` (built on the meta device), every name and shape checked;
    scale-free LayerNorms get a scale of 1. Returns the module in float32."""
    sd = dict(sd)
    for key, want in module.state_dict().items():
        if key not in sd and _scale_free(module, key, sd):
            sd[key] = torch.ones(want.shape, dtype=sd[key.rpartition(".")[0] + ".bias"].dtype)
        elif key not in sd:
            raise LayoutError(path, f"no tensor '{key}', so it is not a min-dalle checkpoint of this part")
        elif sd[key].shape != want.shape:
            raise LayoutError(path, f"'{key}' has shape {tuple(sd[key].shape)}, not {tuple(want.shape)}")
    extra = sorted(set(sd) - set(module.state_dict()))
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise LayoutError(path, f"unexpected tensor '{extra[0]}'{more}, so it is not a min-dalle checkpoint")
    module.load_state_dict(sd, assign=True)
    return module.float()


def load_bart(files: Mapping[str, str | Path]) -> DalleBart:
    """DALL-E Mega or Mini from its files by role: "ckpt" (the decoder), "encoder", "vocab", "merges"."""
    files = {role: Path(p) for role, p in files.items()}
    encoder, decoder = read_tensors(files["encoder"]), read_tensors(files["ckpt"])
    config = bart_config(encoder, decoder, files["encoder"], files["ckpt"])
    tokenizer = TextTokenizer.from_files(files["vocab"], files["merges"], config.text_len)
    if max(tokenizer.vocab.values()) >= config.text_vocab:
        raise LayoutError(files["vocab"], f"ids reach {max(tokenizer.vocab.values())}, but the encoder "
                                          f"has {config.text_vocab} rows")
    with torch.device("meta"):
        model = DalleBart(config)
    load_strict(model.encoder, encoder, files["encoder"])
    load_strict(model.decoder, decoder, files["ckpt"])
    model.text = tokenizer
    return model.eval()


def load_detokenizer(path: str | Path) -> Detokenizer:
    """min-dalle's detoker.pt as a Detokenizer, its sizes read from the tensors."""
    path = Path(path)
    sd = read_tensors(path)
    with torch.device("meta"):
        model = Detokenizer(detokenizer_config(sd, path))
    return load_strict(model, sd, path).eval()


def load_min_dalle(folder: str | Path, mega: bool = True) -> tuple[DalleBart, Detokenizer]:
    """Mega's or Mini's BART and the VQGAN from a folder holding kuprel/min-dalle's files."""
    folder = Path(folder)
    bart = load_bart({role: folder / name for role, name in hub_files(mega).items()})
    return bart, load_detokenizer(folder / DETOKENIZER_FILES["ckpt"])


# ---------------------------------------------------------------------------
# Tiny stand-ins in the exact upstream layout (tests, lab/standin_builders/dalle_mega.py)
# ---------------------------------------------------------------------------

TINY_WORDS = ("a", "cat", "dog", "the", "on", "red", "blue", "of", "in", "sky", "painting")


def tiny_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A BART-style vocabulary (specials first) over letters, digits and a few whole words, and the merges
    that build those words from their letters, one letter at a time."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, WORD_START: 4}
    merges: list[tuple[str, str]] = []
    for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-":
        vocab.setdefault(c, len(vocab))
        merges.append((WORD_START, c))
        vocab.setdefault(WORD_START + c, len(vocab))
    for word in TINY_WORDS:
        piece = WORD_START + word[0]
        for c in word[1:]:
            if (piece, c) not in merges:
                merges.append((piece, c))
            piece += c
            vocab.setdefault(piece, len(vocab))
    return vocab, merges


def _randomise_norms(module: nn.Module, generator: torch.Generator) -> None:
    """Norms away from their (1, 0) initialisation, so a test sees whether their tensors were read."""
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            m.weight.data = 1 + 0.1 * torch.randn(m.weight.shape, generator=generator)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=generator)


def tiny_bart(mega: bool = True, seed: int = 0) -> DalleBart:
    """A randomly initialised BART of the published models' shape rules at toy sizes: Mega's padded
    vocabularies and two heads, Mini's exact vocabularies and one head; 64 text and 256 image positions."""
    vocab, merges = tiny_vocabulary()
    config = BartConfig(text_vocab=len(vocab) + (7 if mega else 0), text_len=64,
                        image_vocab=N_CODES + (31 if mega else 0), image_len=256, embed=128 if mega else 64,
                        glu=256 if mega else 96, encoder_layers=2 if mega else 1, decoder_layers=2 if mega else 1)
    torch.manual_seed(seed)
    model = DalleBart(config, TextTokenizer(vocab, merges, config.text_len))
    _randomise_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


def tiny_detokenizer(seed: int = 0) -> Detokenizer:
    """A randomly initialised VQGAN decoder in detoker.pt's layout with the full 16384-code codebook, at toy
    widths (32 and 64 channels, the least GroupNorm(32) allows) and two levels (f2: 16 x 16 codes -> 32 px)."""
    config = VQGANConfig(embed_dim=16, n_embed=N_CODES, z_channels=32, resolution=32, ch=32, ch_mult=(1, 2),
                         num_res_blocks=2, attn_resolutions=(16,))
    torch.manual_seed(seed)
    model = Detokenizer(config)
    _randomise_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


def bart_state_dicts(model: DalleBart) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The encoder's and the decoder's tensors as kuprel/min-dalle stores them: float16, without the
    scales of the norms trained without one."""
    def stored(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to(torch.float16).clone() for k, v in module.state_dict().items()
                if not (k.endswith(".weight") and k[:-len(".weight")].endswith(SCALE_FREE_NORMS))}

    return stored(model.encoder), stored(model.decoder)


def save_tiny_standin(folder: str | Path, mega: bool = True, seed: int = 0) -> Path:
    """Write a tiny random Mega (or Mini) and the shared VQGAN into `folder` with kuprel/min-dalle's file
    names and tensor names; the same seed writes the same files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = hub_files(mega)
    model = tiny_bart(mega, seed)
    encoder, decoder = bart_state_dicts(model)
    torch.save(encoder, folder / names["encoder"])
    torch.save(decoder, folder / names["ckpt"])
    vocab, merges = tiny_vocabulary()
    (folder / names["vocab"]).write_text(json.dumps(vocab), encoding="utf-8")
    (folder / names["merges"]).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                          encoding="utf-8")
    detokenizer = tiny_detokenizer(seed)
    torch.save({k: v.detach().clone() for k, v in detokenizer.state_dict().items()},
               folder / DETOKENIZER_FILES["ckpt"])
    return folder
