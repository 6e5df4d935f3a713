"""Every engine from the command line: `python -m pipelines ENGINE [PROMPT] [--setting value ...]`.

    python -m pipelines diffusion "a red circle above a blue square" --steps 25 --video
    python -m pipelines unclip --mode variations --image picture.png --batch 4
    python -m pipelines vqgan_clip "a red circle:1 | blurry:-0.5" --image-prompts "style.png:0.5"
    python -m pipelines dalle --help

Each flag is a field of the engine's request (`pipelines/<engine>.py`), in kebab-case;
a setting not given takes the preset's default, then the request's own. Pictures are file
paths. The PNGs (with their settings), the strip and, with --video, the mp4 are written
by the same recorder as the page's (`pipelines/recorder.py`). Ctrl-C stops the run and
keeps what it made. Bad input, missing weights or no network: one line, exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from pipelines.engine import Engine

USAGE = "python -m pipelines ENGINE [PROMPT] [--setting value ...]   (python -m pipelines ENGINE --help)"


def parser_for(engine: Engine) -> argparse.ArgumentParser:
    """One flag per request field, typed by its default; every default is None (= the preset's)."""
    p = argparse.ArgumentParser(prog=f"python -m pipelines {engine.name}",
                                description=f"{engine.label} from the command line. A setting not given takes "
                                            "the preset's default, then the one shown.")
    p.add_argument("prompt", nargs="?", default=None, help="what to draw")
    for f in dataclasses.fields(engine.request):
        if f.name == "prompt":
            continue
        flag, default = "--" + f.name.replace("_", "-"), f.default
        lo_hi = engine.limits.get(f.name)
        note = f" ({lo_hi[0]:g} to {lo_hi[1]:g})" if lo_hi else ""
        if f.name in engine.parse or f.name in engine.image_fields:
            how = (getattr(engine.parse.get(f.name), "__doc__", None) or "").split("\n")[0]
            metavar = "IMAGE" if f.name in engine.image_fields and "|" not in how else "TEXT"
            p.add_argument(flag, default=None, metavar=metavar,
                           help=how or ("a picture file" if metavar == "IMAGE" else f"default: {default!r}"))
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default: {default}")
        elif isinstance(default, (int, float, str)):
            p.add_argument(flag, type=type(default), default=None, choices=engine.choices.get(f.name),
                           help=f"default: {default!r}{note}")
    p.add_argument("--out", default=f"outputs/{engine.name}.png",
                   help="PNG path; several pictures are <stem>_<k>.png, the strip and the video go beside it")
    p.add_argument("--video", action="store_true", help="write an H.264 mp4 of the run's previews")
    p.add_argument("--fps", type=float, default=None, help=f"the video's frame rate (default {engine.fps})")
    p.add_argument("--keep-frames", action="store_true",
                   help="with --video, also keep its frames in <stem>_frames/ to re-export the video later "
                        "(python -m pipelines.media.frames)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None, help="torch's CPU threads")
    return p


def request_from_args(engine: Engine, a: argparse.Namespace):
    """The parsed flags -> the engine's request over the preset's defaults."""
    from pipelines import media
    from pipelines.presets import load_preset

    given = {}
    for name in engine.fields:
        value = getattr(a, name, None)
        if value is None:
            continue
        if name in engine.parse:
            value = engine.parse[name](value)
        elif name in engine.image_fields:
            value = media.load_image(value, name=name.replace("_", " "))
        given[name] = value
    preset = load_preset(given.get("preset", engine.defaults()["preset"]))
    return engine.make_request(preset, **given)


def _progress(ev, bars: dict):
    """A progress bar per stage, with the step's notice, loss or nearest caption."""
    from tqdm import tqdm

    bar = bars.get(ev.stage)
    if bar is None:
        for old in bars.values():
            old.close()
        bar = bars[ev.stage] = tqdm(total=ev.total, unit="step", desc=ev.stage)
    bar.update(ev.step - bar.n)
    if ev.notice:
        bar.write(ev.notice)
    if "loss" in ev.metrics:
        bar.set_postfix(loss=f"{ev.metrics['loss']:.3f}")
    if ev.captions:
        bar.set_postfix_str(ev.captions[0])


def run_engine(engine: Engine, argv: Sequence[str]) -> int:
    import torch

    from pipelines import media
    from pipelines.estimate import ESTIMATES
    from pipelines.events import Step
    from pipelines.recorder import Recorder
    from pipelines.registry import DeviceOutOfMemory, ModelUnavailable, Registry

    a = parser_for(engine).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    recorder = None
    try:
        req = request_from_args(engine, a)
        registry = Registry(device=a.device)
        stop = {"now": False}
        signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))  # Ctrl-C stops and keeps the result
        out = Path(a.out)
        recorder = Recorder(engine, req, out.parent, out.stem, fps=a.fps, video=a.video, unique=False)
        print(ESTIMATES.say(engine, req, registry.device, registry), file=sys.stderr)
        bars: dict = {}
        for ev in engine.run(req, registry, lambda: stop["now"]):
            if isinstance(ev, Step):
                _progress(ev, bars)
                recorder.add(ev)
                continue
            for bar in bars.values():
                bar.close()
            for item in ev.meta.get("prior", []):
                print(f"prior kept candidate {item['candidate']}: nearest captions {item['nearest']}")
            if ev.stopped and not ev.images:
                print("stopped before any picture was painted")
            rec = recorder.finish(ev)
            print("\n".join(rec.files))
            if a.keep_frames and rec.frames:
                print(media.save_frames(rec.frames, out.parent / f"{out.stem}_frames", fps=rec.fps,
                                        engine=engine.name))
            if ev.meta.get("clip_scores"):
                print("CLIP scores, best first: " + ", ".join(f"{s:.3f}" for s in ev.meta["clip_scores"]))
    except (ValueError, FileNotFoundError, ModelUnavailable, DeviceOutOfMemory) as e:
        print(f"error: {e}")     # bad input, missing weights, no network, memory: one clear line
        return 2
    finally:
        if recorder is not None:
            recorder.abort()     # a no-op once finished
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.engines import ENGINES

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {USAGE}\n\nengines:")
        for e in ENGINES.values():
            print(f"  {e.name:<12} {e.label}")
        return 0 if argv else 2
    if argv[0] not in ENGINES:
        print(f"error: unknown engine {argv[0]!r}; choose one of {', '.join(ENGINES)}")
        return 2
    return run_engine(ENGINES[argv[0]], argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
