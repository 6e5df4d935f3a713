"""Atelier: launch the studio. `python app.py`, then open http://127.0.0.1:7860.

Hugging Face Spaces imports this file and serves `demo`. Nothing here touches the
network: analytics, telemetry and share links are off, and the built-in presets
load from presets/weights/.
"""
import os

# before gradio is imported: no analytics, no telemetry, no hub look-ups for built-in presets
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pipelines.zerogpu import ON_SPACES, preload_default_preset, serve  # noqa: E402  (imports `spaces` first)
from pipelines.registry import Registry, warm_imports  # noqa: E402

warm_imports()  # the engines' libraries import in the background while the page is built; models stay lazy

from ui.app import build_demo  # noqa: E402
from ui.common import CSS  # noqa: E402

registry = Registry()
serve(registry)  # the registry that ZeroGPU calls find in their forked worker
if ON_SPACES:    # as ZeroGPU asks: the default preset's models loaded and placed at import; elsewhere lazily
    preload_default_preset(registry)
demo = build_demo(registry)

# Every launch uses these (tests too): uploads capped, no share link, files served only from
# Gradio's own cache, and a clear message for any error, malformed API calls included.
LAUNCH = dict(css=CSS, footer_links=["api", "gradio"], share=False, max_file_size="20mb", allowed_paths=[],
              show_error=True, ssr_mode=False if not ON_SPACES else None)

if __name__ == "__main__":
    import gradio as gr

    demo.launch(theme=gr.themes.Default(), **LAUNCH)
