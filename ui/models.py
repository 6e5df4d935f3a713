"""The models panel: what the registry has loaded, where, and how much memory it takes."""
from __future__ import annotations

import gradio as gr


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
    table = gr.Markdown(status_markdown(registry), elem_id="models_status")
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", elem_id="models_refresh")
        free = gr.Button("Unload all", size="sm", elem_id="models_unload")
    refresh.click(lambda: status_markdown(registry), None, table, api_name="models_status", queue=False)

    def unload():
        registry.unload()
        return status_markdown(registry)

    free.click(unload, None, table, api_name="models_unload")
    return table
