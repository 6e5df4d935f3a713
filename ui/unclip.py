"""The unCLIP tab: text -> the prior's pick -> the decoder's steps; variations of an upload; blends of two ends."""
from __future__ import annotations

import gradio as gr

from pipelines import media
from pipelines import unclip as engine
from pipelines.events import Final
from pipelines.presets import list_presets, load_preset
from pipelines.zerogpu import gpu
from ui.common import (USER_ERRORS, follow_new_run, output_dir, resumable, stop_handler, Throttle, user_error)
from ui.runs import RunStore

TAB = "unclip"
EXAMPLE = "a red circle above a blue square"
EXAMPLES = [[EXAMPLE], ["a large yellow star on a black background"], ["a green square on the left"],
            ["a purple star"], ["a white cross to the right of a red triangle"]]

# the settings every mode shares, in the order of the handlers' parameters after the mode's own
SHARED = ("prior_sampler", "prior_steps", "prior_guidance", "sampler", "steps", "guidance", "seed", "preview_every")
# widgets restored by "load settings", in this order
SETTING_FIELDS = ("preset", "prompt", "prompt_b", "batch", "candidates", "frames", "strength", *SHARED)


def _path(f) -> str:
    return f if isinstance(f, str) else getattr(f, "name", str(f))


def _presets():
    return [p for p in list_presets() if "karlo" in p.components or "unclip_decoder" in p.components]


def _upload(f, name: str):
    """A gr.File upload -> RGB picture through media.load_image (its size limits and clear errors)."""
    return media.load_image(_path(f), name=name) if f else None


def _shared(values) -> dict:
    return dict(zip(SHARED, values))


def _gpu_seconds(req, registry, stop) -> int:
    n = req.frames if req.mode == "interpolate" else req.batch
    return int(min(300, 20 + 0.1 * req.steps * n + 0.05 * req.prior_steps * req.candidates))


@gpu(duration=_gpu_seconds)
def _events(req, registry, stop):
    """The engine's events; on a ZeroGPU Space this runs in the GPU worker (a no-op wrapper elsewhere)."""
    yield from engine.run(req, registry, stop)


def _status(ev) -> str:
    rate = ev.step / ev.elapsed_s if ev.elapsed_s > 0 else 0.0
    t = f" · t = {int(ev.t)}" if ev.t is not None else ""
    stage = f"{ev.stage.capitalize()} ({ev.stage_index + 1}/{ev.stage_count})"
    return f"**{stage}: step {ev.step}/{ev.total}**{t} · {rate:.1f} steps/s · {ev.elapsed_s:.1f} s"


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


