"""The VQGAN+CLIP tab: weighted prompts in, live previews, a PNG with its settings and an mp4 out."""
from __future__ import annotations

import gradio as gr

from pipelines import media
from pipelines import prompts as P
from pipelines import vqgan_clip as engine
from pipelines.events import Final
from pipelines.presets import list_presets, load_preset
from pipelines.registry import PRECISIONS
from pipelines.vqgan_clip_ops import AUGMENT_CODES, CUT_METHODS
from pipelines.zerogpu import gpu
from ui.common import (USER_ERRORS, follow_new_run, loading_note, output_dir, progress_text, resumable,
                       stop_handler, Throttle, user_error)
from ui.runs import RunStore

TAB = "vqgan_clip"
EXAMPLE = "a red circle:1 | on a blue background:0.5"
EXAMPLES = [[EXAMPLE],
            ["a large yellow star on a black background"],
            ["a small green square to the left of a large purple cross on a white background"],
            ["a blue circle:1 | a red square:-0.5 | on a white background:0.5"],
            ["a red circle on a blue background ^ a white square on a black background"]]

# widgets whose values are restored by "load settings", in this order
SETTING_FIELDS = ("preset", "prompt", "seed", "width", "height", "iterations", "preview_every", "init_weight",
                  "lr", "optimiser", "cutn", "cut_pow", "cut_method", "augments", "change_prompt_every", "precision")


def _path(f) -> str:
    """The server-side path of an uploaded file (a str, or an object with .name)."""
    return f if isinstance(f, str) else getattr(f, "name", str(f))


def _request(preset, prompt, seed, width, height, iterations, preview_every, targets, target_weights, init_image,
             init_weight, noise_seeds, noise_weights, lr, optimiser, cutn, cut_pow, cut_method, augments,
             change_every, precision) -> engine.VQGANCLIPRequest:
    """Widgets -> request; every bad value raises ValueError with a user-facing message."""
    files = [_path(t) for t in (targets or [])]
    ws = (target_weights or "").replace(",", " ").split()
    if ws and len(ws) != len(files):
        raise ValueError(f"Give one weight per target image ({len(files)} images, {len(ws)} weights).")
    image_prompts = []
    for k, path in enumerate(files):
        try:
            w = float(ws[k]) if ws else 1.0  # the engine rejects NaN and infinities
        except ValueError:
            raise ValueError(f"The weight {ws[k]!r} of target image {k + 1} is not a number.") from None
        name = f"target image {k + 1}"
        image_prompts.append(engine.ImagePrompt(media.load_image(path, name=name), w, float("-inf"), name))
    return engine.VQGANCLIPRequest(
        prompt=prompt or "", preset=preset, image_prompts=tuple(image_prompts),
        noise_prompts=tuple(P.parse_noise_prompts(noise_seeds or "", noise_weights or "")),
        init_image=media.load_image(_path(init_image), name="init image") if init_image else None,
        init_weight=init_weight, seed=seed, width=width, height=height, iterations=iterations, lr=lr,
        optimiser=optimiser, cutn=cutn, cut_pow=cut_pow, cut_method=cut_method, augments=tuple(augments or ()),
        preview_every=preview_every, change_prompt_every=change_every, precision=precision)


def _gpu_seconds(req, registry, stop) -> int:
    """ZeroGPU time to ask for: generous per iteration, capped at the platform's longest."""
    return int(min(300, 20 + 0.5 * req.iterations))


@gpu(duration=_gpu_seconds)
def _events(req, registry, stop):
    """The engine's events; on a ZeroGPU Space this runs in the GPU worker (a no-op wrapper elsewhere)."""
    yield from engine.run(req, registry, stop)


