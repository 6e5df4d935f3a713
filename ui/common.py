"""What every tab shares: per-session Stop, error messages, output files, styling.

UI code maps widgets to a pipeline request and pipeline events to widget updates;
it never touches torch or models directly.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import gradio as gr

from pipelines.presets import is_offline_capable
from pipelines.registry import DeviceOutOfMemory, ModelUnavailable
from pipelines.zerogpu import ZeroGPUFailure

# small built-in images stay crisp when the browser enlarges them; single images (.pixelated) are
# also shown at least 256 px wide, while gallery thumbnails (.crisp) keep the size of their cell
CSS = """
.pixelated img, .pixelated canvas, .crisp img { image-rendering: pixelated; image-rendering: crisp-edges; }
.pixelated img { min-width: 256px; object-fit: contain; }
"""


_last_prune = [0.0]


def output_dir() -> Path:
    """Where finished PNGs and videos go (Gradio serves copies from its own cache).

    Files older than ``ATELIER_OUTPUT_KEEP_HOURS`` (default 1, the age at which Gradio
    drops its copies) are deleted, at most once a minute, so a long-lived server's disk
    does not fill up.
    """
    d = Path(os.environ.get("ATELIER_OUTPUT_DIR", Path(tempfile.gettempdir()) / "atelier"))
    d.mkdir(parents=True, exist_ok=True)
    keep_s = float(os.environ.get("ATELIER_OUTPUT_KEEP_HOURS", "1")) * 3600
    now = time.time()
    if now - _last_prune[0] >= min(60.0, keep_s):
        _last_prune[0] = now
        prune(d, keep_s)
    return d


def prune(folder: Path, keep_s: float) -> int:
    """Delete files in ``folder`` last modified more than ``keep_s`` seconds ago; returns how many."""
    n, cutoff = 0, time.time() - keep_s
    for f in folder.iterdir():
        try:
            if f.is_file() and f.stat().st_mtime < cutoff:
                f.unlink()
                n += 1
        except OSError:     # removed meanwhile, or not ours to remove
            pass
    return n


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "cli"


def owner_of(client_id: str | None, request: gr.Request | None) -> str:
    """Who a run belongs to: the browser (its id survives a reload), else the Gradio session (API clients)."""
    if isinstance(client_id, str) and 8 <= len(client_id) <= 64 and client_id.isalnum():
        return "browser-" + client_id
    return "session-" + session_of(request)


# The browser's id, made and kept by the page itself (no round trip), so that a Run
# clicked the moment the page appears, or a reload before the server answered, still
# belongs to this browser. getRandomValues, unlike randomUUID, works on plain http too.
CLIENT_ID_JS = """() => {
  const key = "atelier-client-id";
  let id = null;
  try { id = window.localStorage.getItem(key); } catch (e) {}
  if (!id || !/^[0-9a-f]{32}$/.test(id)) {
    id = Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, "0")).join("");
    try { window.localStorage.setItem(key, id); } catch (e) {}
  }
  return id;
}"""


def client_id_component() -> gr.Textbox:
    """The hidden field every handler reads the browser's id from (`CLIENT_ID_JS` sets it on page load).

    Empty by default, so API clients may leave it out and are told apart by their
    Gradio session.
    """
    return gr.Textbox("", visible=False, elem_id="atelier_client_id")


WAITING = "Waiting for another user's run to finish..."


def follow_new_run(runs, tab: str, outputs: list, status, make, client_id, request):
    """Start ``make(should_stop)`` as this browser's run in ``tab`` and follow it (see ui/runs.py).

    While another user's run holds the engine, ``status`` says so.
    """
    waiting = tuple(WAITING if o is status else gr.skip() for o in outputs)
    run = runs.launch(owner_of(client_id, request), tab, len(outputs), make, waiting)
    yield from run.follow()


def stop_handler(runs, tab: str):
    """The Stop button's handler: ends this browser's run in ``tab``, keeping what it made."""
    def stop(client_id, request: gr.Request):
        runs.stop(owner_of(client_id, request), tab)
    return stop


def user_error(e: Exception) -> gr.Error:
    """A clear one-line message in the page; the server and other runs carry on."""
    return gr.Error(str(e).strip() or type(e).__name__, duration=None)


# bad input, weights, network, memory, ZeroGPU's refusals
USER_ERRORS = (ValueError, FileNotFoundError, ModelUnavailable, DeviceOutOfMemory, ZeroGPUFailure)


def loading_note(registry, preset, roles) -> str | None:
    """A status line while a run's models load (None when they already are): hub presets download on first use."""
    specs = [preset.components[r] for r in roles if r in preset.components]
    loaded = {row["key"] for row in registry.status()}
    if all(s.key in loaded for s in specs):
        return None
    note = f"Loading the models of *{preset.label}*..."
    if not is_offline_capable(preset):
        note += (" The first use downloads their weights into the Hugging Face cache: this can take a few "
                 "minutes, and later runs start at once.")
    return note


class Throttle:
    """Let through at most one update per `interval` seconds (plus every forced one)."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.last = interval, 0.0

    def __call__(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            return True
        return False
