"""Estimates before a run (pipelines/estimate.py): from each engine's work and measured cost, refined by runs."""
import pytest

from pipelines.engines import ENGINES
from pipelines.estimate import CAP_S, FLOOR_S, Estimator, MemoryWatch, RunMeter, gigabytes, human
from pipelines.presets import load_preset

SHAPES = load_preset("shapes")


def _req(name, **kw):
    return ENGINES[name].make_request(SHAPES, prompt="a red circle", **kw)


def test_more_work_takes_longer_for_every_engine():
    est = Estimator()
    more = {"vqgan_clip": dict(iterations=1000), "diffusion": dict(steps=100, batch=4), "dalle": dict(candidates=32),
            "unclip": dict(steps=100, prior_steps=50)}
    for name, kw in more.items():
        assert est.seconds(ENGINES[name], _req(name, **kw)) > 2 * est.seconds(ENGINES[name], _req(name)), name


def test_a_finished_run_refines_the_estimate_for_its_engine_preset_and_device():
    est, engine = Estimator(weight=1.0), ENGINES["diffusion"]
    req = _req("diffusion", steps=50)
    assert "one CPU thread" in est.say(engine, req)
    est.observe(engine, req, "cpu", 10.0)                    # this machine turned out slow
    assert abs(est.seconds(engine, req) - 10.0) < 1e-6
    assert est.say(engine, req) == "About 10 s and 22 MB on this machine."
    assert est.seconds(engine, _req("diffusion", steps=100)) > 19     # the rate carries over to other requests
    assert est.seconds(engine, req, "cuda") < 10                      # another device keeps its own
    assert est.seconds(ENGINES["unclip"], _req("unclip")) < 10          # and another engine


def test_zerogpu_durations_stay_within_the_platform_bounds():
    est = Estimator()
    tiny, huge = _req("diffusion", steps=1), _req("diffusion", steps=1000, batch=16)
    assert est.gpu_seconds(ENGINES["diffusion"], tiny) == FLOOR_S
    assert est.gpu_seconds(ENGINES["diffusion"], huge) == CAP_S


# --- memory, absurd requests, DALL-E's codes, progress ---

def test_memory_is_the_weights_plus_what_the_run_holds(registry):
    est, engine = Estimator(), ENGINES["diffusion"]
    req = _req("diffusion")
    files = est.weights(engine, req)                     # before loading: the built-in folders' files
    assert 15 * 2**20 < files < 40 * 2**20               # shapes-diffusion + its VQGAN and CLIP
    assert est.memory(engine, req) > files
    assert est.activations(engine, _req("diffusion", batch=16)) > 8 * est.activations(engine, req)
    from pipelines.events import generate
    generate(engine.run(_req("diffusion", steps=1), registry, lambda: False))
    loaded = est.weights(engine, req, registry)          # loaded: the registry's own count
    assert files / 2 < loaded < 2 * files and loaded != files
    assert "MB" in est.say(engine, req, "cpu", registry)


def _not_downloaded(est):
    """As on a machine where no download preset's files are in the cache yet."""
    files = est._file_bytes
    est._file_bytes = lambda spec, registry: files(spec, registry) if spec.source == "builtin" else None


def test_download_presets_count_their_download_until_it_is_here():
    from pipelines.presets import load_preset

    est, engine = Estimator(), ENGINES["diffusion"]
    sd = load_preset("sd-v1-5")
    req = engine.make_request(sd, preset="sd-v1-5", prompt="a lighthouse")
    _not_downloaded(est)
    assert abs(est.weights(engine, req) - sd.download_mb * 2**20) < 2**20
    # its speed is a guess from the built-in models, scaled by size, until a run here measures it
    assert est.seconds(engine, req) > 20 * est.seconds(engine, _req("diffusion"))
    assert "guessed" in est.say(engine, req)


