"""Atelier's page: one tab per engine of the table (pipelines/engines.py) over one shared registry."""
from __future__ import annotations

import importlib

import gradio as gr

from pipelines import __version__
from pipelines.engines import ENGINES
from ui import compare as compare_tab
from ui import history as history_tab
from ui import relay
from ui import models as models_panel
from pipelines.registry import use_worker_threads
from pipelines.zerogpu import ON_SPACES
from ui.common import CLIENT_ID_JS, client_id_component
from ui.runs import RunStore


def build_demo(registry) -> gr.Blocks:
    store = RunStore(detached=not ON_SPACES, worker_init=use_worker_threads)
    with gr.Blocks(title="Atelier", delete_cache=(1800, 3600)) as demo:
        store.client = client_id_component()
        gr.Markdown(f"# Atelier\nText to image in the browser · v{__version__}")
        with gr.Tabs():
            for engine in ENGINES.values():      # one tab per engine of the table, each ui/<name>.py
                with gr.Tab(engine.label, id=engine.name):
                    importlib.import_module(f"ui.{engine.name}").build(registry, store)
            with gr.Tab("Compare", id="compare"):  # one prompt through every engine the preset serves
                compare_tab.build(registry, store)
            sends = relay.wire(store)              # "Send to" between the engine tabs (ui/relay.py)
            with gr.Tab("History", id="history"):  # this browser's runs, kept across restarts
                history_tab.build(store, sends)
            with gr.Tab("Models", id="models"):
                table = models_panel.build(registry)
        demo.load(lambda: models_panel.status_markdown(registry), None, table, api_name=False)
        # a reloaded page finds its runs again: the page sets its browser id, then follows each tab's run
        loaded = demo.load(None, None, [store.client], js=CLIENT_ID_JS, api_name=False, queue=False)
        for fn, inputs, outputs, api_name in store.resumers:
            loaded.then(fn, inputs, outputs, api_name=api_name, concurrency_limit=None, show_progress="hidden")
    demo.store = store
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo
