"""unCLIP speed and memory: seconds per picture and peak memory for text to image and for a variation.

    .venv/bin/python bench/unclip_bench.py                 # both cases, shapes preset defaults
    .venv/bin/python bench/unclip_bench.py --batch 4 --repeats 3 --threads 2

Each case runs in its own process, so its peak memory is its own: resident set size on a
CPU, `torch.cuda.max_memory_allocated` as well on a GPU. A warm-up run loads the models and
builds the caption pool first; the timed runs go through `pipelines.unclip.run` exactly as
the tab does, with the preset's defaults (previews included, as the tab shows them).
Prints one JSON line per case and a table.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_case(case: str, preset: str, batch: int, repeats: int, threads: int, device: str | None) -> dict:
    import torch

    import shapes
    from pipelines.events import generate
    from pipelines.presets import load_preset
    from pipelines.registry import Registry
    from pipelines.unclip import ENGINE, UnCLIPRequest, run

    torch.set_num_threads(threads)
    registry = Registry(device=device)
    settings = dict(load_preset(preset).defaults.get(ENGINE, {}))
    source = shapes.render(shapes.parse_caption("a large red circle on a blue background"), 32, 0)

    def request(seed: int) -> UnCLIPRequest:
        if case == "text":
            return UnCLIPRequest(prompt="a red circle above a blue square", preset=preset, seed=seed, batch=batch,
                                 **settings)
        return UnCLIPRequest(mode="variations", image=source, preset=preset, seed=seed, batch=batch, **settings)

    generate(run(request(0), registry))  # warm-up: loads, caption pool
    if registry.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        generate(run(request(k + 1), registry))
        if registry.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    out = {"case": case, "preset": preset, "batch": batch, "threads": threads, "device": str(registry.device),
           "seconds_per_run": round(best, 3), "seconds_per_image": round(best / batch, 3),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "settings": settings}
    if registry.device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=["text", "variation"], help="run one case in this process (internal)")
    p.add_argument("--preset", default="shapes")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    if a.case:
        print(json.dumps(one_case(a.case, a.preset, a.batch, a.repeats, a.threads, a.device)))
        return 0
    rows = []
    for case in ("text", "variation"):
        cmd = [sys.executable, __file__, "--case", case, "--preset", a.preset, "--batch", str(a.batch),
               "--repeats", str(a.repeats), "--threads", str(a.threads)] + (["--device", a.device] if a.device else [])
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            return res.returncode
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    print("\n| case | batch | device | threads | s per image | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['batch']} | {r['device']} | {r['threads']} | {r['seconds_per_image']} | "
              f"{r['peak_rss_mb']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
