"""The models panel: every preset (what it serves, what it downloads, whether it can load now), then what the
registry has loaded, where, and how much memory it takes."""
from __future__ import annotations

import gradio as gr

from pipelines.engines import ENGINES
from pipelines.presets import PresetError, list_presets


def presets_markdown(registry) -> str:
    """One row per preset: the tabs it serves, what its first use downloads, and its state on this machine
    (ready, downloads on first use, or the one sentence that says why it cannot load)."""
    lines = ["| preset | tabs | download | now |", "|---|---|---|---|"]
    try:
        presets = list_presets()
    except PresetError as e:
        return f"The presets cannot be read: {e}"
    for p in presets:
        tabs = ", ".join(e.label for e in ENGINES.values() if e.supports(p)) or "none"
        states = [s for s in (registry.availability(spec) for spec in p.components.values()) if s]
        blocked = [s for s in states if s != "downloads on first use"]
        now = blocked[0].split(". ")[0] + "." if blocked else "downloads on first use" if states else "ready"
        label = p.label.removesuffix(" (downloads)")
        lines.append(f"| **{p.name}**: {label} | {tabs} | {p.downloads} | {now.replace('|', '/')} |")
    return "\n".join(lines)


def status_markdown(registry) -> str:
    rows = registry.status()
    head = f"Device: **{registry.device}**"
    budget = getattr(registry, "budget_bytes", None)
    head += f" · memory budget {budget / 2**20:.0f} MB" if budget else " · no memory budget"
    if not rows:
        return head + "\n\nNo model loaded yet: models load on first use."
    lines = [head, "", "| model | kind | device | dtype | MB | in use | last used |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['key']}` | {r['kind']} | {r['device']} | {r['dtype']} | {r['size_mb']:.1f} | "
                     f"{r['in_use']} | {r['last_used_s_ago']:.0f} s ago |")
    return "\n".join(lines)


def build(registry) -> None:
    gr.Markdown("### Presets\nEach tab's *Preset* menu picks one. Download presets fetch their weights from the "
                "Hugging Face Hub (or the authors' servers) on first use and keep them in the hub cache.")
    presets = gr.Markdown(presets_markdown(registry), elem_id="models_presets")
    gr.Markdown("### Loaded now")
    table = gr.Markdown(status_markdown(registry), elem_id="models_status")
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", elem_id="models_refresh")
        free = gr.Button("Unload all", size="sm", elem_id="models_unload")
    refresh.click(lambda: status_markdown(registry), None, table, api_name="models_status", queue=False)
    refresh.click(lambda: presets_markdown(registry), None, presets, api_name="models_presets", queue=False)

    def unload():
        registry.unload()
        return status_markdown(registry)

    free.click(unload, None, table, api_name="models_unload")
    return table
