"""A stand-in for Karlo (`kakaobrain/karlo-v1-alpha`): UnCLIPPipeline's layout with tiny parts
(pipelines/models/karlo.save_tiny_standin), the image encoder beside it as in the variations checkpoint."""
from __future__ import annotations

from pathlib import Path

from lab.standins import HUB


def karlo(folder: Path) -> None:
    from pipelines.models.karlo import save_tiny_standin

    save_tiny_standin(folder, seed=3)


HUB["kakaobrain/karlo-v1-alpha"] = karlo
