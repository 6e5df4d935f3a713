"""Probes: how much of a lone object's shape and position can be read from a CLIP's image embedding?

    .venv/bin/python bench/clip_probe.py presets/weights/shapes-clip runs/clip-shapeneg

unCLIP's decoder paints variations from the image embedding alone, so what the embedding
does not hold, no decoder can paint back. For --n renders of one object (random shape,
colour, size and position; held-out pairs skipped) it fits, on 80 % of them, a softmax
regression (linear) and a two-layer MLP from the unit-norm embedding to the six shapes and to
the five positions, and prints the accuracy on the rest (chance 16.7 % and 20 %). A probe gives
a lower bound on what the embedding holds; the MLP's is the tighter one. Two threads, a few
minutes per CLIP.
"""
import argparse
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.models.clip import load_clip
from pipelines.models.unclip import image_embedding
from lab.train.clip import linear_probe, lone_objects


def mlp_probe(e: torch.Tensor, y: torch.Tensor, steps: int, train: float = 0.8, seed: int = 0) -> float:
    """Held-back accuracy of a two-layer MLP (512 wide) trained `steps` Adam steps of 256."""
    torch.manual_seed(seed)
    n = int(train * len(e))
    net = nn.Sequential(nn.Linear(e.shape[1], 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                        nn.Linear(512, int(y.max()) + 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, n, (256,))
        opt.zero_grad()
        F.cross_entropy(net(e[idx] * 10), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        return (net(e[n:] * 10).argmax(1) == y[n:]).float().mean().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("clips", nargs="*", default=["presets/weights/shapes-clip"])
    p.add_argument("--n", type=int, default=12000, help="renders drawn (held-out pairs are then skipped)")
    p.add_argument("--mlp-steps", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    x, shape_ids, position_ids = lone_objects(a.n)
    held = len(x) - int(0.8 * len(x))
    for path in a.clips:
        clip = load_clip(path).eval()
        with torch.no_grad():
            e = torch.cat([image_embedding(clip, x[k:k + 256]) for k in range(0, len(x), 256)])
        for name, y, chance in (("shape", shape_ids, 16.7), ("position", position_ids, 20.0)):
            print(f"{path}: {name}: linear probe {100 * linear_probe(e, y):.1f} %, MLP probe "
                  f"{100 * mlp_probe(e, y, a.mlp_steps):.1f} % on {held} held-back lone objects (chance {chance} %)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
