"""Linear probe: how well does a CLIP's image embedding name a lone object's shape?

    .venv/bin/python bench/clip_shape_probe.py presets/weights/shapes-clip runs/clip-shapeneg

unCLIP's decoder paints variations from the image embedding alone, so what the embedding
does not hold about shape, no decoder can paint back. For ~2,500 renders of one object
(random shape, colour and size; held-out pairs skipped) it fits a softmax regression from
the unit-norm embedding to the six shapes on 80 % and prints the accuracy on the rest
(chance 16.7 %). One thread, about a minute per CLIP.
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)
from pipelines import shapes  # noqa: E402
from pipelines.models.clip import load_clip  # noqa: E402
from pipelines.models.unclip import image_embedding  # noqa: E402
from pipelines.train.diffusion import to_x  # noqa: E402


def lone_objects(n: int = 3000, seed: int = 0):
    """Renders of one object of a random shape, colour and size, and the shape's index."""
    rng = np.random.default_rng(seed)
    colours = list(shapes.PALETTE)
    images, labels = [], []
    for i in range(n):
        s, colour, size = int(rng.integers(6)), colours[rng.integers(len(colours))], list(shapes.SIZES)[rng.integers(2)]
        if (colour, shapes.SHAPES[s]) in shapes.HELD_OUT:
            continue
        caption = f"a {size} {colour} {shapes.SHAPES[s]}"
        images.append(np.asarray(shapes.render(shapes.parse_caption(caption), 32, i)))
        labels.append(s)
    return to_x(np.stack(images)), torch.tensor(labels)


def probe(e: torch.Tensor, y: torch.Tensor, train: float = 0.8) -> float:
    """Held-back accuracy of a softmax regression from embeddings e (N, D) to labels y (N,)."""
    n = int(train * len(e))
    w = torch.zeros(e.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(500):
        opt.zero_grad()
        loss = F.cross_entropy(e[:n] * 10 @ w + b, y[:n]) + 1e-4 * w.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((e[n:] * 10 @ w + b).argmax(1) == y[n:]).float().mean().item()


def main(paths: list[str]) -> int:
    x, y = lone_objects()
    for path in paths:
        clip = load_clip(path).eval()
        with torch.no_grad():
            e = torch.cat([image_embedding(clip, x[k:k + 256]) for k in range(0, len(x), 256)])
        print(f"{path}: shape probe {100 * probe(e, y):.1f} % on {len(e) - int(0.8 * len(e))} held-back "
              f"lone objects (chance 16.7 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["presets/weights/shapes-clip"]))
