"""The run history (pipelines/history.py) and Send to (ui/relay.py): kept on disk across restarts, capped and
pruned, robust to a deleted, full or unwritable folder and to corrupt items; a run started from an Atelier PNG
names its parent in its PNG settings."""
from __future__ import annotations

import errno
import json
import shutil

import pytest
from PIL import Image

from pipelines import history, media
from pipelines.engines import ENGINES
from pipelines.history import History
from tests.conftest import QUICK, api_args, outputs_of

OWNER = "browser-0123456789abcdef0123456789abcdef"


def _run_files(folder, name, meta, kb=0):
    """What a recorder leaves: a PNG with its settings, an enlarged copy, an mp4 of `kb` KB."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (32, 32), (200, 30, 30))
    pngs = media.save_png(img, folder / f"{name}.png", meta, enlarged_min_side=256)
    video = folder / f"{name}.mp4"
    video.write_bytes(b"\0" * (kb * 1024))
    return pngs, video


def _add(store, tmp_path, name, *, kb=0, owner=OWNER, parents=None, **meta):
    meta = {"engine": "diffusion", "settings": {"prompt": f"prompt {name}", "seed": 1}, "stopped": False,
            **history.run_meta(parents), **meta}
    pngs, video = _run_files(tmp_path / "out" / name, name, meta, kb)
    return store.add(owner, meta, [*map(str, pngs), str(video)], pictures=[pngs[0]], shown=[pngs[-1]])


def test_add_list_get_delete(tmp_path):
    store = History(tmp_path / "h", cap_mb=50)
    first = _add(store, tmp_path, "one")
    second = _add(store, tmp_path, "two", stopped=True)
    assert first.error is None and second.error is None and not first.pruned
    listing = store.list(OWNER)
    assert [it.id for it in listing.items] == [second.item.id, first.item.id]     # newest first
    item = listing.items[0]
    assert item.engine == "diffusion" and item.prompt == "prompt two" and item.stopped
    assert all(p.exists() for p in item.paths()) and len(item.files) == 3
    assert media.read_meta(item.picture(0))["run_id"] == item.id                    # the item is the run
    assert item.thumbnail().name.endswith("_x8.png")
    assert store.list("browser-someoneelse").items == []                            # per browser
    assert store.delete(OWNER, first.item.id) and not store.delete(OWNER, first.item.id)
    assert [it.id for it in store.list(OWNER).items] == [second.item.id]
    assert store.get(OWNER, "../../etc") is None


def test_a_restart_finds_the_items(tmp_path):
    added = _add(History(tmp_path / "h"), tmp_path, "kept")
    again = History(tmp_path / "h")                  # a new process on the same folder
    assert [it.id for it in again.list(OWNER).items] == [added.item.id]
    assert again.get(OWNER, added.item.id).meta["settings"]["prompt"] == "prompt kept"


def test_the_cap_prunes_the_oldest_and_says_which(tmp_path):
    store = History(tmp_path / "h", cap_mb=0.2)      # about 200 KB: three runs of 60 KB fit
    ids = [_add(store, tmp_path, f"r{k}", kb=60).item.id for k in range(3)]
    assert len(store.list(OWNER).items) == 3
    fourth = _add(store, tmp_path, "r3", kb=60)
    assert fourth.error is None and [p.id for p in fourth.pruned] == [ids[0]]
    assert [it.id for it in store.list(OWNER).items] == [fourth.item.id, ids[2], ids[1]]
    assert store.usage()[1] <= store.cap_bytes
    too_big = _add(store, tmp_path, "huge", kb=400)   # more than the whole cap: not kept, nothing pruned
    assert too_big.item is None and "more than the history's limit" in too_big.error
    assert len(store.list(OWNER).items) == 3


def test_a_deleted_history_folder_is_made_again(tmp_path):
    store = History(tmp_path / "h")
    _add(store, tmp_path, "a")
    shutil.rmtree(tmp_path / "h")
    assert store.list(OWNER).items == []
    added = _add(store, tmp_path, "b")
    assert added.error is None and [it.id for it in store.list(OWNER).items] == [added.item.id]


def test_corrupt_items_are_skipped_and_counted(tmp_path):
    store = History(tmp_path / "h")
    good = _add(store, tmp_path, "good").item
    bad = _add(store, tmp_path, "bad").item
    (bad.folder / "item.json").write_text("{ not json")
    odd = bad.folder.parent / "abcdef012345"
    odd.mkdir()
    (odd / "item.json").write_text(json.dumps({"id": "abcdef012345", "files": ["../../escape"]}))
    listing = store.list(OWNER)
    assert [it.id for it in listing.items] == [good.id] and listing.skipped == 2
    assert store.get(OWNER, bad.id) is None


def test_an_unwritable_or_full_history_says_so_and_raises_nothing(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    added = _add(History(blocker / "h"), tmp_path, "x")             # the folder cannot be made
    assert added.item is None and added.error.startswith("History could not keep this run")

    store = History(tmp_path / "h")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    added = _add(store, tmp_path, "y")
    assert added.item is None and "the disk is full" in added.error
    assert not list((tmp_path / "h").glob("*/.part-*"))              # no half-written item left
    monkeypatch.undo()
    assert _add(store, tmp_path, "z").error is None


def test_frames_are_kept_when_given(tmp_path):
    store = History(tmp_path / "h")
    frames = [Image.new("RGB", (8, 8), (k * 40, 0, 0)) for k in range(4)]
    meta = {"engine": "vqgan_clip", "settings": {"prompt": "p"}, **history.run_meta()}
    pngs, video = _run_files(tmp_path / "out", "f", meta)
    item = store.add(OWNER, meta, [pngs[0], video], pictures=[pngs[0]], frames=frames, fps=12).item
    assert item.frames == 4 and len(list(item.frames_folder.glob("*.png"))) == 4
    from pipelines.media.frames import load_frames

    back, info = load_frames(item.frames_folder)
    assert len(back) == 4 and info["fps"] == 12


def test_parents_come_from_atelier_pngs_and_the_chain_follows_them(tmp_path):
    store = History(tmp_path / "h")
    a = _add(store, tmp_path, "a").item
    parent = history.parents_of({"init_image": str(a.picture(0))})["init_image"]
    assert parent == {"run_id": a.id, "engine": "diffusion", "prompt": "prompt a", "seed": 1}
    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain)
    assert history.parents_of({"init_image": str(plain), "targets": [str(plain), str(a.picture(0))],
                               "empty": None}) == {"targets[1]": parent}
    b = _add(store, tmp_path, "b", parents={"init_image": parent}).item
    c = _add(store, tmp_path, "c", parents={"image_a": history.parent_of(b.picture(0))}).item
    line = store.chain(OWNER, c)["image_a"]
    assert [p["run_id"] for p in line] == [b.id, a.id] and all(p["in_history"] for p in line)
    store.delete(OWNER, a.id)
    assert [p["in_history"] for p in store.chain(OWNER, c)["image_a"]] == [True, False]


def test_send_to_refuses_what_a_target_cannot_take(tmp_path):
    from ui import relay

    wide, tiny, square = tmp_path / "wide.png", tmp_path / "tiny.png", tmp_path / "square.png"
    Image.new("RGB", (64, 32)).save(wide)
    Image.new("RGB", (4, 4)).save(tiny)
    Image.new("RGBA", (32, 32)).save(square)
    assert relay.accepts(wide, "DALL-E: image to complete") == "The image to complete must be square (it is 64x32)."
    assert relay.accepts(wide, "Diffusion: init image") is None                    # within 4:1, cropped
    assert "at least 8 pixels" in relay.accepts(tiny, "unCLIP: picture to vary")
    for menu in [t.menu for t in relay.targets()]:
        assert relay.accepts(square, menu) is None, menu


def test_send_to_refuses_a_picture_a_target_cannot_take(tmp_path):
    """The handler itself: a picture DALL-E's completion cannot take (not square) is one sentence, nothing sent."""
    from PIL import Image

    from pipelines.registry import Registry
    from ui import relay
    from ui.app import build_demo

    demo = build_demo(Registry(device="cpu"))
    wiring = relay.Wiring(demo.store)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (64, 32)).save(wide)
    send = relay.send_handler(wiring, lambda owner, index: (str(wide), "a wide picture"))
    out = send("DALL-E: image to complete", 0, *[None] * len(wiring.many), "", None)
    assert out[-1] == "**Not sent.** The image to complete must be square (it is 64x32)."
    assert all(v == {"__type__": "update"} for v in out[:-1])            # nothing changed, nothing cleared
    ok = send("Diffusion: init image", 0, *[None] * len(wiring.many), "", None)
    assert ok[-1] == "Sent a wide picture to Diffusion: init image." and str(wide) in ok
    assert send(None, 0, *[None] * len(wiring.many), "", None)[-1] == "Choose where to send the picture."


