"""How much a text-conditioned denoiser uses each part of its caption.

    .venv/bin/python bench/text_use.py presets/weights/shapes-diffusion [more model folders]

For fresh two-object training scenes, the denoising loss with the true caption against the
loss with one part of the caption changed, at a few timesteps, on the same latents, noise and
timesteps. A model that reads a word loses when the word is changed; one that ignores it
scores the same (+0 %). Changes:
  shape     one object's shape word (lab.train.clip.swap_shape)
  colour    two colours exchanged (swap_colours)
  relation  the relation's direction flipped ("above" <-> "below", "to the left of" <->
            "to the right of"): the same words in the same places, the objects' places swapped
Prints one line per model and change: the loss increase at each timestep.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLIP = {"above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of"}


def flip_relation(caption: str) -> str:
    """The caption with its relation's direction reversed."""
    import shapes

    scene = shapes.parse_caption(caption)
    if scene.relation is None:
        raise ValueError(f"{caption!r} states no relation")
    return shapes.Scene(scene.objects, scene.position, FLIP[scene.relation], scene.background).caption()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="diffusion model folders (config.json + model.safetensors)")
    p.add_argument("--scenes", type=int, default=256)
    p.add_argument("--timesteps", default="300,500,700,900")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import shapes
    from pipelines.diffusion_sampling import make_scheduler
    from pipelines.models.clip import load_clip
    from pipelines.models.diffusion import from_pretrained, text_states
    from pipelines.models.vqgan_files import from_pretrained as load_vqgan
    from lab.train.clip import swap_colours, swap_shape
    from lab.train.diffusion import regression_target, to_x

    weights = ROOT / "presets" / "weights"
    clip, vqgan = load_clip(weights / "shapes-clip").eval(), load_vqgan(weights / "shapes-vqgan").eval()
    rng = np.random.default_rng(args.seed)
    scenes = [shapes.random_scene(rng, p_two=1.0) for _ in range(args.scenes)]
    captions = [s.caption() for s in scenes]
    images = np.stack([np.asarray(shapes.render(s, 32, seed=i)) for i, s in enumerate(scenes)])
    changed = {"shape": [swap_shape(c, rng) for c in captions],
               "colour": [swap_colours(c, rng) or c for c in captions],
               "relation": [flip_relation(c) for c in captions]}
    timesteps = [int(t) for t in args.timesteps.split(",")]
    for folder in args.models:
        model = from_pretrained(folder).eval()
        sched = make_scheduler("DDPM", model.scheduler_config)
        rises = {k: [] for k in changed}
        with torch.no_grad():
            z0 = model.normalize(vqgan.encode_latent(to_x(images)))
            states = {k: text_states(model, clip, c) for k, c in (("true", captions), *changed.items())}
            gen = torch.Generator().manual_seed(args.seed)
            for tv in timesteps:
                eps = torch.randn(z0.shape, generator=gen)
                t = torch.full((len(z0),), tv)
                z_t = sched.add_noise(z0, eps, t)
                target = regression_target(sched, z0, eps, t, model.config.prediction_type)
                loss = {k: torch.nn.functional.mse_loss(model(z_t, t, s), target).item() for k, s in states.items()}
                for k in changed:
                    rises[k].append(100 * (loss[k] / loss["true"] - 1))
        print(folder)
        for k, r in rises.items():
            print(f"  {k:9s}" + "  ".join(f"t={tv}: {v:+6.1f} %" for tv, v in zip(timesteps, r)), flush=True)


if __name__ == "__main__":
    main()
