"""Engine runs as ZeroGPU calls, under a test double of its forked worker: every argument and every
yield crosses a pickle, as they do on a Space, and a long run is a chain of bounded calls."""
import pickle

import numpy as np
import pytest

from pipelines import zerogpu
from pipelines.engines import ENGINES
from pipelines.events import Final, Pause, Step, generate


class ForkedWorker:
    """What ZeroGPU does to a decorated generator, minus the GPU: arguments and yields are pickled."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args):
        args = pickle.loads(pickle.dumps(args))
        self.calls.append(args[3])
        for ev in self.fn(*args):
            yield pickle.loads(pickle.dumps(ev))


@pytest.fixture()
def served(registry):
    zerogpu.serve(registry)
    yield registry
    zerogpu.serve(None)


def _vqgan_clip(**kw):
    return ENGINES["vqgan_clip"].make_request(None, **{"prompt": "a red circle:1 | on a blue background:0.5",
                                                       "iterations": 12, "cutn": 4, "preview_every": 4,
                                                       "precision": "float32", "seed": 3, **kw})


def _pixels(final):
    return np.asarray(final.images[0])


def test_a_long_run_in_three_bounded_calls_makes_the_picture_of_one_unbroken_run(served):
    req = _vqgan_clip()
    whole = generate(ENGINES["vqgan_clip"].run(req, served))
    worker = ForkedWorker(zerogpu.engine_call)
    events = list(zerogpu.in_bounded_calls(worker, "vqgan_clip", req, lambda: False, max_steps=4))
    final = events[-1]
    assert worker.calls == [4, 4, 4] and isinstance(final, Final) and not final.stopped
    assert np.array_equal(_pixels(final), _pixels(whole)) and final.meta["iterations_done"] == 12
    assert [e.step for e in events if isinstance(e, Step)] == list(range(1, 13))     # no step twice, none lost
    assert not any(isinstance(e, Pause) for e in events)


def test_stop_between_calls_ends_the_run_where_it_stands(served):
    req = _vqgan_clip()
    worker = ForkedWorker(zerogpu.engine_call)
    final = list(zerogpu.in_bounded_calls(worker, "vqgan_clip", req, lambda: True, max_steps=4))[-1]
    seen = []
    stopped_alone = generate(ENGINES["vqgan_clip"].run(req, served, lambda: len(seen.append(0) or seen) >= 4))
    assert worker.calls == [4, 0] and final.stopped and final.meta["iterations_done"] == 4
    assert np.array_equal(_pixels(final), _pixels(stopped_alone))


def test_an_engine_that_cannot_pause_runs_in_one_call(served):
    req = ENGINES["diffusion"].make_request(None, prompt="a red circle", steps=3, preview_every=1)
    worker = ForkedWorker(zerogpu.engine_call)
    events = list(zerogpu.in_bounded_calls(worker, "diffusion", req, lambda: False, max_steps=1))
    assert len(worker.calls) == 1 and isinstance(events[-1], Final) and events[-1].meta["steps_done"] == 3


def test_the_gpu_decorator_is_the_spaces_package_s_and_a_no_op_off_zerogpu():
    import spaces

    assert zerogpu.spaces is spaces and zerogpu.gpu_engine_call is zerogpu.engine_call


def test_a_call_asks_for_its_share_of_the_run_s_gpu_time():
    req = _vqgan_clip(iterations=1000)
    whole = zerogpu.call_seconds("vqgan_clip", req)
    assert zerogpu.call_seconds("vqgan_clip", req, None, 100) < whole <= 300


def _as_a_space(script: str, tmp_path) -> dict:
    """Run `script` in a fresh Python with a Space's environment (GPU calls of 3 steps); the JSON it prints."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SPACE_ID": "atelier/test", "SYSTEM": "spaces", "ATELIER_GPU_CALL_STEPS": "3",
           "ATELIER_OUTPUT_DIR": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(next(line for line in res.stdout.splitlines() if line.startswith("{")))


SPACE_RUN = """
import json, os
import app
from gradio_client import Client
from tests.conftest import QUICK, api_args, free_port, outputs_of
loaded = sorted(r["key"] for r in app.registry.status())
app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **app.LAUNCH)
out = outputs_of("vqgan_clip")
final = Client(app.demo.local_url, verbose=False).predict(
    *api_args("vqgan_clip", prompt="a red circle", **{**QUICK["vqgan_clip"], "iterations": 7}), api_name="/vqgan_clip")
print(json.dumps({"loaded": loaded, "status": final[out["status"]], "done": final[out["settings"]]["iterations_done"]}))
app.demo.close()
"""


def test_the_app_as_a_space_preloads_and_runs_in_bounded_calls(tmp_path):
    """With a Space's environment: the default preset's models load at import, and a run goes through
    the GPU-call path (here with no `spaces` package, so the decorator is a no-op) in pieces of 3 steps."""
    got = _as_a_space(SPACE_RUN, tmp_path)
    assert any(k.startswith("vqgan:builtin") for k in got["loaded"]) and len(got["loaded"]) >= 6
    assert got["status"].startswith("**Done**") and got["done"] == 7


@pytest.mark.parametrize("raised, says", [
    ("You have exceeded your GPU quota (60s requested vs. 12s left).", "quota is used up"),
    ("No GPU was available after 60s", "No GPU was free"),
    ("GPU task aborted", "ran out of its time"),
    ("ZeroGPU worker error: GPU task is exceeding its requested duration", "ran out of its time"),
])
def test_zerogpu_refusals_are_one_clear_line(served, raised, says):
    def refusing(name, req, state, max_steps):
        yield from ()
        raise RuntimeError(raised)

    with pytest.raises(zerogpu.ZeroGPUFailure, match=says):
        list(zerogpu.in_bounded_calls(refusing, "vqgan_clip", _vqgan_clip(), lambda: False))


