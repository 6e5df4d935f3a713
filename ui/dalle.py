"""The DALL-E tab: watch the token grids of all candidates fill row by row, then see them ranked by CLIP."""
from __future__ import annotations

import gradio as gr
from PIL import Image

from pipelines import dalle as engine
from pipelines import media
from pipelines.events import Final
from pipelines.presets import list_presets, load_preset
from pipelines.zerogpu import gpu
from ui.common import (USER_ERRORS, follow_new_run, output_dir, resumable, stop_handler, Throttle, user_error)
from ui.runs import RunStore

TAB = "dalle"
EXAMPLE = "a large yellow diamond above a small blue circle"
EXAMPLES = [[EXAMPLE], ["a red circle"], ["a small green square to the left of a large purple cross"],
            ["a large white star at the top on a black background"], ["a purple star"]]

# widgets whose values are restored by "load settings", in this order
SETTING_FIELDS = ("preset", "prompt", "candidates", "temperature", "top_k", "top_p", "guidance", "seed", "rerank",
                  "keep_rows")


def _path(f) -> str:
    return f if isinstance(f, str) else getattr(f, "name", str(f))


def _presets():
    return [p for p in list_presets() if "dalle" in p.components]


def completion_upload(f) -> Image.Image | None:
    """An uploaded image to complete, checked by media.load_image, handed over in its own mode."""
    if not f:
        return None
    media.load_image(_path(f), name="image to complete")  # format, bytes and pixel limits, before decoding
    image = Image.open(_path(f))
    image.load()
    return image  # the engine converts the mode and says so


def _request(preset, prompt, candidates, temperature, top_k, top_p, guidance, seed, rerank, init_image,
             keep_rows) -> engine.DalleRequest:
    """Widgets -> request; bad values raise ValueError with a user-facing message (in the engine)."""
    return engine.DalleRequest(prompt=prompt or "", preset=preset, candidates=candidates, temperature=temperature,
                               top_k=top_k, top_p=top_p, guidance=guidance, seed=seed, rerank=bool(rerank),
                               init_image=completion_upload(init_image), keep_rows=keep_rows)


def _gpu_seconds(req, registry, stop) -> int:
    return int(min(300, 20 + 0.5 * req.candidates))


@gpu(duration=_gpu_seconds)
def _events(req, registry, stop):
    """The engine's events; on a ZeroGPU Space this runs in the GPU worker (a no-op wrapper elsewhere)."""
    yield from engine.run(req, registry, stop)


def _status(ev) -> str:
    rate = ev.metrics.get("tokens_per_s", 0.0)
    return f"**Code {ev.step}/{ev.total}** of every candidate · {rate:.0f} tokens/s · {ev.elapsed_s:.1f} s"


