"""The History tab: this browser's runs, kept on disk across restarts (pipelines/history.py).

Every finished or stopped run of a browser lands here (`after_run`, called by the Tab scaffold when
the recorder has written the run's files): a gallery, newest first, with how much of the history's
disk cap it uses; the selected run's settings and the runs it was made from ("made from ... ←
..."); Load settings (into the engine's tab, switching to it; pictures it was made from that are
still in the history go back into their fields), Download, Delete, and Send to another tab.

A history that cannot keep a run (disk full, folder not writable) says so in the run's status
line; the run's result is shown as always. Items that cannot be read are skipped and counted.
"""
from __future__ import annotations

from datetime import datetime

import gradio as gr

from pipelines import history
from pipelines.engines import ENGINES
from ui import relay
from ui.common import owner_of

# where a loaded unCLIP run is shown: the inner tab of its mode
MODE_WIDGET = {"unclip": {"text": "prompt", "variations": "vary_image", "interpolate": "prompt_a"}}


def keeps(owner: str | None) -> bool:
    """Runs of a browser are kept (API clients without a browser id are not: no page could show them)."""
    return isinstance(owner, str) and owner.startswith("browser-")


def after_run(tab, owner: str | None, ev, rec, frames=None) -> str:
    """Keep a finished (or stopped) run in the owner's history and as Send to's source; returns what the
    status line adds (empty, or one sentence when the history could not keep it or pruned the oldest).

    The run's video frames (`frames`, else the recording's own `rec.frames`) are kept too, in the item's
    `frames/` folder: what re-exporting a kept run's video reads."""
    pictures = [ps[0] for ps in rec.pictures]
    relay.remember(owner, tab.name, pictures)
    if not keeps(owner) or not pictures:
        return ""
    if frames is None:
        frames = getattr(rec, "frames", None)   # the recording's video frames (media.frames), to re-export it
    try:
        added = history.store().add(owner, ev.meta, rec.files, pictures=pictures, shown=rec.shown,
                                    stopped=ev.stopped, frames=frames, fps=getattr(rec, "fps", None))
    except Exception as e:  # noqa: BLE001 - the run's result is shown whatever happens to its copy
        return f" History could not keep this run: {e}."
    if added.error:
        return " " + added.error
    relay.remember(owner, tab.name, pictures, added.item.id)
    mine = [p for p in added.pruned if p.owner == history.owner_key(owner)]
    if mine:
        n = len(mine)
        return (f" History reached its limit of {history.human_mb(history.store().cap_bytes)}: "
                f"{'the oldest run was' if n == 1 else f'the {n} oldest runs were'} removed.")
    return ""


def _label(engine: str) -> str:
    return ENGINES[engine].label if engine in ENGINES else (engine or "unknown")


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def usage_line(listing: history.Listing, owner: str) -> str:
    store = history.store()
    if listing.error:
        return listing.error
    n, size = len(listing.items), sum(it.bytes for it in listing.items)
    cap = history.human_mb(store.cap_bytes)
    line = (f"{n} run{'s' if n != 1 else ''}, {history.human_mb(size)} of {cap}; the oldest are removed beyond that."
            if n else f"No runs yet: every run this browser makes lands here (up to {cap} in all).")
    if listing.skipped:
        line += (f" {listing.skipped} item{'s' if listing.skipped != 1 else ''} could not be read and "
                 f"{'are' if listing.skipped != 1 else 'is'} not shown.")
    return line


def _parent_text(p: dict) -> str:
    what = f"{_label(p.get('engine', ''))} run `{p.get('run_id') or 'unknown'}`"
    bits = []
    if p.get("prompt"):
        bits.append(f"“{p['prompt']}”")
    if p.get("seed") is not None:
        bits.append(f"seed {p['seed']}")
    if not p.get("in_history"):
        bits.append("not in this history")
    return what + (f" ({', '.join(bits)})" if bits else "")


def _field_label(engine: str, field: str) -> str:
    """`targets[1]` -> "image prompt 2", `vary_image` -> "picture to vary" (the Send to targets' words)."""
    name, _, k = field.partition("[")
    label = next((t.label for t in relay.TARGETS if t.engine == engine and t.widget == name), name.replace("_", " "))
    return f"{label} {int(k.rstrip(']')) + 1}" if k.rstrip("]").isdigit() else label


def _caption(item: history.Item) -> str:
    what = item.prompt[:40] or (item.meta.get("settings") or {}).get("mode", "") or "no prompt"
    return f"{_label(item.engine)} · {what}" + (" · stopped" if item.stopped else "")