def test_load_settings_puts_back_the_pictures_a_run_was_made_from(tmp_path, monkeypatch):
    """ui/history.py: a kept run's parents still in the history go back into the fields they were uploaded to."""
    from types import SimpleNamespace

    from ui import history as history_tab

    monkeypatch.setenv("ATELIER_HISTORY_DIR", str(tmp_path / "h"))
    store = history.store()
    a = _add(store, tmp_path, "a").item
    b = _add(store, tmp_path, "b").item
    parents = {"init_image": history.parent_of(a.picture(0)), "targets[0]": history.parent_of(b.picture(0)),
               "targets[1]": history.parent_of(a.picture(0)), "noise": {"run_id": "feedfacecafe"}}
    child = _add(store, tmp_path, "c", parents=parents).item
    tab = SimpleNamespace(inputs={"init_image": "INIT", "targets": "TARGETS", "prompt": "PROMPT"})
    back = history_tab.restore_parents(OWNER, child, tab, ["INIT", "TARGETS"])
    assert set(back) == {"INIT", "TARGETS"} and len(back["TARGETS"]) == 2
    assert media.read_meta(back["INIT"])["run_id"] == a.id
    assert [media.read_meta(p)["run_id"] for p in back["TARGETS"]] == [b.id, a.id]
    text = history_tab.details(child, OWNER)
    assert f"Init image: made from Diffusion run `{a.id}` (“prompt a”, seed 1)" in text
    assert "made from unknown run `feedfacecafe` (not in this history)" in text


