"""Stand-in for min-dalle's hub repo (kuprel/min-dalle), as the dalle-mega and dalle-mini presets name it:
tiny random Mega and Mini BARTs and the shared VQGAN decoder, in min-dalle's file and tensor names
(`pipelines/models/dalle_bart.py`). The CLIP the presets rerank with has its own stand-in (clip.py)."""
from __future__ import annotations

from pathlib import Path

from lab.standins import HUB
from pipelines.models.dalle_bart import save_tiny_standin


def min_dalle_repo(folder: Path) -> None:
    """encoder.pt, decoder.pt, vocab.json, merges.txt (Mega), their *_mini twins (Mini), and detoker.pt."""
    save_tiny_standin(folder, mega=True)
    save_tiny_standin(folder, mega=False)


HUB["kuprel/min-dalle"] = min_dalle_repo
