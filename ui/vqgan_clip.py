"""The VQGAN+CLIP tab: weighted prompts in, live previews, a PNG with its settings and an mp4 out."""
from __future__ import annotations

import gradio as gr

from pipelines import media
from pipelines import prompts as P
from pipelines.engines import ENGINES
from pipelines.registry import PRECISIONS
from pipelines.vqgan_clip import OPTIMISERS, ImagePrompt
from pipelines.vqgan_clip_cutouts import AUGMENT_CODES, CUT_METHODS
from ui.tab import Tab, file_path

EXAMPLE = "a red circle:1 | on a blue background:0.5"
EXAMPLES = [[EXAMPLE],
            ["a large yellow star on a black background"],
            ["a small green square to the left of a large purple cross on a white background"],
            ["a blue circle:1 | a red square:-0.5 | on a white background:0.5"],
            ["a red circle on a blue background ^ a white square on a black background"]]
RUN_FIELDS = ["preset", "prompt", "seed", "width", "height", "iterations", "preview_every", "targets",
              "target_weights", "init_image", "init_weight", "noise_seeds", "noise_weights", "lr", "optimiser", "cutn",
              "cut_pow", "cut_method", "augments", "change_prompt_every", "precision", "starts", "starts_for",
              "cut_noise", "clip_2_weight"]   # new fields go last: the endpoint's positional order stays
OUTPUTS = ("preview", "status", "final", "video", "files", "settings")


def image_prompts(targets, target_weights) -> tuple[ImagePrompt, ...]:
    """The uploaded target images with one weight each (all 1 when none are given)."""
    files = [file_path(t) for t in (targets or [])]
    ws = (target_weights or "").replace(",", " ").split()
    if ws and len(ws) != len(files):
        raise ValueError(f"Give one weight per target image ({len(files)} images, {len(ws)} weights).")
    out = []
    for k, path in enumerate(files):
        try:
            w = float(ws[k]) if ws else 1.0  # the engine rejects NaN and infinities
        except ValueError:
            raise ValueError(f"The weight {ws[k]!r} of target image {k + 1} is not a number.") from None
        name = f"target image {k + 1}"
        out.append(ImagePrompt(media.load_image(path, name=name), w, float("-inf"), name))
    return tuple(out)


def show(req, ev, first) -> dict | None:
    img = ev.previews.get("current")
    return {"preview": media.enlarge(img)} if img is not None else None


def finish(req, ev, rec) -> dict:
    big = media.enlarge(ev.images[0])
    return {"preview": big, "final": big,
            "status": f" after {ev.meta['iterations_done']} iterations."}


