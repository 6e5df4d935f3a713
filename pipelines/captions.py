"""An embedding shown by its nearest captions: how the unCLIP tab shows the prior's guesses.

The pool is the shapes grammar's captions (every one-object caption with a size, position or
background, plus two-object ones); its CLIP embeddings are computed once per CLIP model.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch
import torch.nn.functional as F

import shapes

_POOLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def caption_pool(seed: int = 0, n_two: int = 400) -> list[str]:
    """Captions of the shapes grammar: every one-object caption with a size and/or position or a
    background, plus n_two two-object captions (held-out pairs included: the pool only names)."""
    out = []
    for color in shapes.PALETTE:
        for shape in shapes.SHAPES:
            for size in ("", "small ", "large "):
                for pos in ("", *(" " + p for p in shapes.POSITIONS)):
                    out.append(f"a {size}{color} {shape}{pos}")
            out += [f"a {color} {shape} on a {bg} background" for bg in shapes.PALETTE if bg != color]
    rng = np.random.default_rng(seed)
    out += [shapes.random_scene(rng, exclude=(), p_optional=0.5, p_two=1.0).caption() for _ in range(n_two)]
    return list(dict.fromkeys(out))


@torch.no_grad()
def nearest_captions(parts, emb: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    """For each unit-norm embedding (N, D), its k nearest pool captions with cosine similarities."""
    key = parts.pool_key
    if key not in _POOLS:
        pool = caption_pool()
        _POOLS[key] = (pool, torch.cat([parts.text_embedding(pool[i:i + 256]) for i in range(0, len(pool), 256)]))
    pool, pool_emb = _POOLS[key]
    sims = F.normalize(emb.float(), dim=-1) @ pool_emb.to(emb.device).t()
    top = sims.topk(k, dim=1)
    return [[(pool[j], round(float(s), 3)) for s, j in zip(vals, idx)] for vals, idx in zip(top.values, top.indices)]