def test_other_errors_pass_through(served):
    def broken(name, req, state, max_steps):
        yield from ()
        raise KeyError("something else")

    with pytest.raises(KeyError):
        list(zerogpu.in_bounded_calls(broken, "vqgan_clip", _vqgan_clip(), lambda: False))


class RefusingOnce(ForkedWorker):
    """The worker double, with ZeroGPU refusing the call number `at` (from 1) once."""

    def __init__(self, fn, at: int):
        super().__init__(fn)
        self.at = at

    def __call__(self, *args):
        if len(self.calls) + 1 == self.at and self.at:
            self.at = 0
            self.calls.append("refused")
            raise RuntimeError("You have exceeded your GPU quota (60s requested vs. 12s left).")
        yield from super().__call__(*args)


def test_a_refused_run_continues_from_its_last_pause_to_the_same_picture(served):
    req = _vqgan_clip()
    whole = generate(ENGINES["vqgan_clip"].run(req, served))
    worker = RefusingOnce(zerogpu.engine_call, at=2)
    run = zerogpu.BoundedRun(worker, "vqgan_clip", req, lambda: False, max_steps=4)
    with pytest.raises(zerogpu.ZeroGPUFailure, match="quota"):
        list(run)
    assert run.step == 4 and run.state is not None
    rest = list(zerogpu.BoundedRun(worker, "vqgan_clip", req, lambda: False, max_steps=4, state=run.state,
                                   step=run.step))
    assert worker.calls == [4, "refused", 4, 4]
    assert [e.step for e in rest if isinstance(e, Step)] == list(range(5, 13))
    assert np.array_equal(_pixels(rest[-1]), _pixels(whole)) and rest[-1].meta["iterations_done"] == 12


SPACE_CONTINUE = """
import json
import numpy as np
import imageio
from PIL import Image
import app
import ui.tab
from gradio_client import Client
from gradio_client.exceptions import AppError
from pipelines import zerogpu
from pipelines.engines import ENGINES
from pipelines.events import generate
from tests.conftest import QUICK, api_args, free_port, outputs_of
from tests.test_zerogpu import RefusingOnce

ui.tab.gpu_engine_call = RefusingOnce(zerogpu.engine_call, at=2)     # ZeroGPU refuses the second call
app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, **app.LAUNCH)
client, browser, out = Client(app.demo.local_url, verbose=False), "c0ffee00c0ffee00", outputs_of("vqgan_clip")
kw = {**QUICK["vqgan_clip"], "iterations": 7, "preview_every": 1, "precision": "float32", "seed": 4}
args = api_args("vqgan_clip", prompt="a red circle", **kw)
try:
    client.predict(*args, browser, api_name="/vqgan_clip")
    refused = ""
except AppError as e:
    refused = str(e)
paused = client.predict(browser, api_name="/vqgan_clip_resume")
final = client.predict(args[-1], browser, api_name="/vqgan_clip_continue")
png = [f for f in final[out["files"]] if f.endswith(".png") and Image.open(f).size == (32, 32)][0]
from pipelines import media
req = ENGINES["vqgan_clip"].request_from_settings(media.read_meta(png)["settings"])     # the run's own settings
whole = np.asarray(generate(ENGINES["vqgan_clip"].run(req, app.registry)).images[0])
frames = imageio.get_reader(final[out["video"]]).count_frames()
print(json.dumps({"refused": refused, "paused": paused[out["status"]], "status": final[out["status"]],
                  "done": final[out["settings"]]["iterations_done"], "frames": frames,
                  "same": bool(np.array_equal(np.asarray(Image.open(png).convert("RGB")), whole))}))
app.demo.close()
"""


def test_on_a_space_a_refused_run_continues_with_its_video_whole(tmp_path):
    """The app with a Space's environment; ZeroGPU refuses the run's second call. The page says so and
    keeps the run; a reload shows where it stands; Continue finishes it: the picture of an unbroken
    run, and a video of all its previews."""
    got = _as_a_space(SPACE_CONTINUE, tmp_path)
    assert "quota" in got["refused"] and "press Continue" in got["refused"]
    assert got["paused"].startswith("**Paused** at step 3")
    assert got["status"].startswith("**Done**") and got["done"] == 7 and got["same"]
    assert got["frames"] >= 7          # every preview of both parts


def test_a_long_interpolation_in_bounded_calls_makes_the_frames_of_one_run(served):
    req = ENGINES["unclip"].make_request(None, mode="interpolate", prompt="a red circle", prompt_b="a blue star",
                                         frames=6, steps=4, prior_steps=4, seed=2)
    whole = generate(ENGINES["unclip"].run(req, served))
    worker = ForkedWorker(zerogpu.engine_call)
    events = list(zerogpu.in_bounded_calls(worker, "unclip", req, lambda: False, max_steps=8))   # 2 frames a call
    final = events[-1]
    assert worker.calls == [8, 8, 8] and isinstance(final, Final) and not final.stopped
    assert len(final.images) == 6 and final.meta["prior"] == whole.meta["prior"]
    for a, b in zip(final.images, whole.images):      # the same noise and embedding per frame
        assert np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).max() <= 1


def test_other_unclip_modes_run_whole_in_one_call(served):
    req = ENGINES["unclip"].make_request(None, prompt="a red circle", steps=3, prior_steps=3, batch=2)
    worker = ForkedWorker(zerogpu.engine_call)
    events = list(zerogpu.in_bounded_calls(worker, "unclip", req, lambda: False, max_steps=1))
    assert len(worker.calls) == 1 and len(events[-1].images) == 2 and events[-1].meta["steps_done"] == 3