def build(registry, runs: RunStore) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    presets = [p for p in list_presets() if {"vqgan", "clip"} <= set(p.components)]  # not diffusion-only ones
    first = presets[0]
    d = {**{f: getattr(engine.VQGANCLIPRequest(), f) for f in SETTING_FIELDS if f != "preset"},
         **first.defaults.get(engine.ENGINE, {})}

    with gr.Row():
        with gr.Column(scale=5):
            preset = gr.Dropdown([(p.label, p.name) for p in presets], value=first.name, label="Preset",
                                 elem_id="vqc_preset")
            prompt = gr.Textbox(label="Prompt", value=EXAMPLE, lines=2, elem_id="vqc_prompt",
                                info="text:weight:stop, '|' between prompts, negative weights push away, "
                                     "'^' starts the next story phase")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Examples (shapes preset)", cache_examples=False)
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="vqc_seed")
                width = gr.Number(label="Width", value=d["width"], precision=0, elem_id="vqc_width")
                height = gr.Number(label="Height", value=d["height"], precision=0, elem_id="vqc_height")
            with gr.Row():
                iterations = gr.Number(label="Iterations", value=d["iterations"], precision=0, elem_id="vqc_iters")
                preview_every = gr.Number(label="Preview every N iterations", value=d["preview_every"], precision=0,
                                          elem_id="vqc_preview_every")
                fps = gr.Slider(1, 60, value=10, step=1, label="Video fps", elem_id="vqc_fps")
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary", elem_id="vqc_run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="vqc_stop")
            with gr.Accordion("Image prompts and init image", open=False):
                targets = gr.File(label="Target images", file_count="multiple", file_types=["image"],
                                  elem_id="vqc_targets")
                target_weights = gr.Textbox(label="Target image weights", placeholder="1, 0.5 (one per image)")
                with gr.Row():
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    init_image = gr.File(label="Init image", file_types=["image"], elem_id="vqc_init")
                    init_weight = gr.Number(label="Init weight", value=d["init_weight"], elem_id="vqc_init_weight")
                with gr.Row():
                    noise_seeds = gr.Textbox(label="Noise prompt seeds", placeholder="1, 2")
                    noise_weights = gr.Textbox(label="Noise prompt weights", placeholder="0.5, 0.5")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    lr = gr.Number(label="Learning rate", value=d["lr"], elem_id="vqc_lr")
                    optimiser = gr.Dropdown(list(engine.OPTIMISERS), value=d["optimiser"], label="Optimiser")
                    change_every = gr.Number(label="Change story phase every N iterations (0 = off)",
                                             value=d["change_prompt_every"], precision=0)
                with gr.Row():
                    cutn = gr.Number(label="Cutouts", value=d["cutn"], precision=0)
                    cut_pow = gr.Number(label="Cut power", value=d["cut_pow"])
                    cut_method = gr.Dropdown(list(CUT_METHODS), value=d["cut_method"], label="Cutout method")
                augments = gr.CheckboxGroup(list(AUGMENT_CODES), value=list(d["augments"]), label="Augmentations")
                precision = gr.Dropdown(list(PRECISIONS), value=d["precision"], label="Precision",
                                        elem_id="vqc_precision",
                                        info="auto: bfloat16 for the decoder and CLIP passes where this CPU does "
                                             "bfloat16 in hardware and a pass holds 64x64 pixels or more (CLIP's on "
                                             "4 or more 32 px cutouts); float32 to "
                                             "reproduce a picture exactly on any machine")
            with gr.Accordion("Load settings from an image", open=False):
                load_file = gr.File(label="An Atelier PNG", file_types=[".png"], elem_id="vqc_load")
                load_note = gr.Markdown()
        with gr.Column(scale=4):
            status = gr.Markdown("Ready.", elem_id="vqc_status")
            preview = gr.Image(label="Preview", type="pil", format="png", interactive=False,
                               elem_id="vqc_preview", elem_classes="pixelated")
            final = gr.Image(label="Result", type="pil", format="png", interactive=False,
                             elem_id="vqc_final", elem_classes="pixelated")
            video = gr.Video(label="Progress video", elem_id="vqc_video", interactive=False)
            files = gr.File(label="Downloads (PNG at true size, enlarged PNG, mp4)", file_count="multiple",
                            interactive=False, elem_id="vqc_files")
            settings = gr.JSON(label="Settings of the last image", elem_id="vqc_settings")

    inputs = [preset, prompt, seed, width, height, iterations, preview_every, targets, target_weights, init_image,
              init_weight, noise_seeds, noise_weights, lr, optimiser, cutn, cut_pow, cut_method, augments,
              change_every, precision]

    outputs = [preview, status, final, video, files, settings]

    def updates(args, fps_value, should_stop):
        """Engine events -> widget updates (runs in the store's worker thread, see ui/runs.py)."""
        writer = None
        try:
            req = _request(*args)
            note = loading_note(registry, load_preset(req.preset), ("vqgan", "clip"))
            if note:
                yield (gr.skip(), note, gr.skip(), gr.skip(), gr.skip(), gr.skip())
            events = _events(req, registry, should_stop)
            ev = next(events)  # validation and model loading happen here: errors surface before any output
            out = output_dir()
            writer = media.VideoWriter(media.new_output_path(out, req.prompt or "vqgan-clip", ".mp4"), fps=int(fps_value))
            throttle = Throttle(0.15)
            last_preview = None
            while True:
                if isinstance(ev, Final):
                    break
                if ev.notice:
                    gr.Info(ev.notice)
                img = ev.previews.get("current")
                if img is not None:
                    writer.append(img)
                    last_preview = media.enlarge(img)
                if img is not None or throttle():
                    yield (last_preview if img is not None else gr.skip(),
                           progress_text(ev.step, ev.total, ev.elapsed_s, dict(ev.metrics)),
                           gr.skip(), gr.skip(), gr.skip(), gr.skip())
                ev = next(events)
            # the run ended (finished or stopped): save what was made
            image = ev.images[0]
            writer.append(image)
            png_paths = media.save_png(image, media.new_output_path(out, req.prompt or "vqgan-clip", ".png"),
                                       ev.meta, enlarged_min_side=256)
            mp4 = writer.close()
            writer = None
            word = "Stopped" if ev.stopped else "Done"
            msg = f"**{word}** after {ev.meta['iterations_done']} iterations in {ev.meta['seconds']} s."
            yield (media.enlarge(image), msg, media.enlarge(image), mp4,
                   [str(p) for p in png_paths] + ([str(mp4)] if mp4 else []), ev.meta)
        except USER_ERRORS as e:
            raise user_error(e) from None
        finally:
            if writer is not None:  # error or server shutdown: drop the unfinished video
                writer.abort()

    def generate(preset, prompt, seed, width, height, iterations, preview_every, targets, target_weights, init_image,
                 init_weight, noise_seeds, noise_weights, lr, optimiser, cutn, cut_pow, cut_method, augments,
                 change_every, precision, fps_value, client_id, request: gr.Request):
        args = (preset, prompt, seed, width, height, iterations, preview_every, targets, target_weights, init_image,
                init_weight, noise_seeds, noise_weights, lr, optimiser, cutn, cut_pow, cut_method, augments,
                change_every, precision)
        yield from follow_new_run(runs, TAB, outputs, status, lambda should_stop: updates(args, fps_value, should_stop),
                                  client_id, request)

    def load_settings(file):
        """Read the settings embedded in a PNG back into the widgets."""
        if not file:
            return [gr.skip()] * (len(SETTING_FIELDS) + 1)
        try:
            meta = media.read_meta(_path(file))
            req = engine.request_from_settings(meta["settings"])
            load_preset(req.preset)
        except (ValueError, KeyError, TypeError) as e:
            raise user_error(ValueError(f"Could not load settings: {e}")) from None
        values = [getattr(req, f) for f in SETTING_FIELDS]
        values[SETTING_FIELDS.index("augments")] = list(req.augments)
        s = meta["settings"]
        skipped = [n for n, v in (("target images", s.get("image_prompts")), ("init image", s.get("init_image"))) if v]
        note = "Settings loaded." + (f" Upload the {' and '.join(skipped)} again: images are not stored in the PNG."
                                     if skipped else "")
        return values + [note]

    def apply_preset(name):
        try:
            dflt = load_preset(name).defaults.get(engine.ENGINE, {})
        except ValueError as e:
            raise user_error(e) from None
        keys = ("width", "height", "iterations", "preview_every", "lr", "cutn", "cut_method", "augments")
        return [dflt[k] if k in dflt else gr.skip() for k in keys]

    gen_event = run_btn.click(generate, inputs + [fps, runs.client], outputs,
                              api_name="vqgan_clip", concurrency_limit=1, concurrency_id="engines")
    stop_btn.click(stop_handler(runs, TAB), [runs.client], None, api_name="vqgan_clip_stop", queue=False)
    resumable(runs, TAB, outputs, runs.client)
    load_file.upload(load_settings, [load_file],
                     [preset, prompt, seed, width, height, iterations, preview_every, init_weight, lr, optimiser,
                      cutn, cut_pow, cut_method, augments, change_every, precision, load_note],
                     api_name="vqgan_clip_load")
    preset.change(apply_preset, [preset], [width, height, iterations, preview_every, lr, cutn, cut_method, augments],
                  api_name=False)
    return gen_event
