"""Send to: a result of one tab becomes another tab's init image, image prompt, picture to vary or to complete.

Under each tab's results (`send_box`, called by the Tab scaffold) a "Send the picture to" menu and a
Send button put the selected result's true-size PNG (the first picture, or the one clicked in the
gallery) into the target's upload field and switch to that tab, opening the accordion or inner tab
that holds the field. The History tab sends its selected run the same way (`send_handler`).

The PNG carries its run's settings and id, so the run that starts from it records it as its parent
(`pipelines.history.parents_of`, called when a run starts; a picture uploaded by hand counts too).

A target that cannot take the picture (no result yet, a picture its loader refuses: too small, too
large, not square for DALL-E's completion, too far from square elsewhere) says so in one sentence in
the note under the button; nothing is cleared.

Each tab registers itself per page (`register`, by the page's RunStore), so ui/app.py wires the
buttons once every tab exists (`wire`) and ui/history.py finds the tabs to load settings into.
"""
from __future__ import annotations

import inspect
import os
import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from pipelines import media
from pipelines.engines import ENGINES
from pipelines.validation import squarish
from ui.common import output_dir, owner_of


def _square(img, name: str) -> None:
    w, h = img.size
    if w != h:
        raise ValueError(f"The {name} must be square (it is {w}x{h}).")


@dataclass(frozen=True)
class Target:
    engine: str
    widget: str                          # the input's name in the tab (a gr.File)
    label: str
    check: Callable = lambda img, name: None   # after media.load_image: the field's own rule
    many: bool = False                   # a multiple-file field: the picture is added to those there

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.widget}"

    @property
    def menu(self) -> str:
        return f"{ENGINES[self.engine].label}: {self.label}"


TARGETS = [
    Target("vqgan_clip", "init_image", "init image"),
    Target("vqgan_clip", "targets", "image prompt", many=True),
    Target("diffusion", "init_image", "init image", squarish),
    Target("dalle", "init_image", "image to complete", _square),
    Target("unclip", "vary_image", "picture to vary", squarish),
    Target("unclip", "image_a", "interpolation start", squarish),
    Target("unclip", "image_b", "interpolation end", squarish),
]


def targets() -> list[Target]:
    return [t for t in TARGETS if t.engine in ENGINES]


def check(target: Target, path: str | os.PathLike) -> None:
    """Whether the target takes the picture: a ValueError with one sentence when it does not."""
    img = media.load_image(path, name=f"picture for {target.menu}")
    target.check(img, target.label)


# --- the pages' tabs, per RunStore (one per page) ---
_TABS: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()


def register(tab) -> None:
    _TABS.setdefault(tab.runs, {})[tab.name] = tab


def tabs_of(runs) -> dict:
    """Engine name -> Tab, for the page of this RunStore."""
    return _TABS.get(runs, {})


# --- each owner's latest result per tab: what Send sends ---
@dataclass
class Result:
    pictures: list[Path]                 # per picture its true-size PNG
    item_id: str | None = None           # its copy in the history, if kept


_LAST: OrderedDict[tuple[str, str], Result] = OrderedDict()
_LAST_LOCK = threading.Lock()
_LAST_MAX = 4096


def remember(owner: str | None, tab: str, pictures: list, item_id: str | None = None) -> None:
    if owner is None:
        return
    with _LAST_LOCK:
        _LAST[(owner, tab)] = Result([Path(p) for p in pictures], item_id)
        _LAST.move_to_end((owner, tab))
        while len(_LAST) > _LAST_MAX:
            _LAST.popitem(last=False)


def latest(owner: str, tab: str) -> Result | None:
    with _LAST_LOCK:
        return _LAST.get((owner, tab))


