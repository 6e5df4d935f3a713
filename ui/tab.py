"""One tab scaffold for every engine: widgets declared once by name, the shared handlers wired once.

A tab module (`ui/<engine>.py`) lays out its widgets and registers them by name,

    with Tab(ENGINES["diffusion"], registry, runs, prefix="dif", outputs=("x_t", "x0", "status", ...)) as tab:
        with tab.settings_column():                  # the preset first, "load settings" last
            tab.input("steps", gr.Number(...))       # named as the request's field
        with tab.results_column("Downloads"):        # the status first, video, files, settings last
            tab.output("x_t", gr.Image(...))

then says how previews and results map to its widgets (`show`, `finish`) and calls
`tab.wire(...)`. Everything else is here, the same for every engine:

- a run handler per button whose handler takes the widgets' values by name, builds the
  request, and follows the run in the store's worker thread (`ui/runs.py`), so a reload
  finds it again; Stop, resume on page load;
- the loop from engine events to widget updates: status line, previews, the recorder
  (`pipelines/recorder.py`) that writes the PNGs with their settings, strip and mp4;
- "load settings from an image", and a preset's defaults filled into the widgets;
- errors as one clear message in the page (`gr.Error`), nothing else lost; a bad value is told on its
  own widget before the run starts (Gradio's event validator, `_validator`), the last result left in view;
- the seed tools: 🎲 and ♻️ beside the seed (`seed_box`), "Vary seed" (`vary_seed_box`: the requests'
  `subseed` and `subseed_strength`, pipelines/seeds.py) and batch count (`batch_count_box`, `series`).

API endpoints keep their positional order: the inputs in the order given to `run_button`,
then the video fps and the browser id, then the seed tools (SEED_TOOLS); the outputs in the `outputs` order.
"""
from __future__ import annotations

import inspect
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import gradio as gr

from pipelines import media
from pipelines.estimate import ESTIMATES, RunMeter
from pipelines.events import Final, Step
from pipelines.presets import list_presets, load_preset
from pipelines.recorder import Recorder, Recording
from pipelines.zerogpu import ON_SPACES, BoundedRun, ZeroGPUFailure, gpu_engine_call
from pipelines.history import parents_of, run_meta
from pipelines.validation import MAX_SEED, number
from ui import history as run_history
from ui.relay import send_box
from ui import progress as run_progress
from ui.reexport import Reexport
from ui.common import USER_ERRORS, Throttle, follow_new_run, loading_note, output_dir, owner_of, stop_handler, \
    user_error


MAX_BATCH_COUNT = 16
# the seed tools' inputs (ui/tab.py `seed_box`, `vary_seed_box`, `batch_count_box`): every run endpoint takes
# them after the video fps and the browser id, so the API's positional order only grew at its end
SEED_TOOLS = ("subseed", "subseed_strength", "batch_count")


def batch_count(value) -> int:
    """Runs one after another (A1111's batch count): None (an API client that leaves it out) is 1."""
    return 1 if value is None else int(number("Batch count", value, 1, MAX_BATCH_COUNT, integer=True))


def file_path(f) -> str:
    """A gr.File value (a path, or an object with .name) as a path."""
    return f if isinstance(f, str) else getattr(f, "name", str(f))


def upload(f, name: str):
    """A gr.File upload -> RGB picture through media.load_image (its size limits and clear errors)."""
    return media.load_image(file_path(f), name=name) if f else None


def step_status(ev: Step, unit: str = "Step") -> str:
    """**Stage (i/n): Step s/t** · t = .. · loss .. · r steps/s · elapsed."""
    rate = ev.step / ev.elapsed_s if ev.elapsed_s > 0 else 0.0
    stage = f"{ev.stage.capitalize()} ({ev.stage_index + 1}/{ev.stage_count}): {unit.lower()}" \
        if ev.stage_count > 1 else unit
    t = f" · t = {int(ev.t)}" if ev.t is not None else ""
    loss = f" · loss {ev.metrics['loss']:.4f}" if "loss" in ev.metrics else ""
    budget = round(100 * ev.metrics.get("preview_budget", 0.1))
    auto = (f" · previews every {int(ev.metrics['preview_every'])} (auto: under {budget} % of the run)"
            if "preview_every" in ev.metrics else "")
    return f"**{stage} {ev.step}/{ev.total}**{t}{loss} · {rate:.1f} {unit.lower()}s/s · {ev.elapsed_s:.1f} s{auto}"


