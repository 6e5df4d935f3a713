"""The Compare tab: one prompt and seed through every engine the preset serves, side by side, one video.

It follows the engines' own events (pipelines/compare.py): the status names the engine running and
its step, the preview shows its latest video frame, and each result joins the gallery as its
engine finishes. Runs outlive the page like every tab's (ui/runs.py); Stop ends the engine running
and skips the rest, keeping what was made.
"""
from __future__ import annotations

import gradio as gr

from pipelines import compare
from pipelines.events import Final
from pipelines.presets import list_presets, load_preset
from ui.common import USER_ERRORS, Throttle, follow_new_run, output_dir, owner_of, stop_handler, user_error
from ui.tab import step_status

NAME = "compare"
OUTPUTS = ("status", "preview", "final", "board", "video", "files")


def _presets():
    return [p for p in list_presets() if len(compare.engines_for(p)) >= 2]


def build(registry, runs) -> None:
    presets = _presets()
    with gr.Row():
        with gr.Column(scale=5):
            gr.Markdown("The same prompt and seed through every engine the preset serves, each at the preset's "
                        "settings, one picture each; then side by side and in one video.")
            preset = gr.Dropdown([(p.menu_label, p.name) for p in presets],
                                 value=presets[0].name if presets else None, label="Preset", elem_id="cmp_preset")
            prompt = gr.Textbox(label="Prompt", value="a large blue star at the top on a white background", lines=2,
                                elem_id="cmp_prompt")
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, elem_id="cmp_seed")
                fps = gr.Slider(1, 60, value=10, step=1, label="Video fps", elem_id="cmp_fps")
            with gr.Row():
                run_btn = gr.Button("Compare", variant="primary", elem_id="cmp_run")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="cmp_stop")
        with gr.Column(scale=4):
            widgets = {
                "status": gr.Markdown("Ready.", elem_id="cmp_status"),
                "preview": gr.Image(label="The engine running", type="pil", interactive=False, elem_id="cmp_preview",
                                    elem_classes="pixelated"),
                "final": gr.Gallery(label="Results", columns=4, object_fit="contain", interactive=False,
                                    elem_id="cmp_final", elem_classes="crisp"),
                "board": gr.Image(label="Side by side", type="filepath", interactive=False, elem_id="cmp_board"),
                "video": gr.Video(label="Every engine at once", elem_id="cmp_video", autoplay=False),
                "files": gr.File(label="Downloads (each result with its settings, the board, the mp4)",
                                 file_count="multiple", interactive=False, elem_id="cmp_files"),
            }
    outputs = [widgets[n] for n in OUTPUTS]

    def tup(values: dict) -> tuple:
        return tuple(values.get(n, gr.skip()) for n in OUTPUTS)

    def updates(req, fps_value, should_stop):
        try:
            board = compare.CompareBoard(req)
            names = list(board.requests)
            throttle = Throttle(0.15)
            for name, ev in compare.run(board.requests, registry, should_stop):
                board.add(name, ev)
                where = f"{board.engines[name].label} ({names.index(name) + 1} of {len(names)})"
                if isinstance(ev, Final):
                    yield tup({"status": f"{where}: done", "final": board.results()})
                    continue
                frame = board.frames[name][-1] if ev.previews and board.frames[name] else None
                if frame is not None or throttle():
                    yield tup({"status": f"{where} · " + step_status(ev),
                               **({"preview": frame} if frame is not None else {})})
            out = board.write(output_dir(), (req.prompt or "compare")[:40], fps=float(fps_value))
            stopped = len(board.finals) < len(names) or any(f.stopped for f in board.finals.values())
            word = "Stopped" if stopped else "Done"
            yield tup({"status": f"**{word}**: {len(board.finals)} of {len(names)} engines.",
                       "final": out["pictures"], "board": out["board"] and str(out["board"]),
                       "video": out["video"] and str(out["video"]), "files": out["files"]})
        except USER_ERRORS as e:
            raise user_error(e) from None

    def handler(preset_name, prompt_text, seed_value, fps_value, client_id, request: gr.Request):
        try:
            req = compare.CompareRequest(prompt=prompt_text or "", preset=preset_name, seed=seed_value)
            compare.requests(req)            # bad input says so before a run starts
            load_preset(preset_name)
        except USER_ERRORS as e:
            raise user_error(e) from None
        make = lambda should_stop: updates(req, fps_value, should_stop)  # noqa: E731
        yield from follow_new_run(runs, NAME, outputs, widgets["status"], make, client_id, request)

    run_btn.click(handler, [preset, prompt, seed, fps, runs.client], outputs, api_name="compare",
                  concurrency_limit=1, concurrency_id="engines")
    stop_btn.click(stop_handler(runs, NAME), [runs.client], None, api_name="compare_stop", queue=False)

    def resume(client_id, request: gr.Request):
        run = runs.current(owner_of(client_id, request), NAME)
        if run is not None and not (run.done and run.error is not None):
            yield from run.follow()

    runs.resumers.append((resume, [runs.client], outputs, "compare_resume"))
