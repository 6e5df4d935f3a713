"""The diffusion tab: watch x_t and the predicted x_0 sharpen step by step; pictures, strip and mp4 out."""
from __future__ import annotations

import gradio as gr

from pipelines import diffusion as engine
from pipelines import media
from pipelines.events import Final
from pipelines.presets import list_presets, load_preset
from pipelines.zerogpu import gpu
from ui.common import (USER_ERRORS, follow_new_run, loading_note, output_dir, resumable, stop_handler, Throttle,
                       user_error)
from ui.runs import RunStore

TAB = "diffusion"
EXAMPLE = "a small green square to the left of a large purple cross"
EXAMPLES = [[EXAMPLE], ["a red circle"], ["a large blue star at the top on a white background"],
            ["a yellow diamond above a black circle on a blue background"], ["a purple star"]]
UNCONDITIONAL_NOTE = "This preset's model is unconditional: it ignores the prompts and the guidance scale."

# widgets whose values are restored by "load settings", in this order
SETTING_FIELDS = ("preset", "prompt", "negative_prompt", "sampler", "steps", "guidance", "eta", "seed", "batch",
                  "strength", "preview_every")


def _path(f) -> str:
    return f if isinstance(f, str) else getattr(f, "name", str(f))


def _presets():
    return [p for p in list_presets() if "diffusion" in p.components]


def _conditional(preset) -> bool:
    """Text-to-image presets bring a CLIP; unconditional hub models come alone."""
    return "clip" in preset.components


def _request(preset, prompt, negative, sampler, steps, guidance, eta, seed, batch, init_image, strength,
             preview_every) -> engine.DiffusionRequest:
    """Widgets -> request; bad values raise ValueError with a user-facing message (in the engine)."""
    return engine.DiffusionRequest(
        prompt=prompt or "", negative_prompt=negative or "", preset=preset, sampler=sampler, steps=steps,
        guidance=guidance, eta=eta, seed=seed, batch=batch,
        init_image=media.load_image(_path(init_image), name="init image") if init_image else None,
        strength=strength, preview_every=preview_every)


def _gpu_seconds(req, registry, stop) -> int:
    return int(min(300, 20 + 0.2 * req.steps * req.batch))


@gpu(duration=_gpu_seconds)
def _events(req, registry, stop):
    """The engine's events; on a ZeroGPU Space this runs in the GPU worker (a no-op wrapper elsewhere)."""
    yield from engine.run(req, registry, stop)


def _status(ev) -> str:
    rate = ev.step / ev.elapsed_s if ev.elapsed_s > 0 else 0.0
    t = f" · t = {int(ev.t)}" if ev.t is not None else ""
    return f"**Step {ev.step}/{ev.total}**{t} · {rate:.1f} steps/s · {ev.elapsed_s:.1f} s"


