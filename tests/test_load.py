"""Many users at once, through the app's own client API over a real socket.

Eight clients spread over every engine tab, several runs each, on the built-in
presets: every run completes with its own prompt and seed (never another
user's), each model is loaded once, resident models stay within the registry's
budget, and a waiting user sees their place in the queue. Every engine of the
table (pipelines/engines.py) takes part.
"""
import threading
import time

import pytest

from pipelines import media
from pipelines.engines import ENGINES as TABLE
from tests.conftest import QUICK, api_args, outputs_of

N_CLIENTS = 8
RUNS_EACH = 2
PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow cross", "a white diamond",
           "a black triangle", "a purple circle", "an orange square"]


# api name -> (index of the settings JSON in the outputs, of the files list), for every engine of the table
ENGINES = {name: (outputs_of(name)["settings"], outputs_of(name)["files"]) for name in TABLE}


@pytest.fixture(scope="module")
def served(served_app, tmp_path_factory):
    return served_app, tmp_path_factory.mktemp("dl")


def _count_loads(registry):
    counts: dict[str, int] = {}
    lock = threading.Lock()
    for kind, fn in list(registry._loaders.items()):
        def counted(spec, reg, _fn=fn):
            with lock:
                counts[spec.key] = counts.get(spec.key, 0) + 1
            return _fn(spec, reg)
        registry.register_loader(kind, counted)
    return counts


def test_eight_users_at_once(served):
    from gradio_client import Client
    from gradio_client.utils import Status

    app, dl = served
    registry = app.registry
    registry.unload()
    loads = _count_loads(registry)
    registry.budget_bytes = 512 * 2**20
    resident_peak = [0]
    stop_watch = threading.Event()

    def watch():
        while not stop_watch.is_set():
            rows = registry.status()
            resident_peak[0] = max(resident_peak[0], sum(r["size_mb"] for r in rows if not r["offloaded"]) * 2**20)
            time.sleep(0.02)

    results, errors, ranks = [], [], []

    def user(i):
        try:
            client = Client(app.demo.local_url, verbose=False, download_files=str(dl / f"u{i}"))
            names = list(ENGINES)
            for k in range(RUNS_EACH):
                api = names[(i + k) % len(names)]
                settings_at, files_at = ENGINES[api]
                prompt, seed = PROMPTS[i], 1000 * i + k
                job = client.submit(*api_args(api, prompt=prompt, seed=seed, **QUICK[api]), api_name=f"/{api}")
                while not job.done():
                    st = job.status()
                    if st.code == Status.IN_QUEUE and st.rank is not None and st.queue_size:
                        ranks.append((st.rank, st.queue_size))
                    time.sleep(0.05)
                final = job.result()
                results.append((i, api, prompt, seed, final[settings_at], final[files_at]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(N_CLIENTS)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    stop_watch.set()
    took = time.time() - t0

    assert not errors, errors
    assert len(results) == N_CLIENTS * RUNS_EACH
    assert {api for _, api, *_ in results} == set(ENGINES)
    for i, api, prompt, seed, meta, files in results:
        assert meta["engine"] == api and meta["settings"]["prompt"] == prompt and meta["settings"]["seed"] == seed, \
            (i, api, meta["settings"])
        pngs = [f for f in files if f.endswith(".png")]
        assert media.read_meta(pngs[0])["settings"]["prompt"] == prompt     # the files are this user's too
    assert loads and all(n == 1 for n in loads.values()), loads             # no model loaded twice
    assert resident_peak[0] <= registry.budget_bytes
    assert any(rank >= 1 for rank, _ in ranks), "no waiting client ever saw its queue position"
    print(f"{len(results)} runs by {N_CLIENTS} clients in {took:.1f} s; peak resident "
          f"{resident_peak[0] / 2**20:.1f} MB; loads {loads}; deepest queue {max(q for _, q in ranks)}")