def build(registry, runs) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    with Tab(ENGINES["vqgan_clip"], registry, runs, prefix="vqc", outputs=OUTPUTS, unit="Iteration") as tab:
        d, inp = tab.defaults, tab.input
        with tab.settings_column():
            tab.prompt_box(EXAMPLE, info="text:weight:stop, '|' between prompts, negative weights push away, "
                                         "'^' starts the next story phase")
            tab.examples(EXAMPLES)
            with gr.Row():
                tab.seed_box()
                inp("width", gr.Number(label="Width", value=d["width"], precision=0, elem_id="vqc_width"))
                inp("height", gr.Number(label="Height", value=d["height"], precision=0, elem_id="vqc_height"))
                tab.batch_count_box()
            tab.vary_seed_box()
            with gr.Row():
                inp("iterations", gr.Number(label="Iterations", value=d["iterations"], precision=0,
                                            elem_id="vqc_iters"))
                inp("preview_every", gr.Number(label="Preview every N iterations (0 = none, -1 = auto)",
                                               value=d["preview_every"], precision=0, elem_id="vqc_preview_every"))
                tab.fps_slider()
            run_btn, stop_btn = tab.buttons()
            with gr.Accordion("Image prompts and init image", open=False):
                inp("targets", gr.File(label="Target images", file_count="multiple", file_types=["image"],
                                       elem_id="vqc_targets"))
                inp("target_weights", gr.Textbox(label="Target image weights", placeholder="1, 0.5 (one per image)"))
                with gr.Row():
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    inp("init_image", gr.File(label="Init image", file_types=["image"], elem_id="vqc_init"))
                    inp("init_weight", gr.Number(label="Init weight", value=d["init_weight"],
                                                 elem_id="vqc_init_weight"))
                with gr.Row():
                    inp("noise_seeds", gr.Textbox(label="Noise prompt seeds", placeholder="1, 2"))
                    inp("noise_weights", gr.Textbox(label="Noise prompt weights", placeholder="0.5, 0.5"))
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    inp("lr", gr.Number(label="Learning rate", value=d["lr"], elem_id="vqc_lr"))
                    inp("optimiser", gr.Dropdown(list(OPTIMISERS), value=d["optimiser"], label="Optimiser"))
                    inp("change_prompt_every", gr.Number(label="Change story phase every N iterations (0 = off)",
                                                         value=d["change_prompt_every"], precision=0))
                with gr.Row():
                    inp("cutn", gr.Number(label="Cutouts", value=d["cutn"], precision=0))
                    inp("cut_pow", gr.Number(label="Cut power", value=d["cut_pow"]))
                    inp("cut_method", gr.Dropdown(list(CUT_METHODS), value=d["cut_method"], label="Cutout method"))
                    inp("cut_noise", gr.Number(label="Cutout noise", value=d["cut_noise"], elem_id="vqc_cut_noise",
                                               info="each cutout gets Gaussian noise of a random strength up to this"))
                with gr.Row():
                    inp("starts", gr.Number(label="Random starts", value=d["starts"], precision=0, elem_id="vqc_starts",
                                            info="optimised side by side at first; then the one CLIP likes best goes "
                                                 "on alone (1 = off)"))
                    inp("starts_for", gr.Number(label="Keep the best start after N iterations", value=d["starts_for"],
                                                precision=0, elem_id="vqc_starts_for"))
                    inp("clip_2_weight", gr.Number(label="Second CLIP's weight", value=d["clip_2_weight"],
                                                   elem_id="vqc_clip_2_weight",
                                                   info="presets with two CLIPs: the second's say against the "
                                                        "first's 1 (0 = the first alone)"))
                inp("augments", gr.CheckboxGroup(list(AUGMENT_CODES), value=list(d["augments"]),
                                                 label="Augmentations"))
                inp("precision", gr.Dropdown(list(PRECISIONS), value=d["precision"], label="Precision",
                                             elem_id="vqc_precision",
                                             info="auto: bfloat16 for the decoder and CLIP passes where this CPU does "
                                                  "bfloat16 in hardware and a pass holds 64x64 pixels or more (CLIP's "
                                                  "on 4 or more 32 px cutouts); float32 to reproduce a picture "
                                                  "exactly on any machine"))
        with tab.results_column("Downloads (PNG at true size, enlarged PNG, mp4)"):
            tab.image_output("preview", "Preview", "preview")
            tab.image_output("final", "Result", "final")

    def request(v: dict):
        """Widgets -> request; every bad value raises ValueError with a user-facing message."""
        return tab.request(v, image_prompts=image_prompts(v["targets"], v["target_weights"]),
                           noise_prompts=tuple(P.parse_noise_prompts(v["noise_seeds"] or "", v["noise_weights"] or "")),
                           prompt=v["prompt"] or "", augments=tuple(v["augments"] or ()))

    gen_event = tab.run_button(run_btn, "vqgan_clip", RUN_FIELDS, request, show, finish)
    tab.wire(stop_btn, load=[(f, f) for f in ("preset", "prompt", "seed", "width", "height", "iterations",
                                               "preview_every", "init_weight", "lr", "optimiser", "cutn", "cut_pow",
                                               "cut_method", "cut_noise", "augments", "change_prompt_every",
                                               "precision", "subseed", "subseed_strength", "starts", "starts_for",
                                               "clip_2_weight")],
             preset_fields=("width", "height", "iterations", "preview_every", "lr", "cutn", "cut_method", "cut_noise",
                            "augments", "starts", "starts_for", "clip_2_weight"),
             images_named="target images and init image")
    return gen_event
