"""Numbers beyond the judge: CLIP R-precision, Frechet distance, diversity.

All three use the built-in CLIP (the evaluator's, whatever the engine used),
so numbers are comparable across engines and commits at the same sample
counts. Frechet distance on a few dozen images is biased upwards; compare it
only between runs of the same size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@torch.no_grad()
def image_features(clip, images: list[Image.Image], batch: int = 64) -> np.ndarray:
    """L2-normalised CLIP image embeddings (N, D)."""
    p = next(clip.parameters())
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
                         for im in images[i:i + batch]]).permute(0, 3, 1, 2).to(p.device)
        out.append(F.normalize(clip.encode_image(clip.resize(x)).float(), dim=-1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


@torch.no_grad()
def text_features(clip, texts: list[str], batch: int = 256) -> np.ndarray:
    out = [F.normalize(clip.encode_text(texts[i:i + batch]).float(), dim=-1).cpu() for i in range(0, len(texts), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def r_precision(image_feats: np.ndarray, true_idx: list[int], text_feats: np.ndarray,
                candidates: int = 100, seed: int = 0) -> float:
    """Share of images whose own caption CLIP ranks first among it and ``candidates - 1`` others.

    The others are drawn (seeded) from the whole caption pool ``text_feats``.
    """
    rng = np.random.default_rng(seed)
    n_text = len(text_feats)
    k = min(candidates, n_text) - 1
    hits = 0
    for f, t in zip(image_feats, true_idx):
        others = rng.choice(np.delete(np.arange(n_text), t), size=k, replace=False)
        sims = text_feats[np.concatenate([[t], others])] @ f
        hits += int(sims[0] > sims[1:].max(initial=-np.inf))   # a tie is not a hit
    return hits / len(true_idx)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr(sqrt(ca cb)) = sum of square roots of the (real, non-negative) eigenvalues of ca cb
    eig = np.linalg.eigvals(ca @ cb)
    tr_sqrt = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)


def diversity(feats_per_caption: list[np.ndarray]) -> float:
    """Mean pairwise cosine distance between samples of the same caption (0: all alike)."""
    vals = []
    for f in feats_per_caption:
        if len(f) < 2:
            continue
        sims = f @ f.T
        iu = np.triu_indices(len(f), 1)
        vals.append(float(np.mean(1 - sims[iu])))
    return float(np.mean(vals)) if vals else float("nan")
