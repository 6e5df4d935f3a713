"""DALL-E in miniature: a GPT that reads a caption and then writes the image as VQGAN codes.

Paper: Ramesh et al., "Zero-Shot Text-to-Image Generation" (2021). The recipe kept here:
one decoder-only transformer over a single sequence

    [ text tokens (padded to text_len) | <image> | code_0 code_1 ... code_63 ]

where the codes are the built-in VQGAN's 8x8 token grid in raster order (row by row,
left to right). Text and image vocabularies are kept apart in one embedding table:

    ids 0 .. text_vocab-1            text tokens (a byte-level BPE, tokenizer.json)
    id  text_vocab                   <image>, the separator that starts the image
    ids text_vocab+1 .. +n_codes     image codes (code c has id image_offset + c)

The network is transformers' GPT2LMHeadModel, so the KV cache, SDPA attention and the
hub folder layout (config.json + model.safetensors) come with it. Image positions only
ever score the image slice of the output head, so a sampled image token is always a code.

Classifier-free ("supercondition") guidance: training replaces some captions by the
empty caption, so the same model also predicts codes unconditionally, and sampling mixes
    logits = uncond + guidance * (cond - uncond)          (guidance 1 = the plain model)

Notation: B batch, T text_len, N = grid * grid image tokens, V_img = n_codes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_FILE = "dalle.json"          # our config beside the GPT's config.json
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class DalleConfig:
    text_vocab: int = 613      # size of the BPE vocabulary in tokenizer.json
    text_len: int = 24         # caption tokens incl. start/end; shapes captions need at most 18
    pad_id: int = 1            # the tokenizer's padding (= end-of-text) token
    n_codes: int = 1024        # the VQGAN's codebook size
    grid: int = 8              # image tokens per side: 32 px through an f4 VQGAN
    n_layer: int = 4
    n_embd: int = 192
    n_head: int = 6

    @property
    def image_len(self) -> int:
        return self.grid * self.grid

    @property
    def sep_id(self) -> int:
        return self.text_vocab

    @property
    def image_offset(self) -> int:
        return self.text_vocab + 1

    @property
    def vocab_size(self) -> int:
        return self.text_vocab + 1 + self.n_codes

    @property
    def block_size(self) -> int:
        # the last code is predicted but never read, so the model sees T + 1 + N - 1 positions
        return self.text_len + self.image_len


class TextTokenizer:
    """Captions -> fixed-length id rows, over a `tokenizers` BPE saved as tokenizer.json."""

    def __init__(self, tokenizer, text_len: int, pad_id: int):
        self.tok, self.text_len, self.pad_id = tokenizer, text_len, pad_id
        self.tok.no_truncation()  # truncation happens below, where it can be reported
        self.tok.no_padding()

    @classmethod
    def from_file(cls, path: str | Path, text_len: int, pad_id: int) -> "TextTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)), text_len, pad_id)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, list[str | None]]:
        """(B, text_len) ids padded with pad_id, and per text None, or the part kept when it was too long.

        A text longer than the context keeps its first text_len - 1 tokens and its end token.
        """
        rows, kept = [], []
        for text in texts:
            enc = self.tok.encode(text)
            ids = enc.ids
            if len(ids) > self.text_len:
                ids = ids[:self.text_len - 1] + ids[-1:]
                kept.append(text[:enc.offsets[self.text_len - 2][1]])  # up to the last token read
            else:
                kept.append(None)
            rows.append(ids + [self.pad_id] * (self.text_len - len(ids)))
        return torch.tensor(rows, dtype=torch.long), kept

    def tokens(self, text: str) -> list[str]:
        return self.tok.encode(text).tokens


class DALLE(nn.Module):
    """The GPT, its text tokenizer and the layout of the sequence."""

    def __init__(self, config: DalleConfig, tokenizer=None):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.config = config
        gpt_config = GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head,
            # fresh scenes every step: nothing to regularise against, so no dropout
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
        self.gpt = GPT2LMHeadModel(gpt_config)
        self.text = TextTokenizer(tokenizer, config.text_len, config.pad_id) if tokenizer is not None else None

    # -- the sequence ---------------------------------------------------------------------

    def prefix(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Text ids (B, T) followed by the <image> separator: (B, T + 1)."""
        sep = text_ids.new_full((text_ids.shape[0], 1), self.config.sep_id)
        return torch.cat([text_ids, sep], dim=1)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the image codes only (..., V_img): the head's rows for the image ids."""
        off = self.config.image_offset
        return F.linear(hidden, self.gpt.lm_head.weight[off:off + self.config.n_codes])

    def forward(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, N, V_img): position i predicts code i from the text and codes < i."""
        x = torch.cat([self.prefix(text_ids), codes[:, :-1] + self.config.image_offset], dim=1)  # (B, T + N)
        hidden = self.gpt.transformer(input_ids=x).last_hidden_state                             # (B, T + N, C)
        return self.image_logits(hidden[:, self.config.text_len:])                               # (B, N, V_img)

    def loss(self, text_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the image codes (the text is only read, never predicted)."""
        logits = self(text_ids, codes)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))

    # -- sampling with the KV cache -----------------------------------------------------------

    @torch.inference_mode()
    def sample(self, text_ids: torch.Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               guidance: float = 1.0, generator: torch.Generator | None = None,
               prefix_codes: torch.Tensor | None = None, subgenerator: torch.Generator | None = None,
               subseed_strength: float = 0.0) -> Iterator[torch.Tensor]:
        """Write the image codes of every row of `text_ids` (B, T) as one batch; yields after each code.

        Each yield is the (B, k) codes so far (k = 1 .. N; the last yield is the whole grid).
        `prefix_codes` (B, P) are known first codes in raster order (image completion): they
        are read in one pass and the sampler continues after them. `guidance` != 1 runs the
        empty caption alongside (2B rows) and mixes the two predictions. `subgenerator` and
        `subseed_strength` vary the draws (`draw_codes`).
        """
        cfg = self.config
        B = text_ids.shape[0]
        codes = text_ids.new_zeros((B, 0)) if prefix_codes is None else prefix_codes.to(text_ids.device)
        # 1. the whole known prefix in one pass; the cache keeps its keys and values
        x = self.prefix(text_ids)
        if guidance != 1.0:
            empty = self.text([""])[0].to(text_ids.device).expand(B, -1)
            x = torch.cat([x, self.prefix(empty)], dim=0)                       # (2B, T + 1)
        x = torch.cat([x, (codes + cfg.image_offset).repeat(x.shape[0] // B, 1)], dim=1)
        past = None
        while codes.shape[1] < cfg.image_len:
            out = self.gpt.transformer(input_ids=x, cache=past, use_cache=True)
            past = out.cache
            logits = self.image_logits(out.last_hidden_state[:, -1]).float()   # (B or 2B, V_img)
            # 2. guidance, then temperature, then top-k and top-p filtering
            if guidance != 1.0:
                cond, uncond = logits[:B], logits[B:]
                logits = uncond + guidance * (cond - uncond)
            logits = filter_logits(logits / temperature, top_k, top_p)
            # 3. draw the next code of every candidate; feed only it next time (the cache has the rest)
            nxt = draw_codes(F.softmax(logits, dim=-1), generator, subgenerator, subseed_strength)  # (B, 1)
            codes = torch.cat([codes, nxt], dim=1)
            x = (nxt + cfg.image_offset).repeat(2 if guidance != 1.0 else 1, 1)
            yield codes

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def draw_codes(probs: torch.Tensor, generator: torch.Generator | None, subgenerator: torch.Generator | None = None,
               strength: float = 0.0) -> torch.Tensor:
    """One code per row of probs (B, V) -> (B, 1): torch.multinomial's draw, or with a subseed at
    strength > 0 its variation. multinomial draws argmax(p / q) with q ~ Exp(1) drawn by
    `torch.empty_like(p).exponential_(1, generator)` (the exponential race); the same q is drawn here,
    and as many from the subgenerator, and the two are mixed (pipelines/seeds.mixed_exponential):
    exact samples still, moving from the seed's codes (strength 0) to the subseed's (1)."""
    if subgenerator is None or strength <= 0:
        return torch.multinomial(probs, 1, generator=generator)
    from pipelines.seeds import mixed_exponential

    q = torch.empty_like(probs).exponential_(1, generator=generator)
    q_sub = torch.empty_like(probs).exponential_(1, generator=subgenerator)
    return (probs / mixed_exponential(q, q_sub, strength)).argmax(dim=-1, keepdim=True)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k highest logits (0 = all), then the smallest set whose probability reaches top_p."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the best one always stays)
        drop_sorted = (cum - F.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


# ---------------------------------------------------------------------------
# Folders: config.json + model.safetensors (the GPT), dalle.json, tokenizer.json
# ---------------------------------------------------------------------------


def save_pretrained(model: DALLE, directory: str | Path, tokenizer_json: str | None = None) -> None:
    """Write the GPT in the hub layout, our config beside it, and the tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.gpt.save_pretrained(directory)
    (directory / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2))
    if tokenizer_json is None:
        tokenizer_json = model.text.tok.to_str()
    (directory / TOKENIZER_FILE).write_text(tokenizer_json)


def from_pretrained(directory: str | Path) -> DALLE:
    """Load a folder written by save_pretrained: the config travels with the weights."""
    from transformers import GPT2LMHeadModel

    directory = Path(directory)
    config = DalleConfig(**json.loads((directory / CONFIG_FILE).read_text()))
    model = DALLE(config)
    model.gpt = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True, attn_implementation="sdpa")
    model.text = TextTokenizer.from_file(directory / TOKENIZER_FILE, config.text_len, config.pad_id)
    return model.eval()
