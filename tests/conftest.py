"""Test set-up: offline, deterministic, and gentle on a 2-core machine."""
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
def served_app():
    """The real app (app.py's `demo`, launched with app.py's own settings) on a free local port."""
    import app

    app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                    **app.LAUNCH)
    try:
        yield app
    finally:
        app.demo.close()


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
