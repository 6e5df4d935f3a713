"""Tiny stand-ins for the hub checkpoints the download presets name, in exactly the upstream layouts.

There is no model hub on the machines Atelier is built on, so every preset that downloads is
proven here on a randomly initialised model of the same layout, written where the download
would put it: a Hugging Face hub cache (`models--org--name/snapshots/<rev>/...`, `refs/main`)
for hub ids, and Atelier's URL cache (`<hub cache>/atelier-urls/<hash>/<role>-<file>`) for URL
components. Loading then goes through the same code as the real checkpoint, offline.

    python -m lab.standins --cache runs/standin-hub            # build every stand-in
    HF_HUB_CACHE=runs/standin-hub HF_HUB_OFFLINE=1 python app.py  # the download presets now load

Never point --cache at your real hub cache: the stand-ins would shadow real downloads.
Each builder is `fn(folder: Path) -> None`, writing one repository's files into `folder`.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

REVISION = "0" * 40            # the one snapshot each stand-in repository has

Builder = Callable[[Path], None]


def hub_snapshot(cache: str | Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the hub cache `cache`, created with `refs/main` pointing at it."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REVISION
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snap


def url_folder(cache: str | Path, ckpt_url: str) -> Path:
    """The folder Atelier's URL cache keeps a URL component in (see pipelines.registry.weights._from_urls)."""
    folder = Path(cache) / "atelier-urls" / hashlib.sha256(ckpt_url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# repo id (or a preset's ckpt URL) -> builder; filled in below by each model family
HUB: dict[str, Builder] = {}
URLS: dict[str, Callable[[Path, dict], None]] = {}   # ckpt URL -> fn(folder, {role: local file to write})


def build(cache: str | Path, only: str | None = None) -> list[str]:
    """Write every stand-in (or those whose id contains `only`) into the hub cache `cache`; the ids written."""
    import json

    _register()
    from pipelines.presets import list_presets, url_filename

    done = []
    Path(cache).mkdir(parents=True, exist_ok=True)
    for repo_id, fn in HUB.items():
        if only and only not in repo_id:
            continue
        fn(hub_snapshot(cache, repo_id))
        done.append(repo_id)
    # URL components: every preset naming a URL this module knows how to fake
    for preset in list_presets():
        for spec in preset.components.values():
            if spec.source != "url" or spec.location not in URLS or (only and only not in spec.location) \
                    or spec.location in done:
                continue
            folder = url_folder(cache, spec.location)
            files = {role: folder / f"{role}-{url_filename(u)}" for role, u in spec.files.items()}
            URLS[spec.location](folder, files)
            done.append(spec.location)
    (Path(cache) / "atelier-standins.json").write_text(json.dumps(sorted(done), indent=1))
    return done


def _register() -> None:
    """Import the model families' builders (kept beside their models)."""
    from lab import standin_builders  # noqa: F401  - registers into HUB and URLS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.standins", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default="runs/standin-hub", help="a hub cache folder of its own (not your real one)")
    ap.add_argument("--only", help="build only the stand-ins whose id contains this")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _register()
    from lab import standins  # run as __main__, this module is a second copy: the builders filled lab.standins
    done = standins.build(args.cache, args.only)
    print(f"{len(done)} stand-ins in {args.cache}:")
    for d in done:
        print("  " + d)
    print(f"Use them: HF_HUB_CACHE={args.cache} HF_HUB_OFFLINE=1 python app.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