# --- through the app: a browser's runs land in its history; a run from another run's PNG names its parent ---
@pytest.fixture
def history_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_HISTORY_DIR", str(tmp_path / "history"))
    return tmp_path / "history"


def test_a_browser_run_lands_in_history_and_its_child_names_it(client, history_dir):
    from gradio_client import handle_file

    browser = OWNER.removeprefix("browser-")
    vq, dif = outputs_of("vqgan_clip"), outputs_of("diffusion")
    first = client.predict(*api_args("vqgan_clip", prompt="a red circle", seed=3, **QUICK["vqgan_clip"]), browser,
                           api_name="/vqgan_clip")
    assert first[vq["status"]].startswith("**Done**")
    run_id = first[vq["settings"]]["run_id"]
    png = next(f for f in first[vq["files"]] if f.endswith(".png"))
    assert media.read_meta(png)["run_id"] == run_id

    store = history.store()
    assert store.root == history_dir and [it.id for it in store.list(OWNER).items] == [run_id]

    child = client.predict(*api_args("diffusion", prompt="a blue star", init_image=handle_file(png), strength=0.5,
                                     **QUICK["diffusion"]), browser, api_name="/diffusion")
    meta = media.read_meta(next(f for f in child[dif["files"]] if f.endswith(".png")))
    assert meta["parents"]["init_image"] == {"run_id": run_id, "engine": "vqgan_clip", "prompt": "a red circle",
                                             "seed": 3}
    req = ENGINES["diffusion"].request_from_settings(meta["settings"])     # parents do not get in the way
    assert req.prompt == "a blue star"
    items = store.list(OWNER).items
    assert [it.id for it in items] == [meta["run_id"], run_id]
    assert store.chain(OWNER, items[0])["init_image"][0]["run_id"] == run_id

    # an API client without a browser id keeps nothing
    client.predict(*api_args("dalle", prompt="a red circle", **QUICK["dalle"]), api_name="/dalle")
    assert len(store.list(OWNER).items) == 2 and store.usage()[0] == 2
