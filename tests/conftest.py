"""Test set-up: offline, deterministic, and gentle on a 2-core machine."""
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# runs of a browser land in the history (pipelines/history.py): a fresh folder per session, never ~/.cache
if "ATELIER_HISTORY_DIR" not in os.environ:
    import tempfile

    os.environ["ATELIER_HISTORY_DIR"] = tempfile.mkdtemp(prefix="atelier-test-history-")

ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402

# ATELIER_THREADS lets CI or a busy machine choose; 1 is safest beside other work.
torch.set_num_threads(int(os.environ.get("ATELIER_THREADS", "1")))

FIXTURES = ROOT / "tests" / "fixtures"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def registry():
    """A CPU registry of the module's own (a test file may define one of its own instead)."""
    from pipelines.registry import Registry

    return Registry(device="cpu")


@pytest.fixture(scope="module")
def served_app():
    """The real app (app.py's `demo`, launched with app.py's own settings) on a free local port."""
    import app

    app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                    **app.LAUNCH)
    try:
        yield app
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def client(served_app, tmp_path_factory):
    """A gradio_client on the served app, downloading into a fresh folder."""
    from gradio_client import Client

    return Client(served_app.demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


# how much work a quick run of each engine does in the tests (a new engine adds its line)
QUICK = {"vqgan_clip": dict(iterations=6, preview_every=2, cutn=4), "diffusion": dict(steps=4, preview_every=1),
         "dalle": dict(candidates=2), "unclip": dict(prior_steps=4, steps=4, preview_every=1)}


def api_args(name: str, preset: str = "shapes", **given) -> list:
    """The positional values of the `/<name>` endpoint: the tab's RUN_FIELDS (ui/<name>.py) from `given`,
    else the engine's defaults for the shapes preset (widgets of the tab's own: empty), then the video fps."""
    import importlib

    from pipelines.engines import ENGINES
    from pipelines.presets import load_preset

    engine = ENGINES[name]
    values = {**engine.defaults(load_preset("shapes")), "preset": preset, **given}
    fields = importlib.import_module(f"ui.{name}").RUN_FIELDS
    return [list(v) if isinstance(v := values.get(f), tuple) else v for f in fields] + [engine.fps]


def outputs_of(name: str) -> dict[str, int]:
    """Output widget name -> its index in the tab's endpoints' outputs."""
    import importlib

    return {n: i for i, n in enumerate(importlib.import_module(f"ui.{name}").OUTPUTS)}


def shown(value) -> bool:
    """Whether a gradio_client output holds a value: an update the handler skipped (gr.skip())
    reaches the client as the truthy dict {'__type__': 'update'}, which is not a value."""
    return bool(value) and not (isinstance(value, dict) and value.get("__type__") == "update")


def wait_for_outputs(job, n: int, timeout: float = 60) -> None:
    """Poll a gradio_client job until it has yielded n outputs (or timeout seconds pass)."""
    import time

    t0 = time.time()
    while len(job.outputs()) < n and time.time() - t0 < timeout:
        time.sleep(0.01)


def reload_page(client, job, tmp_path, after_outputs: int):
    """Let a run yield `after_outputs` updates, then drop its page as a reload does (the run goes on);
    returns a fresh client, the reloaded page."""
    from gradio_client import Client

    wait_for_outputs(job, after_outputs)
    job.cancel()
    return Client(client.src, verbose=False, download_files=str(tmp_path))


@pytest.fixture(scope="session")
def standin_hub(tmp_path_factory):
    """A hub cache holding every download preset's tiny stand-in (lab/standins.py), built once per session."""
    from lab.standins import build

    cache = tmp_path_factory.mktemp("standin-hub")
    build(cache)
    return cache


@pytest.fixture
def on_standins(standin_hub, monkeypatch):
    """The hub client (and Atelier's URL cache) look in the stand-in cache for this test; offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(standin_hub))
    return standin_hub