def build(registry, runs: RunStore) -> None:
    """Create the tab's widgets and wire them; call inside `gr.Blocks` / `gr.Tab`."""
    presets = _presets()
    first = presets[0] if presets else None
    d = {**{f: getattr(engine.DalleRequest(), f) for f in SETTING_FIELDS if f != "preset"},
         **(first.defaults.get(engine.ENGINE, {}) if first else {})}

    with gr.Row():
        with gr.Column(scale=5):
            preset = gr.Dropdown([(p.label, p.name) for p in presets], value=first.name if first else None,
                                 label="Preset", elem_id="dal_preset")
            prompt = gr.Textbox(label="Prompt", value=EXAMPLE, lines=2, elem_id="dal_prompt")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Examples (shapes preset)", cache_examples=False)
            with gr.Row():
                candidates = gr.Number(label=f"Candidates (1-{engine.MAX_CANDIDATES}, one batch)",
                                       value=d["candidates"], precision=0, elem_id="dal_candidates")
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="dal_seed")
                rerank = gr.Checkbox(label="Rank by CLIP", value=d["rerank"], elem_id="dal_rerank")
            with gr.Row():
                temperature = gr.Number(label="Temperature (> 0)", value=d["temperature"], elem_id="dal_temperature")
                top_k = gr.Number(label="Top-k (the codebook size = no limit)", value=d["top_k"], precision=0,
                                  elem_id="dal_top_k")
                top_p = gr.Number(label="Top-p (0-1]", value=d["top_p"], elem_id="dal_top_p")
                guidance = gr.Number(label="Guidance scale (1 = off)", value=d["guidance"], elem_id="dal_guidance",
                                     info="classifier-free 'supercondition': above 1 follows the prompt harder")
            with gr.Row():
                fps = gr.Slider(1, 30, value=4, step=1, label="Video fps", elem_id="dal_fps")
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary", elem_id="dal_run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="dal_stop")
            with gr.Accordion("Image completion", open=False):
                gr.Markdown("The top rows of the picture's tokens are kept; the model writes the rest.")
                with gr.Row():
                    # a File, not an Image: every upload is decoded by media.load_image, with its size limits
                    init_image = gr.File(label="Image to complete (square)", file_types=["image"],
                                         elem_id="dal_init")
                    keep_rows = gr.Slider(1, 7, value=d["keep_rows"], step=1, label="Token rows to keep (of 8)",
                                          elem_id="dal_keep_rows")
            with gr.Accordion("Load settings from an image", open=False):
                load_file = gr.File(label="An Atelier PNG", file_types=[".png"], elem_id="dal_load")
                load_note = gr.Markdown()
        with gr.Column(scale=4):
            status = gr.Markdown("Ready.", elem_id="dal_status")
            preview = gr.Image(label="Token grids filling (grey: not written yet)", type="pil", format="png",
                               interactive=False, elem_id="dal_preview", elem_classes="pixelated")
            final = gr.Gallery(label="Candidates, best first", format="png", interactive=False, elem_id="dal_final",
                               elem_classes="crisp", columns=4, object_fit="contain")
            video = gr.Video(label="Progress video", elem_id="dal_video", interactive=False)
            files = gr.File(label="Downloads (PNGs at true size and enlarged, mp4)", file_count="multiple",
                            interactive=False, elem_id="dal_files")
            settings = gr.JSON(label="Settings of the last images", elem_id="dal_settings")

    inputs = [preset, prompt, candidates, temperature, top_k, top_p, guidance, seed, rerank, init_image, keep_rows]
    outputs = [preview, status, final, video, files, settings]

    def updates(args, fps_value, should_stop):
        """Engine events -> widget updates (runs in the store's worker thread, see ui/runs.py)."""
        writer = None
        try:
            req = _request(*args)
            events = _events(req, registry, should_stop)
            ev = next(events)  # validation and model loading happen here: errors surface before any output
            out = output_dir()
            stem = req.prompt or "dalle"
            writer = media.VideoWriter(media.new_output_path(out, stem, ".mp4"), fps=int(fps_value))
            throttle = Throttle(0.15)
            while not isinstance(ev, Final):
                if ev.notice:
                    gr.Info(ev.notice)
                grid = ev.previews.get("partial")
                if grid is not None:
                    writer.append(grid)
                    yield media.enlarge(grid), _status(ev), *[gr.skip()] * 4
                elif throttle() and ev.stage == "sample":
                    yield gr.skip(), _status(ev), *[gr.skip()] * 4
                ev = next(events)
            # the run ended (finished or stopped): save what was made, best first
            sheet = engine.tile(ev.images)
            writer.append(sheet)
            scores = ev.meta["clip_scores"] or [None] * len(ev.images)
            paths, shown = [], []
            for rank, (image, score) in enumerate(zip(ev.images, scores), 1):
                written = media.save_png(image, media.new_output_path(out, stem, ".png"),
                                         {**ev.meta, "rank": rank, "clip_score": score}, enlarged_min_side=256)
                paths += written
                label = f"#{rank}" + (f" · CLIP {score:.3f}" if score is not None else "")
                shown.append((str(written[-1]), label))
            mp4 = writer.close()
            writer = None
            word = "Stopped" if ev.stopped else "Done"
            ranked = " · ranked by CLIP, best first" if ev.meta["clip_scores"] else ""
            msg = (f"**{word}** after {ev.meta['tokens_done']} of {ev.meta['tokens_total']} codes per candidate "
                   f"in {ev.meta['seconds']} s{ranked}.")
            yield (media.enlarge(sheet), msg, shown, mp4, [str(p) for p in paths] + ([str(mp4)] if mp4 else []),
                   ev.meta)
        except USER_ERRORS as e:
            raise user_error(e) from None
        finally:
            if writer is not None:  # error or server shutdown: drop the unfinished video
                writer.abort()

    def generate(preset, prompt, candidates, temperature, top_k, top_p, guidance, seed, rerank, init_image,
                 keep_rows, fps_value, client_id, request: gr.Request):
        args = (preset, prompt, candidates, temperature, top_k, top_p, guidance, seed, rerank, init_image, keep_rows)
        yield from follow_new_run(runs, TAB, outputs, status, lambda should_stop: updates(args, fps_value, should_stop),
                                  client_id, request)

    def load_settings(file):
        """Read the settings embedded in a PNG back into the widgets."""
        if not file:
            return [gr.skip()] * (len(SETTING_FIELDS) + 1)
        try:
            meta = media.read_meta(_path(file))
            if meta.get("engine") != engine.ENGINE:
                raise ValueError(f"it was made by the {meta.get('engine', 'unknown')} engine, not DALL-E")
            req = engine.request_from_settings(meta["settings"])
            load_preset(req.preset)
        except (ValueError, KeyError, TypeError) as e:
            raise user_error(ValueError(f"Could not load settings: {e}")) from None
        values = [getattr(req, f) for f in SETTING_FIELDS]
        extra = " Upload the image to complete again: images are not stored in the PNG." \
            if meta["settings"].get("init_image") else ""
        return values + ["Settings loaded." + extra]

    def apply_preset(name):
        try:
            dflt = load_preset(name).defaults.get(engine.ENGINE, {})
        except ValueError as e:
            raise user_error(e) from None
        keys = ("candidates", "temperature", "top_k", "top_p", "guidance", "rerank", "keep_rows")
        return [dflt[k] if k in dflt else gr.skip() for k in keys]

    gen_event = run_btn.click(generate, inputs + [fps, runs.client], outputs,
                              api_name="dalle", concurrency_limit=1, concurrency_id="engines")
    stop_btn.click(stop_handler(runs, TAB), [runs.client], None, api_name="dalle_stop", queue=False)
    resumable(runs, TAB, outputs, runs.client)
    load_file.upload(load_settings, [load_file],
                     [preset, prompt, candidates, temperature, top_k, top_p, guidance, seed, rerank, keep_rows,
                      load_note], api_name="dalle_load")
    preset.change(apply_preset, [preset], [candidates, temperature, top_k, top_p, guidance, rerank, keep_rows],
                  api_name=False)
    return gen_event
