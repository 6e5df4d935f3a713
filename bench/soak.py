"""Soak: many generations through the real app; does memory or disk creep up?

    python bench/soak.py --runs 200

Launches app.py's `demo` in this process on a free port, then drives it with the
app's own client, cycling through the engine tabs with short runs on the built-in
presets. It prints resident memory (RSS) after a warm-up and at the end, and the
files left in Atelier's output folder (pruned after ATELIER_OUTPUT_KEEP_HOURS,
set short here) and in Gradio's cache. Target: RSS grows under 5 % after warm-up.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def count_files(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.is_file()) if d.exists() else 0


CALLS = {
    "vqgan_clip": lambda i: ["shapes", f"a red circle {i % 7}", i, 32, 32, 4, 2, None, "", None, 0, "", "", 0.1,
                             "Adam", 4, 1.0, "latest", ["Af", "Pe"], 0, 10],
    "dalle": lambda i: ["shapes", "a blue square", 2, 1.0, 1024, 1.0, 1.0, i, True, None, 4, 4],
    "diffusion": lambda i: ["shapes", "a green star", "", "DPM-Solver++", 4, 3.0, 0.0, i, 1, None, 0.75, 1, 10],
    "unclip": lambda i: ["shapes", "a white cross", 2, 1, "DDIM", 4, 2.0, "DPM-Solver++", 4, 3.0, i, 1, 8],
}
STATUS_AT = {"vqgan_clip": 1, "dalle": 1, "diffusion": 2, "unclip": 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep-s", type=float, default=30.0, help="output files older than this are pruned")
    a = p.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="atelier-soak-"))
    os.environ.update(ATELIER_OUTPUT_DIR=str(out), ATELIER_OUTPUT_KEEP_HOURS=str(a.keep_s / 3600),
                      GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    import torch
    torch.set_num_threads(a.threads)
    import app
    from gradio_client import Client

    from tests.conftest import free_port

    app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **app.LAUNCH)
    client = Client(app.demo.local_url, verbose=False, download_files=False)
    gradio_cache = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio"))
    cache0 = count_files(gradio_cache)
    names = list(CALLS)
    t0 = time.time()
    rss_warm = None
    samples = []
    for i in range(a.runs):
        api = names[i % len(names)]
        res = client.predict(*CALLS[api](i), api_name=f"/{api}")
        assert str(res[STATUS_AT[api]]).startswith("**Done**"), res[STATUS_AT[api]]
        if i + 1 == a.warmup:
            gc.collect()
            rss_warm = rss_mb()
        if (i + 1) % 20 == 0:
            gc.collect()
            samples.append((i + 1, round(rss_mb(), 1), count_files(out)))
            print(f"run {i + 1}: RSS {samples[-1][1]} MB, output files {samples[-1][2]}, "
                  f"{(time.time() - t0) / (i + 1):.2f} s/run", flush=True)
    gc.collect()
    rss_end = rss_mb()
    growth = (rss_end - rss_warm) / rss_warm
    print(f"\n{a.runs} runs in {time.time() - t0:.0f} s over {', '.join(names)}")
    print(f"RSS after {a.warmup} warm-up runs {rss_warm:.1f} MB, at the end {rss_end:.1f} MB: growth {100 * growth:+.2f} %"
          f" (target < 5 %)")
    print(f"output folder: {count_files(out)} files left (pruned after {a.keep_s:.0f} s); Gradio cache grew by "
          f"{count_files(gradio_cache) - cache0} files (Gradio deletes them after 1 h: delete_cache)")
    app.demo.close()
    return 0 if growth < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
