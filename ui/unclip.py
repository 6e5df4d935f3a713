"""The unCLIP tab: text -> the prior's pick -> the decoder's steps; variations of an upload; blends of two ends."""
from __future__ import annotations

import gradio as gr

from pipelines import media
from pipelines.engines import ENGINES
from pipelines.unclip import MAX_BATCH, MAX_CANDIDATES, MAX_FRAMES, MAX_STEPS, SAMPLERS
from ui.tab import Tab, upload

EXAMPLE = "a red circle above a blue square"
EXAMPLES = [[EXAMPLE], ["a large yellow star on a black background"], ["a green square on the left"],
            ["a purple star"], ["a white cross to the right of a red triangle"]]
# the settings every mode shares, after each mode's own in its handler's inputs
SHARED = ["prior_sampler", "prior_steps", "prior_guidance", "sampler", "steps", "guidance", "seed", "preview_every"]
OUTPUTS = ("status", "prior", "x_t", "x0", "final", "strip", "video", "files", "settings")
RUN_FIELDS = ["preset", "prompt", "candidates", "batch", *SHARED]                   # /unclip (text to image)
VARY_FIELDS = ["preset", "vary_image", "vary_n", "strength", *SHARED]               # /unclip_variations
BLEND_FIELDS = ["preset", "prompt_a", "image_a", "prompt_b", "image_b", "frames", *SHARED]   # /unclip_interpolate


def _prior_text(captions) -> str:
    lines = "\n".join(f"{k}. {c}" for k, c in enumerate(captions, 1))
    return f"**The prior's embedding is nearest to** (cosine in brackets):\n\n{lines}"


def _pick_text(meta: dict) -> str:
    parts = []
    for k, item in enumerate(meta.get("prior", []), 1):
        sims = ", ".join(f"{s:.3f}" for s in item["similarity"])
        parts.append(f"{k}. kept prior sample {item['candidate'] + 1} (similarity to the text: {sims}); "
                     f"nearest captions: *{'* · *'.join(item['nearest'])}*")
    return "**The prior's pick**\n\n" + "\n".join(parts) if parts else ""


def show(req, ev, first) -> dict | None:
    """The prior's nearest captions, the decoder's x_t and x0; the prior panel starts empty (a text run's pick
    says nothing of variations that follow it)."""
    shown = {"prior": ""} if first else {}
    if ev.captions:
        shown["prior"] = _prior_text(ev.captions)
    elif "x_t" in ev.previews:
        shown.update(x_t=media.enlarge(ev.previews["x_t"]), x0=media.enlarge(ev.previews["x0_pred"]))
    return shown or None


def finish(req, ev, rec) -> dict:
    where = " during the prior: nothing painted yet" if ev.meta.get("stopped_in") == "prior" else ""
    msg = f"{where} after {ev.meta['steps_done']} of {ev.meta['steps_total']} decoder steps."
    if "similarity_to_source" in ev.meta:
        msg += " CLIP similarity to the source: " + ", ".join(f"{s:.2f}" for s in ev.meta["similarity_to_source"])
    # the prior panel: this run's pick; a run stopped in the prior keeps its previews there
    pick = _pick_text(ev.meta) or (gr.skip() if ev.meta.get("stopped_in") == "prior" else "")
    return {"status": msg, "prior": pick}