def servable(path: Path, tag: str) -> str:
    """A copy of a history file where Gradio may serve it from (the output folder; pruned like the runs')."""
    path = Path(path)
    if Path(output_dir()) in path.parents:
        return str(path)
    copy = output_dir() / f"h-{tag}-{path.name}"
    try:
        if copy.exists():
            os.utime(copy)
        else:
            tmp = copy.with_name(f".{copy.name}.part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, copy)
    except OSError as e:
        raise ValueError(f"That run's file could not be read ({e.strerror or e}).") from None
    return str(copy)


# --- widgets ---
def send_box(tab) -> None:
    """The Send to row under a tab's results (inside its results column)."""
    register(tab)
    with gr.Row(elem_id=f"{tab.prefix}_send_row"):
        tab.send_choice = gr.Dropdown([t.menu for t in targets()], value=None, label="Send the picture to",
                                      elem_id=f"{tab.prefix}_send_to", scale=3,
                                      info="as another tab's init image, image prompt, picture to vary or to complete")
        tab.send_button = gr.Button("Send", elem_id=f"{tab.prefix}_send", scale=1)
    tab.send_note = gr.Markdown("", elem_id=f"{tab.prefix}_send_note")
    tab.send_index = gr.State(0)
    final = tab.outputs.get("final")
    if isinstance(final, gr.Gallery):     # the picture clicked in the gallery is the one sent
        final.select(_select_index, None, tab.send_index, api_name=False, queue=False)
        final.change(lambda: 0, None, tab.send_index, api_name=False, queue=False, show_progress="hidden")


def _select_index(evt: gr.SelectData) -> int:
    return evt.index if isinstance(evt.index, int) else 0


def reveal(widget) -> dict:
    """Container -> update that shows `widget`: each enclosing accordion opened, each enclosing tab selected."""
    out = {}
    child, node = widget, getattr(widget, "parent", None)
    while node is not None:
        if isinstance(node, gr.Accordion):
            out[node] = gr.update(open=True)
        if isinstance(node, gr.Tabs) and isinstance(child, gr.Tab) and child.id is not None:
            out[node] = gr.update(selected=child.id)
        child, node = node, getattr(node, "parent", None)
    return out


class Wiring:
    """Every target's widget and the containers that reveal them: the outputs of a Send."""

    def __init__(self, runs):
        tabs = tabs_of(runs)
        self.targets = {t.menu: (t, tabs[t.engine].inputs[t.widget]) for t in targets()
                        if t.engine in tabs and t.widget in tabs[t.engine].inputs}
        self.reveals = {menu: reveal(w) for menu, (_, w) in self.targets.items()}
        widgets = [w for _, w in self.targets.values()]
        containers = []
        for r in self.reveals.values():
            containers += [c for c in r if c not in containers]
        self.outputs = widgets + containers
        self.many = [w for t, w in self.targets.values() if t.many]   # their values are inputs (added to)

    def values(self, menu: str, path: str, current: list) -> list:
        target, widget = self.targets[menu]
        shown = self.reveals[menu]
        out = []
        for w in self.outputs:
            if w is widget:
                if target.many:
                    have = current[self.many.index(w)] or []
                    have = [have] if isinstance(have, str) else list(have)
                    out.append([*(getattr(f, "name", f) for f in have), path])
                else:
                    out.append(path)
            else:
                out.append(dict(shown[w]) if w in shown else gr.skip())
        return out


def send_handler(wiring: Wiring, source: Callable[[str, Any], tuple[str, str]]):
    """A Send button's handler: `source(owner, which)` gives (the PNG to send, what it is) or raises ValueError;
    inputs are the menu, `which` (the picture's index, the history item), each many-file target's value (added
    to), the browser id."""
    n_many = len(wiring.many)

    def send(menu, which, *values):
        *current, client_id, request = values
        skip = [gr.skip()] * len(wiring.outputs)
        if not menu or menu not in wiring.targets:
            return skip + ["Choose where to send the picture."]
        target = wiring.targets[menu][0]
        try:
            path, what = source(owner_of(client_id, request), which)
            check(target, path)
        except ValueError as e:
            msg = str(e).strip()
            if not msg.endswith("."):
                msg += "."
            gr.Warning(f"{target.menu} cannot take it: {msg}")
            return skip + [f"**Not sent.** {msg}"]
        return wiring.values(menu, path, current) + [f"Sent {what} to {target.menu}."]

    # as Gradio reads it: one parameter per input, then the request (passed as the last positional value)
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
              for n in ["menu", "which", *[f"many_{k}" for k in range(n_many)], "client_id"]]
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
    send.__signature__ = inspect.Signature(params)
    send.__annotations__ = {"request": gr.Request}
    return send


def tab_source(tab) -> Callable:
    """Where a tab's Send takes its picture: the owner's latest result there, the selected one."""
    from pipelines import history

    def source(owner, index):
        res = latest(owner, tab.name)
        if res is None or not res.pictures:
            raise ValueError(f"There is no {tab.engine.label} picture to send yet: run this tab first.")
        k = index if isinstance(index, int) and 0 <= index < len(res.pictures) else 0
        path = res.pictures[k]
        if not path.exists() and res.item_id:         # the output folder was pruned: the history still has it
            item = history.store().get(owner, res.item_id)
            kept = item.picture(k) if item else None
            if kept is not None and kept.exists():
                return servable(kept, item.id), f"picture {k + 1} of this {tab.engine.label} run"
        if not path.exists():
            raise ValueError("That picture is no longer on the server; run the tab again or send it from History.")
        return str(path), f"picture {k + 1} of this {tab.engine.label} run"

    return source


def wire(runs) -> Wiring:
    """Wire every registered tab's Send button (call once every tab of the page exists)."""
    wiring = Wiring(runs)
    for tab in tabs_of(runs).values():
        if getattr(tab, "send_button", None) is None:
            continue
        tab.send_button.click(send_handler(wiring, tab_source(tab)),
                              [tab.send_choice, tab.send_index, *wiring.many, runs.client],
                              wiring.outputs + [tab.send_note], api_name=False, concurrency_limit=None)
    return wiring


def accepts(path, menu: str) -> str | None:
    """None when the target called `menu` takes the picture, else why not (for tests and other callers)."""
    target = next((t for t in targets() if t.menu == menu), None)
    if target is None:
        return f"There is no target called {menu!r}."
    try:
        check(target, path)
    except ValueError as e:
        return str(e)
    return None
