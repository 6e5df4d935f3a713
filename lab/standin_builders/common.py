"""Pieces every stand-in family uses: a tiny CLIP tokenizer and a tiny CLIP in transformers' layout."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_clip_tokenizer(max_length: int = 16):
    """A CLIPTokenizer over single letters (every word still encodes), saved and reloadable like OpenAI's."""
    from transformers import CLIPTokenizer

    folder = Path(tempfile.mkdtemp(prefix="standin-vocab-"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS + "0123456789":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length,
                         pad_token="<|endoftext|>")


def tiny_clip(folder: Path, image_size: int = 32, patch_size: int = 16, width: int = 32, seed: int = 0) -> None:
    """A randomly initialised CLIPModel + tokenizer + image processor, saved as OpenAI's CLIPs are on the hub."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        projection_dim=width)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(folder)