def build(registry, runs: RunStore) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    presets = _presets()
    first = presets[0] if presets else None
    d = {**{f: getattr(engine.DiffusionRequest(), f) for f in SETTING_FIELDS if f != "preset"},
         **(first.defaults.get(engine.ENGINE, {}) if first else {})}

    with gr.Row():
        with gr.Column(scale=5):
            preset = gr.Dropdown([(p.label, p.name) for p in presets], value=first.name if first else None,
                                 label="Preset", elem_id="dif_preset")
            note = gr.Markdown("" if first is None or _conditional(first) else UNCONDITIONAL_NOTE, elem_id="dif_note")
            prompt = gr.Textbox(label="Prompt", value=EXAMPLE, lines=2, elem_id="dif_prompt")
            negative = gr.Textbox(label="Negative prompt", value="", elem_id="dif_negative",
                                  info="what guidance pushes away from (empty: the unconditional model)")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Examples (shapes preset)", cache_examples=False)
            with gr.Row():
                sampler = gr.Dropdown(list(engine.SAMPLERS), value=d["sampler"], label="Sampler", elem_id="dif_sampler")
                steps = gr.Number(label=f"Steps (1-{engine.MAX_STEPS})", value=d["steps"], precision=0,
                                  elem_id="dif_steps")
                guidance = gr.Number(label="Guidance scale", value=d["guidance"], elem_id="dif_guidance")
            with gr.Row():
                eta = gr.Number(label="Eta (DDIM: 0 deterministic, 1 noisy)", value=d["eta"], elem_id="dif_eta",
                                interactive=d["sampler"] in engine.ETA_SAMPLERS)
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="dif_seed")
                batch = gr.Number(label=f"Batch size (1-{engine.MAX_BATCH})", value=d["batch"], precision=0,
                                  elem_id="dif_batch")
            with gr.Row():
                preview_every = gr.Number(label="Preview every N steps (0 = none)", value=d["preview_every"],
                                          precision=0, elem_id="dif_preview_every")
                fps = gr.Slider(1, 60, value=10, step=1, label="Video fps", elem_id="dif_fps")
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary", elem_id="dif_run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="dif_stop")
            with gr.Accordion("Image to image", open=False):
                with gr.Row():
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    init_image = gr.File(label="Init image", file_types=["image"], elem_id="dif_init")
                    strength = gr.Slider(0, 1, value=d["strength"], step=0.01, elem_id="dif_strength",
                                         label="Strength (0 keeps the image, 1 is pure noise)")
            with gr.Accordion("Load settings from an image", open=False):
                load_file = gr.File(label="An Atelier PNG", file_types=[".png"], elem_id="dif_load")
                load_note = gr.Markdown()
        with gr.Column(scale=4):
            status = gr.Markdown("Ready.", elem_id="dif_status")
            with gr.Row():
                x_t = gr.Image(label="x_t (noisy sample)", type="pil", format="png", interactive=False,
                               elem_id="dif_xt", elem_classes="pixelated")
                x0 = gr.Image(label="x_0 predicted", type="pil", format="png", interactive=False,
                              elem_id="dif_x0", elem_classes="pixelated")
            final = gr.Gallery(label="Result", format="png", interactive=False, elem_id="dif_final",
                               elem_classes="crisp", columns=4, object_fit="contain")
            strip = gr.Image(label="Trajectory (x_t above, x_0 below)", type="pil", format="png",
                             interactive=False, elem_id="dif_strip", elem_classes="pixelated")
            video = gr.Video(label="Progress video (x_t | x_0)", elem_id="dif_video", interactive=False)
            files = gr.File(label="Downloads (PNGs at true size and enlarged, strip, mp4)", file_count="multiple",
                            interactive=False, elem_id="dif_files")
            settings = gr.JSON(label="Settings of the last images", elem_id="dif_settings")

    inputs = [preset, prompt, negative, sampler, steps, guidance, eta, seed, batch, init_image, strength, preview_every]

    outputs = [x_t, x0, status, final, strip, video, files, settings]

    def updates(args, fps_value, should_stop):
        """Engine events -> widget updates (runs in the store's worker thread, see ui/runs.py)."""
        writer = None
        try:
            req = _request(*args)
            note = loading_note(registry, load_preset(req.preset), ("diffusion", "vqgan", "clip"))
            if note:
                yield (gr.skip(), gr.skip(), note, *[gr.skip()] * 5)
            events = _events(req, registry, should_stop)
            ev = next(events)  # validation and model loading happen here: errors surface before any output
            out = output_dir()
            stem = req.prompt or "diffusion"
            writer = media.VideoWriter(media.new_output_path(out, stem, ".mp4"), fps=int(fps_value))
            throttle = Throttle(0.15)
            frames = []
            while not isinstance(ev, Final):
                if ev.notice:
                    gr.Info(ev.notice)
                if "x_t" in ev.previews:
                    frames.append((ev.previews["x_t"], ev.previews["x0_pred"]))
                    writer.append(engine.side_by_side(*frames[-1]))
                    yield (media.enlarge(frames[-1][0]), media.enlarge(frames[-1][1]), _status(ev),
                           *[gr.skip()] * 5)
                elif throttle():
                    yield (gr.skip(), gr.skip(), _status(ev), *[gr.skip()] * 5)
                ev = next(events)
            # the run ended (finished or stopped): save what was made
            paths, shown = [], []
            for k, image in enumerate(ev.images):
                written = media.save_png(image, media.new_output_path(out, stem, ".png"),
                                         {**ev.meta, "batch_index": k}, enlarged_min_side=256)
                paths += written
                shown.append(str(written[-1]))
            strip_img = engine.trajectory_strip(frames)
            if strip_img is not None:
                strip_img = media.enlarge(strip_img, 128)
                paths += media.save_png(strip_img, media.new_output_path(out, stem + "-strip", ".png"), ev.meta)
            mp4 = writer.close()
            writer = None
            word = "Stopped" if ev.stopped else "Done"
            msg = f"**{word}** after {ev.meta['steps_done']} of {ev.meta['steps_total']} steps in {ev.meta['seconds']} s."
            yield (media.enlarge(frames[-1][0]) if frames else gr.skip(),
                   media.enlarge(frames[-1][1]) if frames else gr.skip(), msg, shown, strip_img, mp4,
                   [str(p) for p in paths] + ([str(mp4)] if mp4 else []), ev.meta)
        except USER_ERRORS as e:
            raise user_error(e) from None
        finally:
            if writer is not None:  # error or server shutdown: drop the unfinished video
                writer.abort()

    def generate(preset, prompt, negative, sampler, steps, guidance, eta, seed, batch, init_image, strength,
                 preview_every, fps_value, client_id, request: gr.Request):
        args = (preset, prompt, negative, sampler, steps, guidance, eta, seed, batch, init_image, strength,
                preview_every)
        yield from follow_new_run(runs, TAB, outputs, status, lambda should_stop: updates(args, fps_value, should_stop),
                                  client_id, request)

    def load_settings(file):
        """Read the settings embedded in a PNG back into the widgets."""
        if not file:
            return [gr.skip()] * (len(SETTING_FIELDS) + 1)
        try:
            meta = media.read_meta(_path(file))
            if meta.get("engine") != engine.ENGINE:
                raise ValueError(f"it was made by the {meta.get('engine', 'unknown')} engine, not diffusion")
            req = engine.request_from_settings(meta["settings"])
            load_preset(req.preset)
        except (ValueError, KeyError, TypeError) as e:
            raise user_error(ValueError(f"Could not load settings: {e}")) from None
        values = [getattr(req, f) for f in SETTING_FIELDS]
        extra = " Upload the init image again: images are not stored in the PNG." if meta["settings"].get("init_image") else ""
        return values + ["Settings loaded." + extra]

    def apply_preset(name):
        try:
            p = load_preset(name)
        except ValueError as e:
            raise user_error(e) from None
        dflt = p.defaults.get(engine.ENGINE, {})
        cond = _conditional(p)
        keys = ("sampler", "steps", "preview_every")
        values = [dflt[k] if k in dflt else gr.skip() for k in keys]
        guide = gr.update(value=dflt["guidance"], interactive=cond) if "guidance" in dflt else gr.update(interactive=cond)
        return values + [guide, gr.update(interactive=cond), gr.update(interactive=cond),
                         "" if cond else UNCONDITIONAL_NOTE]

    gen_event = run_btn.click(generate, inputs + [fps, runs.client], outputs,
                              api_name="diffusion", concurrency_limit=1, concurrency_id="engines")
    stop_btn.click(stop_handler(runs, TAB), [runs.client], None, api_name="diffusion_stop", queue=False)
    resumable(runs, TAB, outputs, runs.client)
    load_file.upload(load_settings, [load_file], [*[{"preset": preset, "prompt": prompt, "negative_prompt": negative,
                                                     "sampler": sampler, "steps": steps, "guidance": guidance,
                                                     "eta": eta, "seed": seed, "batch": batch, "strength": strength,
                                                     "preview_every": preview_every}[f] for f in SETTING_FIELDS],
                                                   load_note], api_name="diffusion_load")
    preset.change(apply_preset, [preset], [sampler, steps, preview_every, guidance, prompt, negative, note],
                  api_name=False)
    sampler.change(lambda s: gr.update(interactive=s in engine.ETA_SAMPLERS), [sampler], [eta], api_name=False)
    return gen_event
