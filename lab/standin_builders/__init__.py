"""Stand-in builders, one module per model family; importing this registers them in lab.standins."""
from lab.standin_builders import clip, dalle_mega, karlo, stable_diffusion, vqgan_clip  # noqa: F401