def test_an_absurd_request_gets_a_clear_line_and_never_an_exception(monkeypatch):
    from pipelines import estimate
    from pipelines.presets import load_preset

    monkeypatch.setattr(estimate, "machine_memory", lambda device="cpu": 16 * 2**30)     # a 16 GB machine
    est, engine = Estimator(), ENGINES["diffusion"]
    _not_downloaded(est)
    sd = load_preset("sd-v1-5")
    huge = engine.make_request(sd, preset="sd-v1-5", steps=1000, batch=16, width=1024, height=1024)
    line = est.say(engine, huge)
    assert "more memory than this machine has" in line and "Lower the batch" in line, line
    est.observe(engine, engine.make_request(sd, preset="sd-v1-5", steps=25), "cpu", 10.0)   # 0.4 s a step here
    long = est.say(engine, engine.make_request(sd, preset="sd-v1-5", steps=1000, batch=16))
    assert long.startswith("About 1.8 h and ") and "on this machine: a very long run. Stop keeps" in long, long
    assert est.say(engine, _req("diffusion", steps=10**9)) == "No estimate: Steps must be from 1 to 1000 (got 1e+09)."
    assert est.say(engine, _req("diffusion", steps="many")) == "No estimate: Steps must be a number."
    assert est.say(engine, _req("diffusion", batch=float("inf"))).startswith("No estimate: Batch")
    assert est.say(engine, _req("diffusion", preset="no-such-preset")).startswith("About")
    for name in ENGINES:                                  # every engine, its own limits
        assert est.say(ENGINES[name], _req(name, preset="shapes")).startswith(("About", "Under"))


def test_dalle_work_counts_the_models_codes_per_candidate():
    from pipelines import dalle
    from pipelines.presets import load_preset

    engine = ENGINES["dalle"]
    mega = engine.make_request(load_preset("dalle-mega"), preset="dalle-mega", candidates=2, guidance=1)
    assert dalle.codes_per_candidate("shapes") == 64 and dalle.codes_per_candidate("dalle-mega") == 256
    assert engine.work(mega) == 2 * 256 and engine.work(_req("dalle", candidates=2, guidance=1)) == 2 * 64


def test_a_run_on_a_cpu_raises_the_memory_it_expects_never_lowers_it():
    est, engine = Estimator(), ENGINES["diffusion"]
    req = _req("diffusion", batch=4)
    before = est.activations(engine, req)
    est.observe(engine, req, "cpu", 1.0, memory=0)              # reused memory: no growth seen
    assert est.activations(engine, req) == before
    est.observe(engine, req, "cpu", 1.0, memory=10 * before)
    assert est.activations(engine, req) == pytest.approx(10 * before)
    est.observe(engine, req, "cuda", 1.0, memory=before)        # a GPU's peak allocation is exact: blended
    assert est.activations(engine, req, "cuda") == pytest.approx(before)


def test_memory_watch_sees_a_peak_that_is_gone():
    import mmap

    watch = MemoryWatch("cpu")
    watch.start()
    # 40 MB of fresh pages (an mmap: memory the allocator already holds would be reused unseen), touched, freed
    big = mmap.mmap(-1, 40 * 2**20)
    for i in range(0, len(big), 4096):
        big[i] = 1
    big.close()
    grown = watch.grown()
    assert grown is not None and grown > 30 * 2**20


def test_the_meter_says_progress_and_time_left():
    from pipelines.events import Step

    meter = RunMeter(ENGINES["diffusion"], _req("diffusion", steps=10), None, measure_memory=False)
    meter.first(Step("diffusion", "sample", 1, 10, elapsed_s=0.1))
    half = Step("diffusion", "sample", 5, 10, elapsed_s=2.0)
    assert meter.fraction(half) == 0.5 and meter.left(half) == pytest.approx(2.0)
    early = Step("diffusion", "sample", 0, 100, elapsed_s=0.0)
    assert meter.left(early) == pytest.approx(meter.estimate)           # no steps yet: the estimate
    second_stage = Step("unclip", "decoder", 1, 4, stage_index=1, stage_count=2, elapsed_s=3.0)
    assert meter.fraction(second_stage) == pytest.approx(0.625)
    assert meter.finished() >= 0.1
    assert human(0.5) == "0.5 s" and human(42) == "42 s" and human(600) == "10 min" and human(7200) == "2.0 h"
    assert gigabytes(40 * 2**20) == "40 MB" and gigabytes(0.4 * 2**30) == "0.4 GB"


def test_memory_watch_on_a_gpu_reads_torchs_peak(monkeypatch):
    """No GPU here: torch.cuda's counters stand in, as a CUDA run would set them."""
    import torch

    state = {"now": 100, "peak": 100}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: state.update(peak=state["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    watch = MemoryWatch("cuda")
    watch.start()
    state["peak"] = 100 + 5 * 2**20
    assert watch.grown() == 5 * 2**20
