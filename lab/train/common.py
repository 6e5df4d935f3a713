"""What every training command shares: threads, seeds, run records, checkpoints, sample grids.

Each trainer is `python -m lab.train.<model> --out DIR ...`. It trains through
`accelerate`, so `accelerate launch -m lab.train.<model>` scales the same code to
many GPUs; on this CPU it runs as a plain process. A run directory holds:
  checkpoint.pt   model + optimiser + step, for --resume (not committed)
  log.jsonl       one line of metrics every --log-every steps
  samples_*.png   sample grids written while training
and the exported weights folder gets `train.json` with the exact command, seed and metrics.
Logs stay in the run directory; the logs of committed weights are kept in
`lab/logs/<weights folder>/` (`latest.jsonl` for the weights as they are).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("atelier.train")


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="export folder for the trained weights")
    p.add_argument("--run-dir", default=None, help="checkpoints, logs and sample grids (default: runs/<name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("ATELIER_THREADS", "1")),
                   help="torch CPU threads; 1 is fastest beside other busy processes")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--sample-every", type=int, default=500, help="sample grids every N steps (0: none while training)")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue from run-dir/checkpoint.pt")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that draw and render the next batches while the model trains (0: inline); "
                        "the batches are the same either way")


def add_caption_args(p: argparse.ArgumentParser) -> None:
    """Options of the trainers that draw shapes captions (diffusion, unCLIP)."""
    p.add_argument("--p-optional", type=float, default=0.5,
                   help="how often a training caption states each optional part (size, position, background)")


def setup(args, name: str):
    """Threads, logging, run dir and an Accelerator; returns (accelerator, run_dir)."""
    from accelerate import Accelerator

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # only the initial weights draw from the global RNG
    run_dir = Path(args.run_dir or f"runs/{name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return Accelerator(cpu=not torch.cuda.is_available()), run_dir


def start(args, accelerator, run_dir: Path, model, opt):
    """Resume if asked, hand model and optimiser to accelerate; returns (model, opt, raw, step, extra, log)."""
    step, extra = 0, {}
    if args.resume and (run_dir / "checkpoint.pt").exists():
        step, extra = load_checkpoint(run_dir, model, opt)
        log.info("resumed at step %d", step)
    model, opt = accelerator.prepare(model, opt)
    return model, opt, accelerator.unwrap_model(model), step, extra, MetricLog(run_dir)


def set_lr(opt, step: int, args) -> None:
    for g in opt.param_groups:
        g["lr"] = cosine_lr(step, args.steps, args.lr)


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The data of step k depends only on (seed, k), so a resumed run sees the same batches."""
    return np.random.default_rng([seed, step])


class _StepData(torch.utils.data.IterableDataset):
    """make(step) for steps start..stop-1; worker k of n draws steps start+k, start+k+n, ..., and the
    DataLoader takes one from each worker in turn, so the steps come back in order."""

    def __init__(self, make, start: int, stop: int):
        self.make, self.start, self.stop = make, start, stop

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info else (0, 1)
        return (self.make(step) for step in range(self.start + k, self.stop, n))


def _as_is(item):
    return item


def step_batches(make, start: int, stop: int, workers: int = 0):
    """Yield make(step) for each training step in order. make must depend only on the step (it draws
    from batch_rng), so `workers` processes can draw and render ahead of the loop: on a GPU, one
    process rendering scenes cannot keep up with the model."""
    data = _StepData(make, start, stop)
    if workers <= 0:
        return iter(data)
    return iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4,
                                            collate_fn=_as_is))


def place(device, *modules) -> None:
    """Move models (None skipped). Exports, grids and evaluations run on the CPU, where the samplers'
    seeded generators live, so GPU training brings its models back for them."""
    for m in modules:
        if m is not None:
            m.to(device)


def cosine_lr(step: int, total: int, base: float, warmup: int = 100, floor: float = 0.05) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return float(base * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(1.0, t)))))  # a plain float for the checkpoint


def save_checkpoint(run_dir: Path, step: int, model, opt, extra: dict | None = None) -> None:
    tmp = run_dir / "checkpoint.pt.tmp"
    torch.save({"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "extra": extra or {}}, tmp)
    tmp.replace(run_dir / "checkpoint.pt")


def load_checkpoint(run_dir: Path, model, opt) -> tuple[int, dict]:
    # numpy scalars are inert data (older checkpoints stored the learning rate as one)
    with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype, type(np.dtype(np.float64))]):
        ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    return ck["step"], ck["extra"]


class MetricLog:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "log.jsonl"
        self.path.touch()           # there even when a run ends before its first --log-every
        self.t0 = time.time()

    def write(self, step: int, **metrics) -> None:
        rec = {"step": step, "elapsed_s": round(time.time() - self.t0, 1), **{k: round(float(v), 5) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        log.info(" ".join(f"{k}={v}" for k, v in rec.items()))


def parse(parser: argparse.ArgumentParser, module: str, argv=None):
    """Parse the arguments and remember the exact command that was given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command = f"python -m {module} {shlex.join(argv)}"
    return args


def add_minutes_arg(p: argparse.ArgumentParser) -> None:
    """--minutes, for the trainers whose loop checks `out_of_time` (clip, unclip)."""
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes of training, at a step's "
                   "end, and export there (a lease's budget); train.json's steps_done says where, and the schedule "
                   "stays that of --steps")


def out_of_time(args, since: float) -> bool:
    """--minutes have passed since `since` (time.monotonic())."""
    return bool(args.minutes) and time.monotonic() - since > args.minutes * 60


def write_record(out: Path, args, metrics: dict, **extra) -> None:
    """train.json next to the weights: how to make them again, and how good they are."""
    rec = {"command": args.command, "seed": args.seed, "steps": args.steps, "batch": args.batch,
           "threads": args.threads, "torch": torch.__version__, "metrics": metrics, **extra}
    (Path(out) / "train.json").write_text(json.dumps(rec, indent=2))


def save_grid(rows: list[np.ndarray], path: Path, scale: int = 4) -> None:
    """Rows of uint8 (N, H, W, 3) images tiled into one PNG, enlarged with nearest-neighbour."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    img = Image.fromarray(grid)
    img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(path)