def build(registry, runs: RunStore) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    presets = _presets()
    first = presets[0] if presets else None
    d = {**{f: getattr(engine.UnCLIPRequest(), f) for f in SETTING_FIELDS if f != "preset"},
         **(first.defaults.get(engine.ENGINE, {}) if first else {})}
    samplers = list(engine.SAMPLERS)

    with gr.Row():
        with gr.Column(scale=5):
            preset = gr.Dropdown([(p.label, p.name) for p in presets], value=first.name if first else None,
                                 label="Preset", elem_id="unc_preset")
            with gr.Tabs():
                with gr.Tab("Text to image", id="unc_text"):
                    prompt = gr.Textbox(label="Prompt", value=EXAMPLE, lines=2, elem_id="unc_prompt")
                    gr.Examples(EXAMPLES, inputs=[prompt], label="Examples (shapes preset)", cache_examples=False)
                    with gr.Row():
                        candidates = gr.Number(label=f"Prior samples (1-{engine.MAX_CANDIDATES}; the closest to "
                                               "the text by CLIP is kept)", value=d["candidates"], precision=0,
                                               elem_id="unc_candidates")
                        batch = gr.Number(label=f"Pictures (1-{engine.MAX_BATCH})", value=d["batch"], precision=0,
                                          elem_id="unc_batch")
                    run_btn = gr.Button("Generate", variant="primary", elem_id="unc_run")
                with gr.Tab("Variations", id="unc_vary_tab"):
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    vary_image = gr.File(label="A picture to vary", file_types=["image"], elem_id="unc_vary_image")
                    with gr.Row():
                        vary_n = gr.Number(label=f"Variations (1-{engine.MAX_BATCH})", value=4, precision=0,
                                           elem_id="unc_vary_n")
                        strength = gr.Slider(0, 1, value=d["strength"], step=0.05, elem_id="unc_strength",
                                             label="Variation strength (1: painted from noise, only CLIP's "
                                                   "embedding kept; lower: from the picture itself, noised)")
                    vary_btn = gr.Button("Make variations", variant="primary", elem_id="unc_vary")
                with gr.Tab("Interpolation", id="unc_blend_tab"):
                    gr.Markdown("Each end is a prompt, or a picture when one is uploaded.")
                    with gr.Row():
                        prompt_a = gr.Textbox(label="From (prompt)", value="a red circle", elem_id="unc_prompt_a")
                        image_a = gr.File(label="or from a picture", file_types=["image"], elem_id="unc_image_a")
                    with gr.Row():
                        prompt_b = gr.Textbox(label="To (prompt)", value="a blue star", elem_id="unc_prompt_b")
                        image_b = gr.File(label="or to a picture", file_types=["image"], elem_id="unc_image_b")
                    frames = gr.Number(label=f"Frames (2-{engine.MAX_FRAMES}, both ends included)",
                                       value=d["frames"], precision=0, elem_id="unc_frames")
                    blend_btn = gr.Button("Blend", variant="primary", elem_id="unc_blend")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="unc_stop")
            with gr.Accordion("Prior and decoder settings", open=False):
                with gr.Row():
                    prior_sampler = gr.Dropdown(samplers, value=d["prior_sampler"], label="Prior sampler",
                                                elem_id="unc_prior_sampler")
                    prior_steps = gr.Number(label=f"Prior steps (1-{engine.MAX_STEPS})", value=d["prior_steps"],
                                            precision=0, elem_id="unc_prior_steps")
                    prior_guidance = gr.Number(label="Prior guidance", value=d["prior_guidance"],
                                               elem_id="unc_prior_guidance")
                with gr.Row():
                    sampler = gr.Dropdown(samplers, value=d["sampler"], label="Decoder sampler", elem_id="unc_sampler")
                    steps = gr.Number(label=f"Decoder steps (1-{engine.MAX_STEPS})", value=d["steps"], precision=0,
                                      elem_id="unc_steps")
                    guidance = gr.Number(label="Decoder guidance", value=d["guidance"], elem_id="unc_guidance")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="unc_seed")
                    preview_every = gr.Number(label="Preview every N steps (0 = none)", value=d["preview_every"],
                                              precision=0, elem_id="unc_preview_every")
                    fps = gr.Slider(1, 30, value=8, step=1, label="Video fps", elem_id="unc_fps")
            with gr.Accordion("Load settings from an image", open=False):
                load_file = gr.File(label="An Atelier PNG", file_types=[".png"], elem_id="unc_load")
                load_note = gr.Markdown()
        with gr.Column(scale=4):
            status = gr.Markdown("Ready.", elem_id="unc_status")
            prior_md = gr.Markdown("", elem_id="unc_prior")
            with gr.Row():
                x_t = gr.Image(label="Decoder x_t (noisy sample)", type="pil", format="png", interactive=False,
                               elem_id="unc_xt", elem_classes="pixelated")
                x0 = gr.Image(label="Decoder x_0 predicted", type="pil", format="png", interactive=False,
                              elem_id="unc_x0", elem_classes="pixelated")
            final = gr.Gallery(label="Result", format="png", interactive=False, elem_id="unc_final",
                               elem_classes="crisp", columns=4, object_fit="contain")
            strip = gr.Image(label="Strip (decoder trajectory, or the interpolation)", type="pil", format="png",
                             interactive=False, elem_id="unc_strip", elem_classes="pixelated")
            video = gr.Video(label="Video (x_t | x_0, or the interpolation)", elem_id="unc_video", interactive=False)
            files = gr.File(label="Downloads (PNGs at true size and enlarged, strip, mp4)", file_count="multiple",
                            interactive=False, elem_id="unc_files")
            settings = gr.JSON(label="Settings of the last images", elem_id="unc_settings")

    shared_inputs = [prior_sampler, prior_steps, prior_guidance, sampler, steps, guidance, seed, preview_every]
    outputs = [status, prior_md, x_t, x0, final, strip, video, files, settings]

    def updates(make_request, fps_value, should_stop):
        """Engine events -> widget updates (runs in the store's worker thread, see ui/runs.py)."""
        writer = None
        try:
            req = make_request()
            events = _events(req, registry, should_stop)
            ev = next(events)  # validation and model loading happen here: errors surface before any output
            out = output_dir()
            stem = (req.prompt if req.mode == "text" else req.mode) or "unclip"
            writer = media.VideoWriter(media.new_output_path(out, stem, ".mp4"), fps=int(fps_value))
            throttle = Throttle(0.15)
            frames = []
            skip7 = [gr.skip()] * 7
            # the prior panel: cleared as the run starts (a text run's pick says nothing of variations that
            # follow it), then this run's prior previews; kept at the end only when this run showed them
            panel, prior_shown = "", False
            while not isinstance(ev, Final):
                if ev.captions:
                    prior_shown = True
                    yield _status(ev), _prior_text(ev.captions), *skip7
                elif "x_t" in ev.previews:
                    frames.append((ev.previews["x_t"], ev.previews["x0_pred"]))
                    if req.mode != "interpolate":
                        writer.append(engine.side_by_side(*frames[-1]))
                    yield (_status(ev), panel, media.enlarge(frames[-1][0]), media.enlarge(frames[-1][1]),
                           *[gr.skip()] * 5)
                elif throttle():
                    yield _status(ev), panel, *skip7
                else:
                    ev = next(events)
                    continue
                panel = gr.skip()
                ev = next(events)
            # the run ended (finished or stopped): save what was made
            paths, shown = [], []
            for k, image in enumerate(ev.images):
                written = media.save_png(image, media.new_output_path(out, stem, ".png"),
                                         {**ev.meta, "batch_index": k}, enlarged_min_side=256)
                paths += written
                shown.append(str(written[-1]))
            if req.mode == "interpolate":
                strip_img = engine.interpolation_strip(ev.images)
                for image in ev.images:
                    writer.append(image)
            else:
                strip_img = engine.trajectory_strip(frames)
            if strip_img is not None:
                strip_img = media.enlarge(strip_img, 128)
                paths += media.save_png(strip_img, media.new_output_path(out, stem + "-strip", ".png"), ev.meta)
            mp4 = writer.close()
            writer = None
            word = "Stopped" if ev.stopped else "Done"
            where = " during the prior: nothing painted yet" if ev.meta.get("stopped_in") == "prior" else ""
            msg = (f"**{word}**{where} after {ev.meta['steps_done']} of {ev.meta['steps_total']} decoder steps "
                   f"in {ev.meta['seconds']} s.")
            if "similarity_to_source" in ev.meta:
                msg += " CLIP similarity to the source: " + ", ".join(f"{s:.2f}" for s in ev.meta["similarity_to_source"])
            yield (msg, _pick_text(ev.meta) or (gr.skip() if prior_shown else ""),
                   media.enlarge(frames[-1][0]) if frames else gr.skip(),
                   media.enlarge(frames[-1][1]) if frames else gr.skip(), shown, strip_img, mp4,
                   [str(p) for p in paths] + ([str(mp4)] if mp4 else []), ev.meta)
        except USER_ERRORS as e:
            raise user_error(e) from None
        finally:
            if writer is not None:  # error or server shutdown: drop the unfinished video
                writer.abort()

    def launch(make_request, fps_value, client_id, request):
        yield from follow_new_run(runs, TAB, outputs, status, lambda should_stop: updates(make_request, fps_value, should_stop),
                                  client_id, request)

    def generate(preset, prompt, candidates, batch, prior_sampler, prior_steps, prior_guidance, sampler, steps,
                 guidance, seed, preview_every, fps_value, client_id, request: gr.Request):
        shared = _shared((prior_sampler, prior_steps, prior_guidance, sampler, steps, guidance, seed, preview_every))
        yield from launch(lambda: engine.UnCLIPRequest(mode="text", preset=preset, prompt=prompt or "",
                                                       candidates=candidates, batch=batch, **shared),
                          fps_value, client_id, request)

    def vary(preset, image, n, strength_value, prior_sampler, prior_steps, prior_guidance, sampler, steps, guidance,
             seed, preview_every, fps_value, client_id, request: gr.Request):
        shared = _shared((prior_sampler, prior_steps, prior_guidance, sampler, steps, guidance, seed, preview_every))
        yield from launch(lambda: engine.UnCLIPRequest(mode="variations", preset=preset,
                                                       image=_upload(image, "picture to vary"), batch=n,
                                                       strength=strength_value, **shared),
                          fps_value, client_id, request)

    def blend(preset, prompt_a, image_a, prompt_b, image_b, n_frames, prior_sampler, prior_steps, prior_guidance,
              sampler, steps, guidance, seed, preview_every, fps_value, client_id, request: gr.Request):
        shared = _shared((prior_sampler, prior_steps, prior_guidance, sampler, steps, guidance, seed, preview_every))
        yield from launch(lambda: engine.UnCLIPRequest(
            mode="interpolate", preset=preset, prompt=prompt_a or "", image=_upload(image_a, "first picture"),
            prompt_b=prompt_b or "", image_b=_upload(image_b, "second picture"), frames=n_frames, **shared),
            fps_value, client_id, request)

    def load_settings(file):
        """Read the settings embedded in a PNG back into the widgets."""
        if not file:
            return [gr.skip()] * (len(SETTING_FIELDS) + 2)
        try:
            meta = media.read_meta(_path(file))
            if meta.get("engine") != engine.ENGINE:
                raise ValueError(f"it was made by the {meta.get('engine', 'unknown')} engine, not unCLIP")
            req = engine.request_from_settings(meta["settings"])
            load_preset(req.preset)
        except (ValueError, KeyError, TypeError) as e:
            raise user_error(ValueError(f"Could not load settings: {e}")) from None
        values = [getattr(req, f) for f in SETTING_FIELDS]
        values.insert(2, req.prompt)  # the prompt is also the interpolation's first end
        extra = " Upload the pictures again: images are not stored in the PNG." \
            if meta["settings"].get("image") or meta["settings"].get("image_b") else ""
        return values + [f"Settings loaded ({req.mode})." + extra]

    def apply_preset(name):
        try:
            dflt = load_preset(name).defaults.get(engine.ENGINE, {})
        except ValueError as e:
            raise user_error(e) from None
        return [dflt[k] if k in dflt else gr.skip() for k in ("candidates", "strength", *SHARED)]

    extra = [fps, runs.client]
    gen_event = run_btn.click(generate, [preset, prompt, candidates, batch, *shared_inputs, *extra], outputs,
                              api_name="unclip", concurrency_limit=1, concurrency_id="engines")
    vary_btn.click(vary, [preset, vary_image, vary_n, strength, *shared_inputs, *extra], outputs,
                   api_name="unclip_variations", concurrency_limit=1, concurrency_id="engines")
    blend_btn.click(blend, [preset, prompt_a, image_a, prompt_b, image_b, frames, *shared_inputs, *extra], outputs,
                    api_name="unclip_interpolate", concurrency_limit=1, concurrency_id="engines")
    stop_btn.click(stop_handler(runs, TAB), [runs.client], None, api_name="unclip_stop", queue=False)
    resumable(runs, TAB, outputs, runs.client)
    load_file.upload(load_settings, [load_file],
                     [preset, prompt, prompt_a, prompt_b, batch, candidates, frames, strength, *shared_inputs,
                      load_note],
                     api_name="unclip_load")
    preset.change(apply_preset, [preset], [candidates, strength, *shared_inputs], api_name=False)
    return gen_event
