"""The diffusion tab: watch x_t and the predicted x_0 sharpen step by step; pictures, strip and mp4 out."""
from __future__ import annotations

import gradio as gr

from pipelines import media
from pipelines.diffusion import MAX_BATCH, MAX_SIDE, MAX_STEPS, PRECISIONS
from pipelines.diffusion_sampling import ETA_SAMPLERS, SAMPLERS
from pipelines.engines import ENGINES
from ui.tab import Tab

EXAMPLE = "a small green square to the left of a large purple cross"
EXAMPLES = [[EXAMPLE], ["a red circle"], ["a large blue star at the top on a white background"],
            ["a yellow diamond above a black circle on a blue background"], ["a purple star"]]
UNCONDITIONAL_NOTE = "This preset's model is unconditional: it ignores the prompts and the guidance scale."
RUN_FIELDS = ["preset", "prompt", "negative_prompt", "sampler", "steps", "guidance", "eta", "seed", "batch",
              "init_image", "strength", "preview_every", "width", "height", "precision"]
OUTPUTS = ("x_t", "x0", "status", "final", "strip", "video", "files", "settings")


def _conditional(preset) -> bool:
    """Text-to-image presets bring a CLIP or are Stable Diffusion; unconditional hub models come alone."""
    return "clip" in preset.components or getattr(preset.components.get("diffusion"), "kind", "") == "stable_diffusion"


def show(req, ev, first) -> dict | None:
    """x_t and x0_pred, enlarged, whenever the step carries them."""
    if "x_t" in ev.previews:
        return {"x_t": media.enlarge(ev.previews["x_t"]), "x0": media.enlarge(ev.previews["x0_pred"])}
    return None


def finish(req, ev, rec) -> dict:
    return {"status": f" after {ev.meta['steps_done']} of {ev.meta['steps_total']} steps."}


def build(registry, runs) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    with Tab(ENGINES["diffusion"], registry, runs, prefix="dif", outputs=OUTPUTS) as tab:
        d, inp = tab.defaults, tab.input
        with tab.settings_column():
            note = gr.Markdown("" if tab.first is None or _conditional(tab.first) else UNCONDITIONAL_NOTE,
                               elem_id="dif_note")
            prompt = tab.prompt_box(EXAMPLE)
            negative = inp("negative_prompt", gr.Textbox(
                label="Negative prompt", value="", elem_id="dif_negative",
                info="what guidance pushes away from (empty: the unconditional model)"))
            tab.examples(EXAMPLES)
            with gr.Row():
                sampler = inp("sampler", gr.Dropdown(list(SAMPLERS), value=d["sampler"], label="Sampler",
                                                     elem_id="dif_sampler"))
                inp("steps", gr.Number(label=f"Steps (1-{MAX_STEPS})", value=d["steps"], precision=0,
                                       elem_id="dif_steps"))
                guidance = inp("guidance", gr.Number(label="Guidance scale", value=d["guidance"],
                                                     elem_id="dif_guidance"))
            with gr.Row():
                eta = inp("eta", gr.Number(label="Eta (DDIM: 0 deterministic, 1 noisy)", value=d["eta"],
                                           elem_id="dif_eta", interactive=d["sampler"] in ETA_SAMPLERS))
                tab.seed_box()
                inp("batch", gr.Number(label=f"Batch size (1-{MAX_BATCH})", value=d["batch"], precision=0,
                                       elem_id="dif_batch"))
                tab.batch_count_box()
            tab.vary_seed_box()
            with gr.Row():
                inp("preview_every", gr.Number(label="Preview every N steps (0 = none, -1 = auto)",
                                               value=d["preview_every"], precision=0, elem_id="dif_preview_every"))
                tab.fps_slider()
            with gr.Accordion("Size and precision", open=False):
                with gr.Row():
                    inp("width", gr.Number(label=f"Width (0 = the model's size; SD: 64-{MAX_SIDE}, multiples of 8)",
                                           value=d["width"], precision=0, elem_id="dif_width"))
                    inp("height", gr.Number(label="Height (0 = the model's size)", value=d["height"], precision=0,
                                            elem_id="dif_height"))
                    inp("precision", gr.Dropdown(list(PRECISIONS), value=d["precision"], elem_id="dif_precision",
                                                 label="Precision (auto: float16 on a GPU for Stable Diffusion)"))
            run_btn, stop_btn = tab.buttons()
            with gr.Accordion("Image to image", open=False):
                with gr.Row():
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    inp("init_image", gr.File(label="Init image", file_types=["image"], elem_id="dif_init"))
                    inp("strength", gr.Slider(0, 1, value=d["strength"], step=0.01, elem_id="dif_strength",
                                              label="Strength (0 keeps the image, 1 is pure noise)"))
        with tab.results_column("Downloads (PNGs at true size and enlarged, strip, mp4)", "Progress video (x_t | x_0)"):
            tab.denoise_previews()
            tab.gallery()
            tab.image_output("strip", "Trajectory (x_t above, x_0 below)", "strip")

    def conditional_widgets(p):
        """Unconditional presets ignore prompts and guidance: those widgets are greyed out, with a note."""
        cond = _conditional(p)
        dflt = p.defaults.get("diffusion", {})
        guide = gr.update(value=dflt["guidance"], interactive=cond) if "guidance" in dflt \
            else gr.update(interactive=cond)
        return [guide, gr.update(interactive=cond), gr.update(interactive=cond), "" if cond else UNCONDITIONAL_NOTE]

    gen_event = tab.run_button(run_btn, "diffusion", RUN_FIELDS, tab.request, show, finish)
    tab.wire(stop_btn, load=[(f, f) for f in ("preset", "prompt", "negative_prompt", "sampler", "steps", "guidance",
                                               "eta", "seed", "batch", "strength", "preview_every", "width",
                                               "height", "precision", "subseed", "subseed_strength")],
             preset_fields=("sampler", "steps", "preview_every", "width", "height"), preset_extra=conditional_widgets,
             preset_extra_outputs=(guidance, prompt, negative, note), images_named="init image")
    sampler.change(lambda s: gr.update(interactive=s in ETA_SAMPLERS), [sampler], [eta], api_name=False)
    return gen_event
