"""Estimates before a run (pipelines/estimate.py): from each engine's work and measured cost, refined by runs."""
from pipelines.engines import ENGINES
from pipelines.estimate import CAP_S, FLOOR_S, Estimator
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
    assert abs(est.seconds(engine, req) - 10.0) < 1e-6 and est.say(engine, req) == "About 10 s on this machine."
    assert est.seconds(engine, _req("diffusion", steps=100)) > 19     # the rate carries over to other requests
    assert est.seconds(engine, req, "cuda") < 10                      # another device keeps its own
    assert est.seconds(ENGINES["unclip"], _req("unclip")) < 10          # and another engine


def test_zerogpu_durations_stay_within_the_platform_bounds():
    est = Estimator()
    tiny, huge = _req("diffusion", steps=1), _req("diffusion", steps=1000, batch=16)
    assert est.gpu_seconds(ENGINES["diffusion"], tiny) == FLOOR_S
    assert est.gpu_seconds(ENGINES["diffusion"], huge) == CAP_S
