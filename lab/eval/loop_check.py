"""A quick VQGAN+CLIP check of one CLIP: the product's loop at the shapes preset's defaults, the first N captions of
one evaluation category, 2 seeds each (the caption's seed and the next), judged. The same runs for every CLIP given,
so two CLIPs compare pair by pair (the full harness is `python -m lab.eval vqgan_clip`).

    python -m lab.eval.loop_check CLIP_DIR[,CLIP_DIR_2] N CATEGORY [field=value ...]
    python -m lab.eval.loop_check presets/weights/shapes-clip-factored 10 "one object"
    python -m lab.eval.loop_check presets/weights/shapes-clip-factored,presets/weights/shapes-clip-conv 10 "two objects"
    python -m lab.eval.loop_check CLIP_DIR 10 "two objects" --at=50,100,200,300

`--at` also judges each run's picture at those iterations (its preview there, the picture that iteration's forward pass
drew: the learning rate does not depend on the run's length, so this is a run of that many iterations but for its last
update): one set of runs gives the curve.

Two folders steer together as a preset's `clip` and `clip_2` do (`CLIPEnsemble`), the second weighted by the
request's `clip_2_weight` (the preset's 0.5 unless a field=value changes it).
"""
import sys

import numpy as np
import torch

from lab.eval import evalset
from lab.eval.__main__ import parse_overrides
from lab.eval.judge import judge
from pipelines.engines import ENGINES
from pipelines.events import Final, Step
from pipelines.models.clip import CLIPEnsemble, load_clip
from pipelines.models.vqgan_files import from_pretrained
from pipelines.presets import PRESETS_DIR, load_preset
from pipelines.vqgan_clip import optimise


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    spec, preset = ENGINES["vqgan_clip"], load_preset("shapes")
    # any CLIP folders, not only a preset's: loaded here, not by the registry
    clips = [load_clip(d).eval() for d in argv[0].split(",")]
    if len(clips) > 2:
        raise SystemExit("loop_check: one CLIP folder, or two separated by a comma")
    vq = from_pretrained(PRESETS_DIR / "weights" / preset.components["vqgan"].location).eval()
    at = [int(v) for a in argv[3:] if a.startswith("--at=") for v in a[5:].split(",")]
    n, category = int(argv[1]), argv[2]
    overrides = parse_overrides([a for a in argv[3:] if not a.startswith("--at=")])
    iterations = spec.make_request(preset, **overrides, prompt="x").iterations
    if any(not 1 <= k <= iterations for k in at):
        raise SystemExit(f"loop_check: --at takes iterations from 1 to the run's {iterations}, got {at}")
    ok, fails, curve = [], {}, {k: [] for k in at}
    for e in evalset.load()[category][:n]:
        for s in range(2):
            req = spec.make_request(preset, **overrides, prompt=e["caption"], seed=e.get("seed", 0) + s,
                                    preview_every=1 if at else 0)
            clip = CLIPEnsemble(clips, [1.0, req.clip_2_weight]) if len(clips) == 2 else clips[0]
            for ev in optimise(req, vq, clip, torch.device("cpu")):
                if isinstance(ev, Step) and ev.step in curve and "current" in ev.previews:
                    curve[ev.step].append(judge(ev.previews["current"], e["caption"]).correct)
                if isinstance(ev, Final):
                    out = ev.images[0]
            v = judge(out, e["caption"])
            ok.append(v.correct)
            for f in v.failed:
                fails[f] = fails.get(f, 0) + 1
    print(argv, "right", np.mean(ok), "".join(str(int(o)) for o in ok), "wrong:", fails, flush=True)
    for k, oks in curve.items():
        print(f"  after {k} iterations: right {np.mean(oks):.3f}", "".join(str(int(o)) for o in oks), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