@dataclass
class Paused:
    """A run kept to continue: its request, where its GPU calls stopped, its recorder (video still open),
    and how its tab shows it (the `show`/`finish` of the button that started it)."""
    req: Any
    state: Any
    step: int
    recorder: Recorder
    show: Callable
    finish: Callable
    parents: dict | None = None       # the runs its uploads came from (pipelines/history.py)


def _with_signature(fn: Callable, names: Iterable[str]) -> Callable:
    """Give `fn(*values)` a signature of one parameter per input plus a last `request: gr.Request`,
    as Gradio reads it: Gradio then passes the request as the last positional value."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
    fn.__signature__ = inspect.Signature(params)
    fn.__annotations__ = {"request": gr.Request}
    return fn


def preset_values(engine, preset, keys: list[str]) -> list:
    """The widgets' values for `keys` when `preset` is chosen: the preset's own setting, or the engine's default
    where the preset gives none (a setting tuned for one preset, such as the shapes preset's random starts, does
    not stay on when another preset is chosen). Tuples become lists, as widgets hold them."""
    dflt = engine.defaults(preset)
    return [list(dflt[k]) if isinstance(dflt[k], tuple) else dflt[k] for k in keys]

class Tab:
    def __init__(self, engine, registry, runs, *, prefix: str, outputs: tuple[str, ...], unit: str = "Step"):
        self.engine, self.registry, self.runs = engine, registry, runs
        self.name, self.prefix, self.unit = engine.name, prefix, unit
        self.output_names = outputs
        self.presets = [p for p in list_presets() if engine.supports(p)]
        self.first = self.presets[0] if self.presets else None
        self.defaults = engine.defaults(self.first)    # the widgets' first values
        self.inputs: dict[str, Any] = {}               # widgets by name (request fields, or the tab's own)
        self.outputs: dict[str, Any] = {}
        self.estimate = None                           # the "About N s" line, once `estimate_box` made it
        self.paused: dict[str, Paused] = {}            # owner -> a run ZeroGPU refused or its page left, to continue
        self._estimated = False                        # whether a run button keeps it up to date yet

    # --- declaring widgets ---
    def input(self, name: str, widget):
        self.inputs[name] = widget
        return widget

    def output(self, name: str, widget):
        self.outputs[name] = widget
        return widget

    # --- the layout every tab shares: `with tab:` is its row, settings on the left, results on the right ---
    def __enter__(self):
        self._row = gr.Row()
        self._row.__enter__()
        return self

    def __exit__(self, *exc):
        return self._row.__exit__(*exc)

    @contextmanager
    def settings_column(self):
        """The left column: the preset first, "load settings from an image" last."""
        with gr.Column(scale=5):
            self.preset_dropdown()
            yield
            self.load_box()

    @contextmanager
    def results_column(self, files_label: str, video_label: str = "Progress video"):
        """The right column: the status line first; the video, downloads and settings last."""
        with gr.Column(scale=4):
            self.output("status", gr.Markdown("Ready.", elem_id=f"{self.prefix}_status"))
            yield
            send_box(self)                  # "Send to" another tab (ui/relay.py)
            self.result_widgets(files_label, video_label)

    def prompt_box(self, value: str, **kw):
        return self.input("prompt", gr.Textbox(label="Prompt", value=value, lines=2, elem_id=f"{self.prefix}_prompt",
                                               **kw))

    def examples(self, examples: list) -> None:
        gr.Examples(examples, inputs=[self.inputs["prompt"]], label="Examples (shapes preset)", cache_examples=False)

    def buttons(self, label: str = "Generate"):
        """Run and Stop, side by side, and the run's estimate under them."""
        with gr.Row():
            run, stop = (gr.Button(label, variant="primary", elem_id=f"{self.prefix}_run"),
                         gr.Button("Stop", variant="stop", elem_id=f"{self.prefix}_stop"))
        self.estimate_box()
        return run, stop

    def estimate_box(self):
        """How long a run of the settings shown will take, and its memory (pipelines/estimate.py), kept up to
        date: said again on each page load (the runs since refined it) and on each change of a setting."""
        def first() -> str:
            try:
                req = self.engine.make_request(self.first, preset=getattr(self.first, "name", None))
                return ESTIMATES.say(self.engine, req, self.registry.device, self.registry)
            except (ValueError, TypeError):
                return ""

        self.estimate = gr.Markdown(first, elem_id=f"{self.prefix}_estimate")
        return self.estimate

    def _say_estimate(self, named: dict) -> str:
        kw = {k: v for k, v in named.items() if k in self.engine.fields and k not in self.engine.image_fields}
        try:
            req = self.engine.make_request(load_preset(kw["preset"]), **kw)    # the preset's name stays in the request
            return ESTIMATES.say(self.engine, req, self.registry.device, self.registry)
        except (ValueError, TypeError, KeyError):
            return ""       # settings the run would refuse: its own message says why

    def image_output(self, name: str, label: str, elem: str):
        """A picture shown crisp at least 256 px wide (small built-in pictures are enlarged nearest-neighbour)."""
        return self.output(name, gr.Image(label=label, type="pil", format="png", interactive=False,
                                          elem_id=f"{self.prefix}_{elem}", elem_classes="pixelated"))

    def denoise_previews(self, prefix: str = "") -> None:
        """A denoiser's two previews side by side: the noisy sample and the predicted clean picture."""
        with gr.Row():
            self.image_output("x_t", f"{prefix}x_t (noisy sample)", "xt")
            self.image_output("x0", f"{prefix}x_0 predicted", "x0")

    def gallery(self, label: str = "Result"):
        return self.output("final", gr.Gallery(label=label, format="png", interactive=False,
                                               elem_id=f"{self.prefix}_final", elem_classes="crisp", columns=4,
                                               object_fit="contain"))

    def preset_dropdown(self):
        return self.input("preset", gr.Dropdown([(p.menu_label, p.name) for p in self.presets],
                                                value=self.first.name if self.first else None, label="Preset",
                                                elem_id=f"{self.prefix}_preset"))

    def fps_slider(self, top: int = 60):
        return self.input("fps", gr.Slider(1, top, value=self.engine.fps, step=1, label="Video fps",
                                           elem_id=f"{self.prefix}_fps"))

    # --- the seed tools: 🎲 and ♻️ beside the seed, vary seed, batch count (wired in `wire`, run in `series`) ---
    def seed_box(self):
        """The seed, with 🎲 (a fresh random seed) and ♻️ (the seed of this browser's last result here)."""
        p = self.prefix
        with gr.Column(min_width=170):
            seed = self.input("seed", gr.Number(label="Seed", value=0, precision=0, elem_id=f"{p}_seed"))
            with gr.Row():
                self._seed_buttons = (gr.Button("🎲 Random", size="sm", min_width=60, elem_id=f"{p}_seed_random"),
                                      gr.Button("♻️ Last", size="sm", min_width=60, elem_id=f"{p}_seed_reuse"))
        return seed

    def vary_seed_box(self):
        """"Vary seed" (A1111's variation seed, pipelines/seeds.py): a subseed with its own 🎲, and its strength."""
        p = self.prefix
        with gr.Accordion("Vary seed", open=False, elem_id=f"{p}_vary_seed"):
            with gr.Row():
                with gr.Column(min_width=170):
                    self.input("subseed", gr.Number(label="Subseed", value=0, precision=0, elem_id=f"{p}_subseed"))
                    self._subseed_button = gr.Button("🎲 Random", size="sm", min_width=60,
                                                     elem_id=f"{p}_subseed_random")
                self.input("subseed_strength", gr.Slider(
                    0, 1, value=0, step=0.01, elem_id=f"{p}_subseed_strength",
                    label="Subseed strength (0 = off)",
                    info="a little: a picture close to the seed's; 1: the subseed's start"))

    def batch_count_box(self):
        """Batch count: the run made again, one after another, with the seed going up by one each time."""
        return self.input("batch_count", gr.Number(label=f"Batch count (1-{MAX_BATCH_COUNT}, one after another)",
                                                   value=1, precision=0, elem_id=f"{self.prefix}_batch_count"))

    def load_box(self):
        """The "load settings from an image" accordion: an upload and its note."""
        with gr.Accordion("Load settings from an image", open=False):
            self.load_file = gr.File(label="An Atelier PNG", file_types=[".png"], elem_id=f"{self.prefix}_load")
            self.load_note = gr.Markdown()

    def result_widgets(self, files_label: str, video_label: str = "Progress video"):
        """Video, downloads and settings: the last three outputs of every tab."""
        self.output("video", gr.Video(label=video_label, elem_id=f"{self.prefix}_video", interactive=False))
        self.reexport = Reexport(self)      # made again from the run's frames (ui/reexport.py)
        self.reexport.box()
        self.output("files", gr.File(label=files_label, file_count="multiple", interactive=False,
                                     elem_id=f"{self.prefix}_files"))
        self.output("settings", gr.JSON(label="Settings of the last images", elem_id=f"{self.prefix}_settings"))

    # --- a run: events -> widget updates ---
    def _tuple(self, values: Mapping[str, Any]) -> tuple:
        return tuple(values.get(n, gr.skip()) for n in self.output_names)

    def updates(self, make_request: Callable[[], Any], fps_value, should_stop, show: Callable, finish: Callable,
                owner: str | None = None, paused: "Paused | None" = None, parents: dict | None = None,
                meta: dict | None = None):
        """Engine events -> widget updates (runs in the store's worker thread, see ui/runs.py).

        `show(req, step, first)` maps a Step's previews to widgets (`first` until the page got an
        update of this run); `finish(req, final, recording)` fills the result's own widgets and the
        status after "Done"/"Stopped". Files, video, strip and settings are filled here.

        On a ZeroGPU Space the engine runs in GPU calls, a long run in bounded ones. When ZeroGPU
        refuses a call, or the page goes away, a run that has paused at least once is kept for
        `owner` (`paused` continues it: the same request, state and recorder, so the video covers
        the whole run). `parents`: the runs its uploads came from, recorded in its metadata.
        """
        recorder, bounded = None, None
        parents = paused.parents if paused is not None else parents
        try:
            req = make_request() if paused is None else paused.req
            if paused is None:
                preset = load_preset(req.preset)
                note = loading_note(self.registry, preset, self.engine.components(preset))
                if note:
                    yield self._tuple({"status": note})
            if ON_SPACES:
                state, step = (paused.state, paused.step) if paused else (None, 0)
                bounded = BoundedRun(gpu_engine_call, self.name, req, should_stop, state=state, step=step)
                events = iter(bounded)
            else:
                events = self.engine.run(req, self.registry, should_stop)
            meter = RunMeter(self.engine, req, self.registry, loaded=paused is None and not note,
                             measure_memory=not ON_SPACES)       # time and memory, shown and learnt
            ev = next(events)  # validation and model loading happen here: errors surface before any output
            meter.first(ev)
            recorder = paused.recorder if paused else Recorder(self.engine, req, output_dir(),
                                                               getattr(req, "prompt", "") or self.name,
                                                               fps=int(fps_value))
            throttle = Throttle(0.15)
            first = True
            while not isinstance(ev, Final):
                if ev.notice:
                    gr.Info(ev.notice)
                recorder.add(ev)
                meter.step(ev)
                shown = show(req, ev, first)
                if shown or throttle():
                    yield self._tuple({"status": step_status(ev, self.unit) + run_progress.progress(meter, ev),
                                       **(shown or {})})
                    first = False
                ev = next(events)
            # the run ended (finished or stopped): save what was made
            ev.meta.update(run_meta(parents))     # its id and the runs it came from, in every PNG
            ev.meta.update(meta or {})            # and its place in a batch count's series (`series`)
            rec = recorder.finish(ev)
            recorder = None
            meter.finished()
            if getattr(self, "reexport", None) is not None:      # its frames, to re-export the video
                self.reexport.keep(owner, rec, getattr(req, "prompt", "") or self.name)
            kept = run_history.after_run(self, owner, ev, rec)   # the browser's history (ui/history.py)
            word = "Stopped" if ev.stopped else "Done"
            values = {"final": rec.shown, "strip": rec.strip, "video": rec.video, "files": rec.files,
                      "settings": ev.meta}
            values.update(finish(req, ev, rec))
            values["status"] = run_progress.done(meter, word) + values.get("status", "")
            meter.observe(ev)            # the next estimate follows this machine (finished runs only)
            values["status"] += kept
            yield self._tuple(values)
        except ZeroGPUFailure as e:
            if self._keep(owner, req, bounded, recorder, show, finish, parents):
                recorder = None
                e = ZeroGPUFailure(f"{e} The run is kept at step {bounded.step}: press Continue to go on.")
            raise user_error(e) from None
        except GeneratorExit:          # the page went away (a Space's runs belong to their page)
            if self._keep(owner, req, bounded, recorder, show, finish, parents):
                recorder = None
            raise
        except USER_ERRORS as e:
            raise user_error(e) from None
        finally:
            if recorder is not None:  # error or server shutdown: drop the unfinished video
                recorder.abort()

    def _keep(self, owner, req, bounded, recorder, show, finish, parents=None) -> bool:
        """Keep a run that paused at least once, to continue later; whether it was kept."""
        if owner is None or bounded is None or bounded.state is None or recorder is None:
            return False
        self.paused[owner] = Paused(req, bounded.state, bounded.step, recorder, show, finish, parents)
        return True

    def run_button(self, button, api_name: str, fields: list[str], make_request: Callable[[dict], Any],
                   show: Callable = lambda req, ev, first: None,
                   finish: Callable[[Any, Final, Recording], dict] = lambda req, ev, rec: {}):
        """Wire a run button: its handler takes `fields` (widget names) by name, then fps and the browser id, then
        the seed tools the tab has (SEED_TOOLS). The page checks the values first (`_validator`); the run
        repeats batch-count times (`series`)."""
        outputs = [self.outputs[n] for n in self.output_names]
        status = self.outputs["status"]
        tail = [n for n in SEED_TOOLS if n in self.inputs]
        names = [*fields, "fps", "client_id", *tail]

        def handler(*values):
            *front, request = values
            named = dict(zip(names, front))
            fps_value, client_id = named.pop("fps"), named.pop("client_id")
            try:
                count = batch_count(named.pop("batch_count", 1))
            except ValueError as e:
                raise user_error(e) from None
            owner = owner_of(client_id, request)
            self.paused.pop(owner, None)     # a new run replaces a paused one
            parents = parents_of({n: v for n, v in named.items() if isinstance(self.inputs[n], gr.File)})
            make = lambda should_stop: self.series(make_request, named, count, fps_value,  # noqa: E731
                                                   should_stop, show, finish, owner, parents)
            yield from follow_new_run(self.runs, self.name, outputs, status, make, client_id, request)

        _with_signature(handler, names)
        if self.estimate is not None and not self._estimated:
            self._estimated = True          # the tab's first run button keeps the estimate up to date
            plain = [n for n in fields if not isinstance(self.inputs[n], gr.File)]
            for n in plain:
                self.inputs[n].change(lambda *v: self._say_estimate(dict(zip(plain, v))),
                                      [self.inputs[k] for k in plain], self.estimate, queue=False, api_name=False,
                                      show_progress="hidden")
        inputs = [self.inputs[n] for n in fields] + [self.inputs["fps"], self.runs.client] + \
            [self.inputs[n] for n in tail]
        # the page's own check first (browser only: the API endpoint is the run itself, checked as it starts)
        checked = button.click(lambda *values: None, inputs, None, validator=self._validator(names, make_request),
                               api_name=False, show_progress="hidden", concurrency_limit=None)
        return checked.success(handler, inputs, outputs, api_name=api_name, concurrency_limit=1,
                               concurrency_id="engines")

    def series(self, make_request: Callable[[dict], Any], named: dict, count: int, fps_value, should_stop,
               show: Callable, finish: Callable, owner: str | None = None, parents: dict | None = None):
        """Batch count: `count` runs one after another, the seed going up by one each (A1111's); each run is
        recorded as usual (its PNGs carry its own seed, and `series` in their metadata). The status says
        "Run 2 of 4"; the gallery and the downloads gather every run's; Stop ends the whole series."""
        if count == 1:
            yield from self.updates(lambda: make_request(named), fps_value, should_stop, show, finish, owner,
                                    parents=parents)
            return
        at = {n: i for i, n in enumerate(self.output_names)}
        gathered: dict[str, list] = {"final": [], "files": []}
        try:
            first_seed = int(number("Seed", named.get("seed"), 0, MAX_SEED, integer=True))
        except ValueError:
            first_seed = None          # the first run refuses it, with its message
        for k in range(count):
            if k and (should_stop() or first_seed is None):
                break
            values = {**named, "seed": (first_seed + k) % (MAX_SEED + 1)} if k else named
            series = {"run": k + 1, "of": count, "first_seed": first_seed}
            for update in self.updates(lambda v=values: make_request(v), fps_value, should_stop, show, finish, owner,
                                       parents=parents, meta={"series": series}):
                update = list(update)
                if isinstance(update[at["status"]], str):
                    update[at["status"]] = f"**Run {k + 1} of {count}** · " + update[at["status"]]
                meta = update[at["settings"]]
                if isinstance(meta, dict) and "settings" in meta:         # the run's end: its results
                    for key, kept in gathered.items():
                        if key in at and isinstance(update[at[key]], list):
                            kept += update[at[key]]
                            update[at[key]] = list(kept)
                yield tuple(update)

    def _refusal(self, named: dict, make_request: Callable[[dict], Any]) -> str | None:
        """What a run of these widget values would refuse at once (the request as the run builds it, the
        engine's `check` with the models already loaded, no others), or None."""
        try:
            batch_count(named.get("batch_count"))
            req = make_request({k: v for k, v in named.items() if k not in ("fps", "client_id", "batch_count")})
            specs = self.engine.components(load_preset(req.preset))
            models = {r: m for r, spec in specs.items() if (m := self.registry.loaded(spec)) is not None}
            self.engine.check(req, models, self.registry.device)
        except (ValueError, TypeError, FileNotFoundError) as e:
            return str(e).strip() or type(e).__name__
        except Exception:          # noqa: BLE001 - anything else: the run itself says what is wrong
            return None
        return None

    def _validator(self, names: list[str], make_request: Callable[[dict], Any]) -> Callable:
        """Gradio's event validator for a run button: a bad value is one message on its widget (gr.validate),
        and the run does not start, so the last result stays as it was, uncovered."""
        def first_value(name: str):
            widget = self.inputs[name]
            return None if isinstance(widget, gr.File) else getattr(widget, "value", None)

        def culprit(named: dict, message: str) -> str | None:
            """The widget the refusal is about: the first whose own first value makes it go away, else the
            first whose first value changes it."""
            changes = None
            for name in [n for n in named if n not in ("fps", "client_id", "preset")] + ["preset"]:
                if name not in named or named[name] == first_value(name):
                    continue
                other = self._refusal({**named, name: first_value(name)}, make_request)
                if other is None:
                    return name
                if other != message and changes is None:
                    changes = name
            return changes

        def validate(*values):
            named = dict(zip(names, values))
            verdicts = [gr.validate(True, "")] * len(values)
            message = self._refusal(named, make_request)
            if message is not None:
                where = culprit(named, message) or next(n for n in names if n != "preset")
                verdicts[names.index(where)] = gr.validate(False, message)
            return verdicts

        return validate

    def request(self, named: dict, **extra):
        """The request from widget values named as its fields (plus `extra`); pictures through `upload`."""
        kw = {k: v for k, v in named.items() if k in self.engine.fields and k not in extra}
        for k in self.engine.image_fields:
            if k in kw and k not in self.engine.parse:
                kw[k] = upload(kw[k], k.replace("_", " "))
            elif k in kw:
                kw[k] = self.engine.parse[k](file_path(kw[k])) if kw[k] else None
        return self.engine.request(**{**kw, **extra})

    # --- the handlers every tab shares ---
    def wire(self, stop_button, load: list[tuple[str, str]], preset_fields: Iterable[str],
             preset_extra: Callable | None = None, preset_extra_outputs: Iterable = (),
             images_named: str = "images"):
        """Stop, resume on page load, load settings (widget name, request field) pairs, preset defaults."""
        outputs = [self.outputs[n] for n in self.output_names]
        stop_button.click(stop_handler(self.runs, self.name), [self.runs.client], None, api_name=f"{self.name}_stop",
                          queue=False)
        self._wire_resume(outputs)
        if self.engine.pausable:
            self._wire_continue(outputs)
        self._wire_load(load, images_named)
        if getattr(self, "reexport", None) is not None:
            self.reexport.wire()
        self._wire_preset(list(preset_fields), preset_extra, list(preset_extra_outputs))
        self._wire_seed_tools()

    def _wire_seed_tools(self) -> None:
        """🎲 a fresh random seed (and subseed); ♻️ the seed of the result this page shows, read from its
        metadata (the "settings" output): a batch count's first, so that Run makes the series again."""
        def last_seed(meta):
            meta = meta if isinstance(meta, dict) else {}
            seed = (meta.get("series") or {}).get("first_seed")
            seed = seed if seed is not None else (meta.get("settings") or {}).get("seed")
            if seed is None:
                gr.Info("There is no result in this tab yet: its seed is reused once a run ends.")
                return gr.skip()
            return int(seed)

        if hasattr(self, "_seed_buttons"):
            dice, reuse = self._seed_buttons
            dice.click(lambda: random.randrange(2**32), None, self.inputs["seed"], api_name=False, queue=False,
                       show_progress="hidden")
            reuse.click(last_seed, self.outputs["settings"], self.inputs["seed"], api_name=f"{self.name}_reuse_seed",
                        show_progress="hidden", concurrency_limit=None)
        if hasattr(self, "_subseed_button"):
            self._subseed_button.click(lambda: random.randrange(2**32), None, self.inputs["subseed"], api_name=False,
                                       queue=False, show_progress="hidden")

    def _wire_resume(self, outputs: list) -> None:
        """On page load: the browser's run in this tab again (going: live; finished: its result), or where
        a paused run stands. Also `/<tab>_resume` for clients that pass their own id."""
        def resume(client_id, request: gr.Request):
            owner = owner_of(client_id, request)
            run = self.runs.current(owner, self.name)
            if run is not None and not (run.done and run.error is not None):
                yield from run.follow()
            elif owner in self.paused:
                yield self._tuple({"status": f"**Paused** at step {self.paused[owner].step}: press Continue "
                                             "to go on."})

        self.runs.resumers.append((resume, [self.runs.client], outputs, f"{self.name}_resume"))

    def _wire_continue(self, outputs: list) -> None:
        """Continue: a run ZeroGPU refused or whose page went away goes on from its last pause
        (`/<tab>_continue`); shown on a Space, where runs are made of GPU calls."""
        button = gr.Button("Continue", variant="secondary", elem_id=f"{self.prefix}_continue", visible=ON_SPACES)

        def go_on(fps_value, client_id, request: gr.Request):
            owner = owner_of(client_id, request)
            paused = self.paused.pop(owner, None)
            if paused is None:
                raise user_error(ValueError("There is no paused run to continue in this tab."))
            make = lambda should_stop: self.updates(lambda: paused.req, fps_value, should_stop,  # noqa: E731
                                                    paused.show, paused.finish, owner, paused)
            yield from follow_new_run(self.runs, self.name, outputs, self.outputs["status"], make, client_id,
                                      request)

        button.click(go_on, [self.inputs["fps"], self.runs.client], outputs, api_name=f"{self.name}_continue",
                     concurrency_limit=1, concurrency_id="engines")

    def _wire_load(self, load: list[tuple[str, str]], images_named: str) -> None:
        engine = self.engine

        def load_settings(file):
            """Read the settings embedded in a PNG back into the widgets."""
            if not file:
                return [gr.skip()] * (len(load) + 1)
            try:
                meta = media.read_meta(file_path(file))
                if meta.get("engine") != engine.name:
                    raise ValueError(f"it was made by the {meta.get('engine', 'unknown')} engine, not {engine.label}")
                req = engine.request_from_settings(meta["settings"])
                load_preset(req.preset)
            except (ValueError, KeyError, TypeError) as e:
                raise user_error(ValueError(f"Could not load settings: {e}")) from None
            values = [list(v) if isinstance(v := getattr(req, f), tuple) else v for _, f in load]
            stored = any(meta["settings"].get(k) for k in engine.image_fields)
            mode = f" ({req.mode})" if hasattr(req, "mode") else ""
            extra = f" Upload the {images_named} again: images are not stored in the PNG." if stored else ""
            return values + [f"Settings loaded{mode}." + extra]

        self.load_settings = load_settings            # the History tab loads a kept run's PNG through it
        self.load_targets = [self.inputs[w] for w, _ in load] + [self.load_note]
        self.load_file.upload(load_settings, [self.load_file], [self.inputs[w] for w, _ in load] + [self.load_note],
                              api_name=f"{self.name}_load")

    def _wire_preset(self, keys: list[str], extra: Callable | None, extra_outputs: list) -> None:
        def apply_preset(name):
            try:
                p = load_preset(name)
            except ValueError as e:
                raise user_error(e) from None
            return preset_values(self.engine, p, keys) + (list(extra(p)) if extra else [])

        self.inputs["preset"].change(apply_preset, [self.inputs["preset"]],
                                     [self.inputs[k] for k in keys] + extra_outputs, api_name=False)
