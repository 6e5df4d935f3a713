"""DALL-E sampling speed: the KV-cache sampler against the minGPT tutorial's, side by side in one run.

    .venv/bin/python bench/dalle_bench.py                 # the built-in shapes model
    .venv/bin/python bench/dalle_bench.py --repeats 5 --threads 2

The reference is the classic sampler of Karpathy's minGPT tutorial (`generate`): for
every new token the whole sequence so far goes through the model again, with no cache,
and the last position's logits are sampled (restricted to the image codes, so it draws
the same kind of token). Atelier's is `DALLE.sample`: the prefix once, then one token
per step against transformers' KV cache. Both run on the same model at the preset's
sequence length (24 text tokens + separator + 64 codes) with the same filtering.

Cases, each in its own process so its peak resident memory is its own:
  cached-1 / reference-1   one candidate
  cached-8 / reference-8   8 candidates in one batch (the tab's default)
  engine-8                 the whole engine: 8 candidates, row previews, decoding, CLIP reranking
Prints tokens/s (candidates x 64 codes per second of sampling), the ratios, and peak RSS
(and peak CUDA memory on a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROMPT = "a large yellow diamond above a small blue circle"
CASES = ("reference-1", "cached-1", "reference-8", "cached-8", "engine-8")


def reference_sample(model, text_ids, temperature: float = 1.0, top_k: int = 0, generator=None):
    """minGPT's generate: re-run the whole sequence for every new token, no cache."""
    import torch
    import torch.nn.functional as F

    from pipelines.models.dalle import filter_logits

    cfg = model.config
    x = model.prefix(text_ids)
    with torch.no_grad():
        for _ in range(cfg.image_len):
            logits = model.gpt(input_ids=x, use_cache=False).logits[:, -1, :]    # (B, vocab), whole sequence again
            logits = logits[:, cfg.image_offset:cfg.image_offset + cfg.n_codes]  # image codes only
            logits = filter_logits(logits / temperature, top_k)
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            x = torch.cat([x, nxt + cfg.image_offset], dim=1)
    return x[:, -cfg.image_len:] - cfg.image_offset


def run_case(case: str, repeats: int, threads: int, weights: Path) -> dict:
    import torch

    from pipelines.models.dalle import from_pretrained

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = from_pretrained(weights).to(device)
    kind, b = case.split("-")
    B = int(b)
    text, _ = model.text([PROMPT] * B)
    text = text.to(device)

    if kind == "engine":
        from pipelines import dalle
        from pipelines.events import generate
        from pipelines.models.clip import load_clip
        from pipelines.models.vqgan_files import from_pretrained as load_vqgan

        vqgan = load_vqgan(ROOT / "presets/weights/shapes-vqgan").to(device)
        clip = load_clip(ROOT / "presets/weights/shapes-clip").to(device)
        once = lambda seed: generate(dalle.sample(dalle.DalleRequest(prompt=PROMPT, candidates=B, seed=seed),  # noqa: E731
                                                  model, vqgan, clip, device))
    elif kind == "cached":
        def once(seed):
            for codes in model.sample(text, generator=torch.Generator(device).manual_seed(seed)):
                pass
            return codes
    else:
        once = lambda seed: reference_sample(model, text, generator=torch.Generator(device).manual_seed(seed))  # noqa: E731

    once(0)  # warm-up
    times = []
    for r in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once(r + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    row = {"case": case, "candidates": B, "threads": threads, "device": str(device),
           "sequence": model.config.block_size + 1, "seconds": round(best, 4),
           "tokens_per_s": round(B * model.config.image_len / best, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device.type == "cuda":
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case; the fastest counts")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("ATELIER_THREADS", "1")))
    ap.add_argument("--weights", default=str(ROOT / "presets/weights/shapes-dalle"))
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.case, a.repeats, a.threads, Path(a.weights))))
        return
    rows = {}
    for _ in range(2):  # two rounds, alternating cases, so all of them see the same machine load
        for case in CASES:
            cmd = [sys.executable, __file__, "--case", case, "--repeats", str(a.repeats), "--threads", str(a.threads),
                   "--weights", a.weights]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            if case not in rows or row["seconds"] < rows[case]["seconds"]:
                rows[case] = row
            print(json.dumps(row), flush=True)
    r = {k: v for k, v in rows.items()}
    print(f"\nsequence {r['cached-1']['sequence']} tokens, {a.threads} thread(s), {r['cached-1']['device']}")
    print("| case | reference tokens/s | KV cache tokens/s | speed-up | peak RSS (reference / cache) |")
    print("|---|---|---|---|---|")
    for b in ("1", "8"):
        ref, kv = r[f"reference-{b}"], r[f"cached-{b}"]
        print(f"| {b} candidate(s) | {ref['tokens_per_s']} | {kv['tokens_per_s']} | "
              f"{kv['tokens_per_s'] / ref['tokens_per_s']:.1f}x | {ref['peak_rss_mb']} / {kv['peak_rss_mb']} MB |")
    print(f"\n8 candidates in one batch cost {r['cached-8']['seconds'] / r['cached-1']['seconds']:.2f}x one candidate "
          f"({r['cached-8']['seconds']} s against {r['cached-1']['seconds']} s)")
    e = r["engine-8"]
    print(f"whole engine, 8 candidates with previews, decoding and CLIP reranking: {e['seconds']} s, "
          f"peak RSS {e['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