def build(registry, runs) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    samplers = list(SAMPLERS)
    with Tab(ENGINES["unclip"], registry, runs, prefix="unc", outputs=OUTPUTS) as tab:
        d, inp = tab.defaults, tab.input
        with tab.settings_column():
            with gr.Tabs():
                with gr.Tab("Text to image", id="unc_text"):
                    tab.prompt_box(EXAMPLE)
                    tab.examples(EXAMPLES)
                    with gr.Row():
                        inp("candidates", gr.Number(label=f"Prior samples (1-{MAX_CANDIDATES}; the closest to "
                                                    "the text by CLIP is kept)", value=d["candidates"], precision=0,
                                                    elem_id="unc_candidates"))
                        inp("batch", gr.Number(label=f"Pictures (1-{MAX_BATCH})", value=d["batch"], precision=0,
                                               elem_id="unc_batch"))
                    run_btn = gr.Button("Generate", variant="primary", elem_id="unc_run")
                with gr.Tab("Variations", id="unc_vary_tab"):
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    inp("vary_image", gr.File(label="A picture to vary", file_types=["image"],
                                              elem_id="unc_vary_image"))
                    with gr.Row():
                        inp("vary_n", gr.Number(label=f"Variations (1-{MAX_BATCH})", value=4, precision=0,
                                                elem_id="unc_vary_n"))
                        inp("strength", gr.Slider(0, 1, value=d["strength"], step=0.05, elem_id="unc_strength",
                                                  label="Variation strength (1: painted from noise, only CLIP's "
                                                        "embedding kept; lower: from the picture itself, noised)"))
                    vary_btn = gr.Button("Make variations", variant="primary", elem_id="unc_vary")
                with gr.Tab("Interpolation", id="unc_blend_tab"):
                    gr.Markdown("Each end is a prompt, or a picture when one is uploaded.")
                    with gr.Row():
                        inp("prompt_a", gr.Textbox(label="From (prompt)", value="a red circle", elem_id="unc_prompt_a"))
                        inp("image_a", gr.File(label="or from a picture", file_types=["image"], elem_id="unc_image_a"))
                    with gr.Row():
                        inp("prompt_b", gr.Textbox(label="To (prompt)", value="a blue star", elem_id="unc_prompt_b"))
                        inp("image_b", gr.File(label="or to a picture", file_types=["image"], elem_id="unc_image_b"))
                    inp("frames", gr.Number(label=f"Frames (2-{MAX_FRAMES}, both ends included)",
                                            value=d["frames"], precision=0, elem_id="unc_frames"))
                    blend_btn = gr.Button("Blend", variant="primary", elem_id="unc_blend")
            with gr.Row():
                tab.batch_count_box()          # every mode's run, made again one after another
            stop_btn = gr.Button("Stop", variant="stop", elem_id="unc_stop")
            tab.estimate_box()
            with gr.Accordion("Prior and decoder settings", open=False):
                with gr.Row():
                    inp("prior_sampler", gr.Dropdown(samplers, value=d["prior_sampler"], label="Prior sampler",
                                                     elem_id="unc_prior_sampler"))
                    inp("prior_steps", gr.Number(label=f"Prior steps (1-{MAX_STEPS})", value=d["prior_steps"],
                                                 precision=0, elem_id="unc_prior_steps"))
                    inp("prior_guidance", gr.Number(label="Prior guidance", value=d["prior_guidance"],
                                                    elem_id="unc_prior_guidance"))
                with gr.Row():
                    inp("sampler", gr.Dropdown(samplers, value=d["sampler"], label="Decoder sampler",
                                               elem_id="unc_sampler"))
                    inp("steps", gr.Number(label=f"Decoder steps (1-{MAX_STEPS})", value=d["steps"], precision=0,
                                           elem_id="unc_steps"))
                    inp("guidance", gr.Number(label="Decoder guidance", value=d["guidance"], elem_id="unc_guidance"))
                with gr.Row():
                    tab.seed_box()
                    inp("preview_every", gr.Number(label="Preview every N steps (0 = none, -1 = auto)",
                                                   value=d["preview_every"], precision=0, elem_id="unc_preview_every"))
                    tab.fps_slider(30)
                tab.vary_seed_box()
        with tab.results_column("Downloads (PNGs at true size and enlarged, strip, mp4)",
                                "Video (x_t | x_0, or the interpolation)"):
            tab.output("prior", gr.Markdown("", elem_id="unc_prior"))
            tab.denoise_previews("Decoder ")
            tab.gallery()
            tab.image_output("strip", "Strip (decoder trajectory, or the interpolation)", "strip")

    def text(v):
        return tab.request(v, mode="text", prompt=v["prompt"] or "")

    def variations(v):
        return tab.request(v, mode="variations", image=upload(v["vary_image"], "picture to vary"), batch=v["vary_n"])

    def interpolation(v):
        return tab.request(v, mode="interpolate", prompt=v["prompt_a"] or "",
                           image=upload(v["image_a"], "first picture"),
                           prompt_b=v["prompt_b"] or "", image_b=upload(v["image_b"], "second picture"))

    gen_event = tab.run_button(run_btn, "unclip", RUN_FIELDS, text, show, finish)
    tab.run_button(vary_btn, "unclip_variations", VARY_FIELDS, variations, show, finish)
    tab.run_button(blend_btn, "unclip_interpolate", BLEND_FIELDS, interpolation, show, finish)
    tab.wire(stop_btn, load=[("preset", "preset"), ("prompt", "prompt"), ("prompt_a", "prompt"),
                             ("prompt_b", "prompt_b"), *[(f, f) for f in ("batch", "candidates", "frames", "strength",
                                                                          *SHARED, "subseed",
                                                                          "subseed_strength")]],
             preset_fields=("candidates", "strength", *SHARED), images_named="pictures")
    return gen_event
