"""Runs that outlive the page: a reload finds its run again, previews and all.

Gradio stops a handler when its browser disconnects, so a tab's handler does
not run the engine itself. ``RunStore.launch`` runs the tab's generator (the
one that turns engine events into widget updates) in a worker thread owned
by the store, and returns a ``Run`` that any number of page connections can
``follow``. A reloaded page asks ``RunStore.current`` for its run and
follows it from its latest state; Stop sets the run's flag whichever page
pressed it.

Runs are keyed by owner (the browser's id kept in its local storage, or the
Gradio session for API clients) and tab, so one user's run is never shown to
another. One engine runs at a time per process (``engine_lock``): a second
user's run waits for the first, with a note, instead of sharing the device.
Finished runs are kept for ``keep_s`` seconds so a reload shows the result.
"""
from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

SKIP = {"__type__": "update"}   # gr.skip(), without importing gradio into this module's callers' tests


def _is_skip(v: Any) -> bool:
    return isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1


class Run:
    """One run: its worker thread, stop flag and the widget updates it has produced."""

    def __init__(self, owner: str, tab: str, n_outputs: int, history: int = 64):
        self.id = uuid.uuid4().hex[:12]
        self.owner, self.tab = owner, tab
        self.started = time.time()
        self.finished: float | None = None
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self._state: list[Any] = [SKIP] * n_outputs        # latest value of every output
        self._recent: deque[tuple[int, tuple]] = deque(maxlen=history)
        self._version = 0
        self._cond = threading.Condition()
        self._inline: tuple | None = None                   # (lock, make) when the follower drives the run

    # --- producer side (the worker thread) ---
    def publish(self, update: tuple) -> None:
        with self._cond:
            for i, v in enumerate(update):
                if not _is_skip(v):
                    self._state[i] = v
            self._version += 1
            self._recent.append((self._version, tuple(update)))
            self._cond.notify_all()

    def _end(self, error: BaseException | None) -> None:
        with self._cond:
            self.error = error
            self.finished = time.time()
            self._cond.notify_all()

    def _drive(self, lock: threading.Lock, make) -> Iterator[tuple]:
        error = None
        try:
            with lock:
                for update in make(self.stop_flag.is_set):
                    self.publish(update)
                    yield update
        except GeneratorExit:       # the page went away: the run just ends
            raise
        except BaseException as e:
            error = e
            raise
        finally:
            self._end(error)

    @property
    def done(self) -> bool:
        return self.finished is not None

    def snapshot(self) -> tuple:
        with self._cond:
            return tuple(self._state)

    # --- consumer side (any page following the run) ---
    def follow(self, poll_s: float = 1.0) -> Iterator[tuple]:
        """Yield the latest full state, then each new update until the run ends; re-raise its error."""
        if self._inline is not None:
            (lock, make), self._inline = self._inline, None
            yield from self._drive(lock, make)
            return
        with self._cond:
            seen = self._version
            first = tuple(self._state)
        if seen:
            yield first
        while True:
            with self._cond:
                while self._version == seen and not self.done:
                    self._cond.wait(poll_s)
                if self._version == seen and self.done:
                    break
                missed = self._version - seen
                if missed > len(self._recent):          # fell behind the history: jump to the full state
                    batch = [tuple(self._state)]
                else:
                    batch = [u for v, u in self._recent if v > seen]
                seen = self._version
            yield from batch
        if self.error is not None:
            raise self.error


class RunStore:
    """Every run of the process, by (owner, tab)."""

    def __init__(self, keep_s: float = 600.0, detached: bool = True, worker_init: Callable[[], None] | None = None):
        self.keep_s = keep_s
        self.worker_init = worker_init  # called first in each worker thread (the app sets torch's threads there)
        # On a ZeroGPU Space the GPU is granted to the request's own thread, so runs stay
        # inline there (followed by the page that started them, ended by a disconnect).
        self.detached = detached
        self.engine_lock = threading.Lock()
        self._runs: dict[tuple[str, str], Run] = {}
        self._lock = threading.Lock()
        self.resumers: list = []      # (fn, inputs, outputs) each tab registers, run on page load

    def launch(self, owner: str, tab: str, n_outputs: int,
               make: Callable[[Callable[[], bool]], Iterator[tuple]], waiting: tuple | None = None) -> Run:
        """Start ``make(should_stop)`` (a generator of widget updates) in a worker thread.

        A run of the same owner in the same tab is stopped first. ``waiting`` is
        published while the run waits for another user's run to finish.
        """
        run = Run(owner, tab, n_outputs)
        with self._lock:
            self._prune()
            old = self._runs.get((owner, tab))
            self._runs[(owner, tab)] = run
        if old is not None and not old.done:
            old.stop_flag.set()
        ctx = contextvars.copy_context()   # gr.Info and friends keep reaching the page that started it

        def work():
            error = None
            try:
                if self.worker_init is not None:
                    self.worker_init()
                if not self.engine_lock.acquire(blocking=False):
                    if waiting is not None:
                        run.publish(waiting)
                    while not self.engine_lock.acquire(timeout=0.5):
                        if run.stop_flag.is_set():
                            return
                try:
                    for update in make(run.stop_flag.is_set):
                        run.publish(update)
                finally:
                    self.engine_lock.release()
            except BaseException as e:  # noqa: BLE001 - handed to every follower, which re-raises it
                error = e
            finally:
                run._end(error)

        if self.detached:
            threading.Thread(target=ctx.run, args=(work,), name=f"run-{tab}-{run.id}", daemon=True).start()
        else:
            run._inline = (self.engine_lock, make)
        return run

    def current(self, owner: str, tab: str) -> Run | None:
        """The owner's run in this tab: going, or finished within ``keep_s``."""
        with self._lock:
            self._prune()
            return self._runs.get((owner, tab))

    def stop(self, owner: str, tab: str) -> bool:
        run = self.current(owner, tab)
        if run is None or run.done:
            return False
        run.stop_flag.set()
        return True

    def active(self) -> list[Run]:
        with self._lock:
            return [r for r in self._runs.values() if not r.done]

    def _prune(self) -> None:
        now = time.time()
        for key, run in list(self._runs.items()):
            if run.done and now - run.finished > self.keep_s:
                del self._runs[key]
