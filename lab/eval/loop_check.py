"""A quick VQGAN+CLIP check of one CLIP: the product's loop at the shapes preset's defaults, the first N captions of
one evaluation category, 2 seeds each (the caption's seed and the next), judged. The same runs for every CLIP given,
so two CLIPs compare pair by pair (the full harness is `python -m lab.eval vqgan_clip`).

    python -m lab.eval.loop_check CLIP_DIR N CATEGORY [field=value ...]
    python -m lab.eval.loop_check presets/weights/shapes-clip-factored 10 "one object"
"""
import sys

import numpy as np
import torch

import pipelines.vqgan_clip as V
from lab.eval import evalset
from lab.eval.judge import judge
from pipelines.events import Final
from pipelines.models.clip import load_clip
from pipelines.models.vqgan_files import from_pretrained
from pipelines.presets import load_preset


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    clip = load_clip(argv[0]).eval()
    vq = from_pretrained("presets/weights/shapes-vqgan").eval()
    n, category = int(argv[1]), argv[2]
    d = load_preset("shapes").defaults["vqgan_clip"]
    kw = dict(iterations=d["iterations"], lr=d["lr"], cutn=d["cutn"], augments=tuple(d["augments"]), preview_every=0,
              starts=d["starts"], starts_for=d["starts_for"], cut_noise=d["cut_noise"])
    for a in argv[3:]:
        k, v = a.split("=")
        kw[k] = type(kw[k])(v) if k in kw else float(v)
    ok, fails = [], {}
    for e in evalset.load()[category][:n]:
        for s in range(2):
            req = V.VQGANCLIPRequest(prompt=e["caption"], seed=e.get("seed", 0) + s, **kw)
            for ev in V.optimise(req, vq, clip, torch.device("cpu")):
                if isinstance(ev, Final):
                    out = ev.images[0]
            v = judge(out, e["caption"])
            ok.append(v.correct)
            for f in v.failed:
                fails[f] = fails.get(f, 0) + 1
    print(argv, "right", np.mean(ok), "".join(str(int(o)) for o in ok), "wrong:", fails, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
