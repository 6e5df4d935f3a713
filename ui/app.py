"""Atelier's page: one tab per engine over one shared registry."""
from __future__ import annotations

import gradio as gr

from pipelines import __version__
from ui import models as models_panel
from ui import diffusion, vqgan_clip
from ui.common import RunControl


def build_demo(registry) -> gr.Blocks:
    runs = RunControl()
    with gr.Blocks(title="Atelier", delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown(f"# Atelier\nText to image in the browser · v{__version__}")
        with gr.Tabs():
            with gr.Tab("VQGAN+CLIP", id="vqgan_clip"):
                vqgan_clip.build(registry, runs)
            with gr.Tab("Diffusion", id="diffusion"):
                diffusion.build(registry, runs)
            with gr.Tab("Models", id="models"):
                table = models_panel.build(registry)
        demo.load(lambda: models_panel.status_markdown(registry), None, table, api_name=False)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo
