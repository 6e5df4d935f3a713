"""Runs that outlive the page (ui/runs.py): followers, stop, one engine at a time, owners apart."""
import threading
import time

import pytest

from ui.runs import SKIP, RunStore


def counter(n, gate=None, fail_at=None):
    def make(should_stop):
        for i in range(1, n + 1):
            if gate is not None:
                gate.wait(5)
            if should_stop():
                yield (SKIP, f"stopped at {i}")
                return
            if i == fail_at:
                raise ValueError("broken at %d" % i)
            yield (f"img{i}", f"step {i}")
            time.sleep(0.002)
        yield ("final", "done")
    return make


def test_a_follower_sees_every_update_and_the_end():
    store = RunStore()
    run = store.launch("a", "tab", 2, counter(5))
    outs = list(run.follow())
    assert outs[-1] == ("final", "done")
    assert [o[1] for o in outs if o[1].startswith("step")] == [f"step {i}" for i in range(1, 6)]
    assert run.done and run.error is None


def test_a_late_follower_starts_from_the_latest_state():
    store = RunStore()
    gate = threading.Event()
    run = store.launch("a", "tab", 2, counter(50, gate=gate))
    gate.set()
    while run.snapshot()[0] == SKIP:
        time.sleep(0.001)
    late = run.follow()
    first = next(late)
    assert first[0].startswith("img") and first[1].startswith("step")
    assert list(late)[-1] == ("final", "done")
    # after the end, a new follower gets the final state once
    assert list(store.current("a", "tab").follow()) == [("final", "done")]


def test_errors_reach_every_follower():
    store = RunStore()
    run = store.launch("a", "tab", 2, counter(5, fail_at=3))
    with pytest.raises(ValueError, match="broken at 3"):
        list(run.follow())
    with pytest.raises(ValueError, match="broken at 3"):
        list(run.follow())


def test_stop_is_per_owner_and_tab():
    store = RunStore()
    gate = threading.Event()
    a = store.launch("alice", "tab", 2, counter(1000, gate=gate))
    b = store.launch("bob", "other", 2, counter(3))
    assert store.current("bob", "tab") is None and store.current("alice", "other") is None
    assert not store.stop("bob", "tab")
    assert store.stop("alice", "tab")
    gate.set()
    assert list(a.follow())[-1][1].startswith("stopped at")
    assert list(b.follow())[-1] == ("final", "done")


def test_one_engine_at_a_time_and_the_waiting_note():
    store = RunStore()
    gate = threading.Event()
    first = store.launch("alice", "tab", 2, counter(3, gate=gate))
    time.sleep(0.05)
    second = store.launch("bob", "tab", 2, counter(3), waiting=(SKIP, "waiting"))
    time.sleep(0.05)
    assert second.snapshot() == (SKIP, "waiting") and not second.done
    gate.set()
    assert list(first.follow())[-1] == ("final", "done")
    assert list(second.follow())[-1] == ("final", "done")
    assert second.finished >= first.finished


def test_a_new_run_of_the_same_owner_and_tab_stops_the_old_one():
    store = RunStore()
    gate = threading.Event()
    old = store.launch("a", "tab", 2, counter(1000, gate=gate))
    new = store.launch("a", "tab", 2, counter(2))
    gate.set()
    assert list(old.follow())[-1][1].startswith("stopped at")
    assert list(new.follow())[-1] == ("final", "done")
    assert store.current("a", "tab") is new


def test_finished_runs_are_forgotten_after_keep_s():
    store = RunStore(keep_s=0.05)
    run = store.launch("a", "tab", 2, counter(1))
    list(run.follow())
    assert store.current("a", "tab") is run
    time.sleep(0.1)
    assert store.current("a", "tab") is None


def test_inline_runs_are_driven_by_their_follower_and_end_with_it():
    store = RunStore(detached=False)
    run = store.launch("a", "tab", 2, counter(100))
    time.sleep(0.05)
    assert run.snapshot() == (SKIP, SKIP)           # nothing happens without a follower
    follower = run.follow()
    assert next(follower) == ("img1", "step 1")
    follower.close()                                # the page went away
    assert run.done and not store.engine_lock.locked()


def test_output_dir_deletes_files_older_than_the_keep_period(monkeypatch, tmp_path):
    import os

    from ui import common

    monkeypatch.setenv("ATELIER_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("ATELIER_OUTPUT_KEEP_HOURS", "1")
    old, new = tmp_path / "old.png", tmp_path / "new.png"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    monkeypatch.setattr(common, "_last_prune", [0.0])
    assert common.output_dir() == tmp_path
    assert not old.exists() and new.exists()


def test_worker_init_runs_in_each_worker_thread_before_the_engine(monkeypatch):
    """The app sets torch's CPU threads per worker thread (OpenMP's setting is per thread): the hook runs there,
    before the run's first update, and the engine sees its effect."""
    import torch

    from pipelines import registry

    seen = []

    def make(should_stop):
        seen.append(("engine", threading.current_thread().name, torch.get_num_threads()))
        yield ("final", "done")

    monkeypatch.setenv("ATELIER_THREADS", "1")
    before = torch.get_num_threads()
    store = RunStore(worker_init=lambda: (seen.append(("init", threading.current_thread().name)),
                                          registry.use_worker_threads()))
    for k in range(2):
        run = store.launch("a", f"tab{k}", 2, make)
        assert list(run.follow())[-1] == ("final", "done")
    assert [s[0] for s in seen] == ["init", "engine", "init", "engine"]
    assert seen[0][1] == seen[1][1] != threading.current_thread().name and seen[1][2] == 1
    assert torch.get_num_threads() == before          # the caller's thread keeps its own setting


def test_worker_threads_from_the_environment_or_all_cores_but_one(monkeypatch):
    import os

    from pipelines.registry import worker_threads

    monkeypatch.setenv("ATELIER_THREADS", "3")
    assert worker_threads() == 3
    monkeypatch.setenv("ATELIER_THREADS", "0")
    assert worker_threads() == 1
    monkeypatch.setenv("ATELIER_THREADS", "many")
    assert worker_threads() == max(1, (os.cpu_count() or 1) - 1)
    monkeypatch.delenv("ATELIER_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert worker_threads() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert worker_threads() == 15


def test_warm_imports_import_the_engines_libraries_in_the_background():
    """In a fresh interpreter: importing the registry leaves transformers' CLIP unimported; warm_imports brings it
    (and the rest of its list) in from a background thread."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pipelines.registry import WARM_IMPORTS, warm_imports; "
            "clip = 'transformers.models.clip.modeling_clip'; before = clip in sys.modules; t = warm_imports(); "
            "t.join(120); print(before, t.name, clip in sys.modules, all(m in sys.modules for m, _ in WARM_IMPORTS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == ["False", "warm-imports", "True", "True"], out.stderr[-2000:]


def test_a_model_load_waits_for_the_warm_imports():
    """transformers' lazy module is not safe to import from two threads at once: the registry's first load
    waits for the background import (a fresh interpreter, the load asked for while it runs)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch; from pipelines.registry import Registry, warm_imports; "
            "from pipelines.presets import ComponentSpec; t = warm_imports(); r = Registry(device='cpu'); seen = []; "
            "r.register_loader('probe', lambda spec, reg: (seen.append(t.is_alive()), torch.nn.Linear(1, 1))[1]); "
            "r.get(ComponentSpec('probe', 'path', '/nowhere')); print(seen)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == ["[False]"], (out.stdout, out.stderr[-2000:])
