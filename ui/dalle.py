"""The DALL-E tab: watch the token grids of all candidates fill row by row, then see them ranked by CLIP."""
from __future__ import annotations

import gradio as gr

from pipelines import media
from pipelines.dalle import MAX_CANDIDATES, tile
from pipelines.engines import ENGINES
from ui.tab import Tab

EXAMPLE = "a large yellow diamond above a small blue circle"
EXAMPLES = [[EXAMPLE], ["a red circle"], ["a small green square to the left of a large purple cross"],
            ["a large white star at the top on a black background"], ["a purple star"]]
RUN_FIELDS = ["preset", "prompt", "candidates", "temperature", "top_k", "top_p", "guidance", "seed", "rerank",
              "init_image", "keep_rows"]
OUTPUTS = ("preview", "status", "final", "video", "files", "settings")


def show(req, ev, first) -> dict | None:
    grid = ev.previews.get("partial")
    return {"preview": media.enlarge(grid)} if grid is not None else None


def finish(req, ev, rec) -> dict:
    """The candidates best first, each labelled with its rank and CLIP score."""
    scores = ev.meta["clip_scores"] or [None] * len(ev.images)
    shown = [(path, f"#{rank}" + (f" · CLIP {score:.3f}" if score is not None else ""))
             for rank, (path, score) in enumerate(zip(rec.shown, scores), 1)]
    ranked = " · ranked by CLIP, best first" if ev.meta["clip_scores"] else ""
    return {"preview": media.enlarge(tile(ev.images)), "final": shown,
            "status": f" after {ev.meta['tokens_done']} of {ev.meta['tokens_total']} codes per candidate{ranked}."}


def build(registry, runs) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    with Tab(ENGINES["dalle"], registry, runs, prefix="dal", outputs=OUTPUTS, unit="Code") as tab:
        d, inp = tab.defaults, tab.input
        with tab.settings_column():
            tab.prompt_box(EXAMPLE)
            tab.examples(EXAMPLES)
            with gr.Row():
                inp("candidates", gr.Number(label=f"Candidates (1-{MAX_CANDIDATES}, one batch)",
                                            value=d["candidates"], precision=0, elem_id="dal_candidates"))
                tab.batch_count_box()
                tab.seed_box()
                inp("rerank", gr.Checkbox(label="Rank by CLIP", value=d["rerank"], elem_id="dal_rerank"))
            tab.vary_seed_box()
            with gr.Row():
                inp("temperature", gr.Number(label="Temperature (> 0)", value=d["temperature"],
                                             elem_id="dal_temperature"))
                inp("top_k", gr.Number(label="Top-k (the codebook size = no limit)", value=d["top_k"], precision=0,
                                       elem_id="dal_top_k"))
                inp("top_p", gr.Number(label="Top-p (0-1]", value=d["top_p"], elem_id="dal_top_p"))
                inp("guidance", gr.Number(label="Guidance scale (1 = off)", value=d["guidance"], elem_id="dal_guidance",
                                          info="classifier-free 'supercondition': above 1 follows the prompt harder"))
            with gr.Row():
                tab.fps_slider(30)
            run_btn, stop_btn = tab.buttons()
            with gr.Accordion("Image completion", open=False):
                gr.Markdown("The top rows of the picture's tokens are kept; the model writes the rest.")
                with gr.Row():
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    inp("init_image", gr.File(label="Image to complete (square)", file_types=["image"],
                                              elem_id="dal_init"))
                    inp("keep_rows", gr.Slider(1, 7, value=d["keep_rows"], step=1, label="Token rows to keep (of 8)",
                                               elem_id="dal_keep_rows"))
        with tab.results_column("Downloads (PNGs at true size and enlarged, mp4)"):
            tab.image_output("preview", "Token grids filling (grey: not written yet)", "preview")
            tab.gallery("Candidates, best first")

    gen_event = tab.run_button(run_btn, "dalle", RUN_FIELDS,
                               lambda v: tab.request(v, prompt=v["prompt"] or "", rerank=bool(v["rerank"])),
                               show, finish)
    tab.wire(stop_btn, load=[(f, f) for f in ("preset", "prompt", "candidates", "temperature", "top_k", "top_p",
                                               "guidance", "seed", "rerank", "keep_rows", "subseed",
                                               "subseed_strength")],
             preset_fields=("candidates", "temperature", "top_k", "top_p", "guidance", "rerank", "keep_rows"),
             images_named="image to complete")
    return gen_event