def details(item: history.Item, owner: str) -> str:
    n = len(item.pictures) or len(item.shown)
    lines = [f"**{_label(item.engine)}** run `{item.id}` · {_when(item.time)} · {n} picture{'s' if n != 1 else ''}"
             f" · {history.human_mb(item.bytes)}" + (" · **stopped**" if item.stopped else "")]
    if item.prompt:
        lines.append(f"*{item.prompt}*")
    for field, line in history.store().chain(owner, item).items():
        lines.append(f"{_field_label(item.engine, field).capitalize()}: made from "
                     + " ← ".join(_parent_text(p) for p in line))
    return "\n\n".join(lines)


def build(runs, wiring: relay.Wiring | None = None) -> gr.Tab | None:
    """The History tab's widgets and handlers; call inside its `gr.Tab`, after every engine tab (and `relay.wire`)."""
    tabs = relay.tabs_of(runs)
    wiring = wiring or relay.Wiring(runs)
    with gr.Row():
        with gr.Column(scale=5):
            usage = gr.Markdown("", elem_id="his_usage")
            gallery = gr.Gallery(label="This browser's runs, newest first", columns=4, object_fit="contain",
                                 interactive=False, allow_preview=False, elem_id="his_gallery", elem_classes="crisp")
            refresh = gr.Button("Refresh", size="sm", elem_id="his_refresh")
        with gr.Column(scale=4):
            info = gr.Markdown("Select a run to see its settings and where it came from.", elem_id="his_details")
            with gr.Row():
                load_btn = gr.Button("Load settings", elem_id="his_load")
                download_btn = gr.Button("Download", elem_id="his_download")
                delete_btn = gr.Button("Delete", variant="stop", elem_id="his_delete")
            with gr.Row():
                send_choice = gr.Dropdown([t.menu for t in relay.targets()], value=None, label="Send the picture to",
                                          elem_id="his_send_to", scale=3)
                send_btn = gr.Button("Send", elem_id="his_send", scale=1)
            note = gr.Markdown("", elem_id="his_note")
            files = gr.File(label="The run's files", file_count="multiple", interactive=False, elem_id="his_files")
            settings = gr.JSON(label="Settings", elem_id="his_settings")
    ids = gr.State([])          # item ids in the gallery's order
    selected = gr.State(None)   # the selected item's id

    def listing_values(owner, keep_id=None):
        store = history.store()
        listing = store.list(owner)
        shown, order = [], []
        for it in listing.items:
            thumb = it.thumbnail()
            if thumb is None or not thumb.exists():
                continue
            try:
                shown.append((relay.servable(thumb, it.id), _caption(it)))
            except ValueError:
                continue
            order.append(it.id)
        keep = keep_id if keep_id in order else None
        return shown, order, usage_line(listing, owner), keep

    def show_list(item_id, client_id, request: gr.Request):
        """The gallery again; the selected run stays selected while it is there."""
        owner = owner_of(client_id, request)
        shown, order, line, keep = listing_values(owner, item_id)
        if keep is not None or not item_id:        # nothing selected, or still there: the details stay
            return shown, order, line, gr.skip(), gr.skip(), gr.skip()
        return shown, order, line, None, "Select a run to see its settings and where it came from.", None

    list_outputs = [gallery, ids, usage, selected, info, settings]
    refresh.click(show_list, [selected, runs.client], list_outputs, api_name=False, concurrency_limit=None)
    tab = _enclosing_tab(gallery)
    if tab is not None:
        tab.select(show_list, [selected, runs.client], list_outputs, api_name=False, concurrency_limit=None)
    for t in tabs.values():              # after each run: its result appearing means it was kept
        if "final" in t.outputs:
            t.outputs["final"].change(show_list, [selected, runs.client], list_outputs, api_name=False,
                                      concurrency_limit=None, show_progress="hidden")

    def pick(order, client_id, evt: gr.SelectData, request: gr.Request):
        owner = owner_of(client_id, request)
        k = evt.index if isinstance(evt.index, int) else -1
        item = history.store().get(owner, order[k]) if 0 <= k < len(order) else None
        if item is None:
            return None, "That run is no longer in the history: press Refresh.", None
        return item.id, details(item, owner), item.meta

    gallery.select(pick, [ids, runs.client], [selected, info, settings], api_name=False, concurrency_limit=None)

    def the_item(owner, item_id) -> history.Item:
        if not item_id:
            raise ValueError("Select a run in the gallery first.")
        item = history.store().get(owner, item_id)
        if item is None:
            raise ValueError("That run is no longer in the history (deleted, pruned or unreadable): press Refresh.")
        return item

    def download(item_id, client_id, request: gr.Request):
        owner = owner_of(client_id, request)
        try:
            item = the_item(owner, item_id)
            paths = [relay.servable(p, item.id) for p in item.paths() if p.exists()]
        except ValueError as e:
            return gr.skip(), str(e)
        missing = len(item.files) - len(paths)
        return paths, (f"{missing} of the run's files are missing from the history." if missing else
                       f"{len(paths)} files of run `{item.id}`.")

    download_btn.click(download, [selected, runs.client], [files, note], api_name=False, concurrency_limit=None)

    def delete(item_id, client_id, request: gr.Request):
        owner = owner_of(client_id, request)
        try:
            item = the_item(owner, item_id)
        except ValueError as e:
            return [gr.skip()] * len(list_outputs) + [gr.skip(), str(e)]
        gone = history.store().delete(owner, item.id)
        shown, order, line, _ = listing_values(owner)
        msg = f"Deleted run `{item.id}`." if gone else f"Run `{item.id}` could not be deleted (its folder is not writable)."
        return [shown, order, line, None, "Select a run to see its settings and where it came from.", None, None, msg]

    delete_btn.click(delete, [selected, runs.client], list_outputs + [files, note], api_name=False,
                     concurrency_limit=None)

    # Load settings: into the engine's tab through its own load logic, then switch to it
    load_outputs, slices = [], {}
    for name, t in tabs.items():
        if getattr(t, "load_targets", None) is None:
            continue
        slices[name] = (len(load_outputs), len(t.load_targets))
        load_outputs += t.load_targets
    reveal_of = {}
    for name, t in tabs.items():
        widgets = {"": t.inputs.get("prompt") or next(iter(t.inputs.values()))}
        for mode, w in MODE_WIDGET.get(name, {}).items():
            if w in t.inputs:
                widgets[mode] = t.inputs[w]
        for mode, w in widgets.items():
            reveal_of[(name, mode)] = relay.reveal(w)
    containers = []
    for r in reveal_of.values():
        containers += [c for c in r if c not in containers and c not in load_outputs]
    files_out = [w for w in wiring.outputs if not isinstance(w, (gr.Tabs, gr.Accordion)) and w not in load_outputs]
    load_all = load_outputs + containers + files_out + [note]

    def load(item_id, client_id, request: gr.Request):
        owner = owner_of(client_id, request)
        out = [gr.skip()] * len(load_all)
        try:
            item = the_item(owner, item_id)
            if item.engine not in slices:
                raise ValueError(f"There is no {_label(item.engine)} tab to load it into.")
            png = item.picture(0)
            if png is None or not png.exists():
                raise ValueError("That run's PNG is missing from the history.")
        except ValueError as e:
            out[-1] = str(e)
            return out
        start, n = slices[item.engine]
        values = tabs[item.engine].load_settings(str(png))    # a gr.Error when the settings cannot be read
        out[start:start + n] = values
        mode = (item.meta.get("settings") or {}).get("mode", "")
        for c, update in reveal_of.get((item.engine, mode), reveal_of[(item.engine, "")]).items():
            out[load_all.index(c)] = dict(update)
        # the pictures it was made from, where the history still has them, go back into their fields
        back = restore_parents(owner, item, tabs[item.engine], files_out)
        for w, v in back.items():
            out[load_all.index(w)] = v
        # the tab's own note says whether images must be uploaded again; say what came back
        note_i = start + n - 1
        if back and isinstance(out[note_i], str):
            out[note_i] = out[note_i].split(" Upload the")[0] + " The pictures it was made from were put back."
        out[-1] = f"Loaded the settings of run `{item.id}` into {_label(item.engine)}."
        return out

    load_btn.click(load, [selected, runs.client], load_all, api_name=False, concurrency_limit=None)

    def from_history(owner, item_id):
        item = the_item(owner, item_id)
        png = item.picture(0)
        if png is None or not png.exists():
            raise ValueError("That run has no picture in the history.")
        return relay.servable(png, item.id), f"the first picture of run {item.id}"

    send_btn.click(relay.send_handler(wiring, from_history), [send_choice, selected, *wiring.many, runs.client],
                   wiring.outputs + [note], api_name=False, concurrency_limit=None)
    return tab


def restore_parents(owner: str, item: history.Item, tab, widgets: list) -> dict:
    """Widget -> value: each of the item's parents still in the history, back in the field it was uploaded to."""
    out: dict = {}
    store = history.store()
    for field, parent in item.parents.items():
        name, _, k = field.partition("[")
        widget = tab.inputs.get(name)
        if widget is None or widget not in widgets or not isinstance(parent, dict):
            continue
        found = store.get(owner, parent.get("run_id") or "")
        png = found.picture(int(parent.get("batch_index") or 0)) if found else None
        if png is None or not png.exists():
            continue
        try:
            path = relay.servable(png, found.id)
        except ValueError:
            continue
        if k:
            out.setdefault(widget, []).append(path)
        else:
            out[widget] = path
    return out


def _enclosing_tab(widget) -> gr.Tab | None:
    node = getattr(widget, "parent", None)
    while node is not None and not isinstance(node, gr.Tab):
        node = getattr(node, "parent", None)
    return node

