"""What every tab does, checked once per engine of the table (pipelines/engines.py) through the app's client API.

Each engine's tab has a run endpoint (`/<name>`), Stop, resume after a reload and load settings;
its run ends with pictures whose PNGs carry the settings; bad values are one clear message and
the server lives. What only one tab does is tested in tests/test_ui_<name>.py.
"""
import time

import pytest
from PIL import Image

from pipelines import media
from pipelines.engines import ENGINES
from tests.conftest import QUICK, api_args, outputs_of, reload_page, shown, wait_for_outputs

NAMES = list(ENGINES)
# a run long enough to stop, per engine (a quick one: QUICK)
LONG = {"vqgan_clip": dict(iterations=400, preview_every=1, cutn=4), "diffusion": dict(steps=1000, preview_every=1),
        "dalle": dict(candidates=8), "unclip": dict(prior_steps=2, steps=400, preview_every=1)}
PROMPT = "a red circle on a blue background"


def test_the_page_has_a_tab_per_engine_with_its_endpoints(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in NAMES:
        assert {f"/{name}", f"/{name}_stop", f"/{name}_load", f"/{name}_resume"} <= set(names), name


@pytest.mark.parametrize("name", NAMES)
def test_a_run_ends_with_pictures_carrying_their_settings(client, name):
    out = outputs_of(name)
    final = client.predict(*api_args(name, prompt=PROMPT, seed=7, **QUICK[name]), api_name=f"/{name}")
    assert final[out["status"]].startswith("**Done**") and "(estimated " in final[out["status"]]
    meta = final[out["settings"]]
    assert meta["engine"] == name and meta["settings"]["prompt"] == PROMPT and meta["settings"]["seed"] == 7
    pngs = [f for f in final[out["files"]] if f.endswith(".png")]
    assert pngs and media.read_meta(pngs[0])["settings"] == meta["settings"]
    assert final[out["video"]].endswith(".mp4") and Image.open(pngs[0]).size[0] >= 32


@pytest.mark.parametrize("name", NAMES)
def test_load_settings_from_a_png_restores_the_widgets(client, name):
    from gradio_client import handle_file

    out = outputs_of(name)
    final = client.predict(*api_args(name, prompt=PROMPT, seed=42, **QUICK[name]), api_name=f"/{name}")
    png = [f for f in final[out["files"]] if f.endswith(".png")][0]
    values = client.predict(handle_file(png), api_name=f"/{name}_load")
    assert values[0] == "shapes" and values[1] == PROMPT and 42 in values and "loaded" in values[-1]


@pytest.mark.parametrize("name", NAMES)
def test_stop_ends_the_run_and_keeps_what_was_made(client, name):
    out = outputs_of(name)
    job = client.submit(*api_args(name, prompt=PROMPT, **LONG[name]), api_name=f"/{name}")
    wait_for_outputs(job, 3)
    client.predict("", api_name=f"/{name}_stop")
    t_stop = time.time()
    final = job.result(timeout=60)
    assert time.time() - t_stop < 15
    assert final[out["status"]].startswith("**Stopped**") and final[out["settings"]]["stopped"] is True
    assert any(f.endswith(".png") for f in final[out["files"]])


@pytest.mark.parametrize("name", NAMES)
def test_a_reloaded_page_finds_its_run_and_no_one_else_does(client, tmp_path, name):
    out = outputs_of(name)
    browser = "0123456789abcdef" + name.replace("_", "")
    job = client.submit(*api_args(name, prompt=PROMPT, **LONG[name]), browser, api_name=f"/{name}")
    page = reload_page(client, job, tmp_path, after_outputs=3)   # the first page goes: the run goes on
    stranger = list(page.submit("fedcba9876543210", api_name=f"/{name}_resume"))
    assert not any(shown(o[out["status"]]) for o in stranger)     # another browser sees nothing of it
    resumed = page.submit(browser, api_name=f"/{name}_resume")
    t0 = time.time()     # the latest state at once (after a note, while an earlier test's run lets go of the engine)
    while not any(str(o[out["status"]]).startswith("**") for o in resumed.outputs()) and time.time() - t0 < 60:
        time.sleep(0.05)
    assert any(str(o[out["status"]]).startswith("**") for o in resumed.outputs()), resumed.outputs()[:1]
    page.predict(browser, api_name=f"/{name}_stop")
    final = resumed.result(timeout=60)
    assert final[out["status"]].startswith(("**Stopped**", "**Done**")) and final[out["settings"]]["engine"] == name


BAD = [
    ("vqgan_clip", dict(prompt=""), "Enter a prompt"),
    ("vqgan_clip", dict(prompt="a:b:c"), "not a number"),
    ("vqgan_clip", dict(width=30), "multiple of 4"),
    ("vqgan_clip", dict(width=0), "Width"),
    ("vqgan_clip", dict(width=2048, height=2048), "Width and height may be at most 256 pixels on this CPU"),
    ("vqgan_clip", dict(iterations=0), "Iterations"),
    ("diffusion", dict(steps=0), "Steps must be a whole number from 1 to 1000"),
    ("diffusion", dict(steps=100000), "Steps must be a whole number from 1 to 1000"),
    ("diffusion", dict(guidance=-1), "Guidance scale"),
    ("diffusion", dict(batch=1000), "Batch size must be a whole number from 1 to 16"),
    ("diffusion", dict(strength=1.5), "1.5 is greater than maximum value 1|Strength must be a number from 0 to 1"),
    ("diffusion", dict(sampler="Heun"), "Heun"),
    ("diffusion", dict(width=2048, height=2048), "Width must be 0 \\(the model's size\\) or a whole number from 64"),
    ("diffusion", dict(precision="float16"), "float16 runs on a GPU only"),
    ("dalle", dict(temperature=0), "Temperature must be a number above 0"),
    ("dalle", dict(top_k=0), "Top-k must be a whole number from 1"),
    ("dalle", dict(top_k=5000), "Top-k"),
    ("dalle", dict(top_p=1.5), "Top-p must be a number above 0 and at most 1"),
    ("dalle", dict(candidates=0), "Candidates must be a whole number from 1 to 64"),
    ("dalle", dict(candidates=10000), "Candidates"),
    ("dalle", dict(prompt=""), "Enter a prompt"),
    ("unclip", dict(steps=0), "Decoder steps must be a whole number from 1 to 1000"),
    ("unclip", dict(candidates=100), "Prior samples"),
]


@pytest.mark.parametrize("name, kw, words", BAD)
def test_bad_input_is_a_clear_message_and_the_server_lives(client, name, kw, words):
    from gradio_client.exceptions import AppError

    with pytest.raises((AppError, ValueError), match=words):   # a slider's own range check is a ValueError
        client.predict(*api_args(name, **{"prompt": PROMPT, **QUICK[name], **kw}), api_name=f"/{name}")
    assert client.predict(api_name="/models_status").startswith("Device")


@pytest.mark.parametrize("name, kw, words", [
    ("vqgan_clip", dict(preset="imagenet", width=256, height=256), "cannot be reached"),
    ("diffusion", dict(preset="ddpm-cifar10"), "google/ddpm-cifar10-32.*cannot be reached"),
    ("diffusion", dict(preset="sd-turbo", steps=1), "stabilityai/sd-turbo.*cannot be reached"),
    ("unclip", dict(preset="karlo"), "cannot be reached"),
    ("dalle", dict(preset="dalle-mega"), "kuprel/min-dalle.*cannot be reached"),
])
def test_a_hub_preset_offline_says_so_at_once(served_app, client, name, kw, words):
    from gradio_client.exceptions import AppError

    served_app.registry.unload()    # nothing a test before left loaded (a stand-in of the hub model, say)
    t0 = time.time()
    with pytest.raises(AppError, match=words):
        client.predict(*api_args(name, **{"prompt": PROMPT, **QUICK[name], **kw}), api_name=f"/{name}")
    assert time.time() - t0 < 10


# the preview widget whose last picture must be the result (DALL-E's shows every candidate, the best first)
LAST_PREVIEW = {"vqgan_clip": "preview", "diffusion": "x0", "dalle": "preview", "unclip": "x0"}


@pytest.mark.parametrize("name", NAMES)
def test_the_last_preview_is_the_result(client, name):
    out, at = outputs_of(name), outputs_of(name)[LAST_PREVIEW[name]]
    kw = {**QUICK[name], **({"candidates": 1} if name == "dalle" else {})}
    outs = list(client.submit(*api_args(name, prompt=PROMPT, **kw), api_name=f"/{name}"))
    last = [o[at] for o in outs if shown(o[at])][-1]
    result = outs[-1][out["final"]]
    result = result if isinstance(result, str) else _gallery_path(result[0])
    assert Image.open(last).convert("RGB").tobytes() == Image.open(result).convert("RGB").tobytes()


@pytest.mark.parametrize("name", [n for n in NAMES if "preview_every" in ENGINES[n].fields])
def test_auto_previews_say_how_often_in_the_status(client, name):
    out = outputs_of(name)
    outs = list(client.submit(*api_args(name, prompt=PROMPT, **{**QUICK[name], "preview_every": -1}),
                              api_name=f"/{name}"))
    assert outs[-1][out["status"]].startswith("**Done**")
    assert any("(auto: under 10 % of the run)" in str(o[out["status"]]) for o in outs)


def _gallery_path(item):
    """A gallery item as the client returns it: a path, or {"image": path or {"path": ...}}."""
    if isinstance(item, dict):
        item = item.get("image", item)
        item = item.get("path", item) if isinstance(item, dict) else item
    return item


def _seed_tools(**given) -> list:
    """The values after api_args's: the browser id, then the seed tools (ui/tab.py SEED_TOOLS)."""
    from ui.tab import SEED_TOOLS

    values = {"subseed": 0, "subseed_strength": 0.0, "batch_count": 1, **given}
    return [given.get("client_id", "")] + [values[n] for n in SEED_TOOLS]


# pictures per run: a batch of 2 where the tab has one (DALL-E's candidates); VQGAN+CLIP makes one
PER_RUN = {"vqgan_clip": ({}, 1), "diffusion": ({"batch": 2}, 2), "dalle": ({"candidates": 2}, 2),
           "unclip": ({"batch": 2}, 2)}


@pytest.mark.parametrize("name", NAMES)
def test_batch_count_runs_one_after_another_with_the_next_seeds_and_reuse_gives_the_seed(client, name):
    out = outputs_of(name)
    kw, per_run = PER_RUN[name]
    outs = list(client.submit(*api_args(name, prompt=PROMPT, seed=7, **{**QUICK[name], **kw}),
                              *_seed_tools(batch_count=3), api_name=f"/{name}"))
    final = outs[-1]
    assert any(str(o[out["status"]]).startswith("**Run 2 of 3** · ") for o in outs)
    assert final[out["status"]].startswith("**Run 3 of 3** · **Done**")
    pngs = [f for f in final[out["files"]] if f.endswith(".png")]
    seeds = [media.read_meta(p)["settings"]["seed"] for p in pngs]
    assert sorted(set(seeds)) == [7, 8, 9] and seeds.count(7) == seeds.count(9)    # every run's PNGs, run by run
    assert media.read_meta(pngs[-1])["series"] == {"run": 3, "of": 3, "first_seed": 7}
    if isinstance(final[out["final"]], list):                                          # a gallery: every picture
        assert len(final[out["final"]]) == 3 * per_run
    # ♻: the seed of the result shown (a series: its first, so Run makes the series again)
    assert client.predict(final[out["settings"]], api_name=f"/{name}_reuse_seed") == 7
    single = client.predict(*api_args(name, prompt=PROMPT, seed=11, **QUICK[name]), api_name=f"/{name}")
    assert client.predict(single[out["settings"]], api_name=f"/{name}_reuse_seed") == 11


def test_stop_ends_the_whole_series(client):
    out = outputs_of("diffusion")
    job = client.submit(*api_args("diffusion", prompt=PROMPT, **LONG["diffusion"]), *_seed_tools(batch_count=4),
                        api_name="/diffusion")
    wait_for_outputs(job, 3)
    client.predict("", api_name="/diffusion_stop")
    final = job.result(timeout=60)
    assert final[out["status"]].startswith("**Run 1 of 4** · **Stopped**")
    assert not any("Run 2" in str(o[out["status"]]) for o in job.outputs())


def test_a_bad_batch_count_or_subseed_is_a_clear_message(client):
    from gradio_client.exceptions import AppError

    args = api_args("diffusion", prompt=PROMPT, **QUICK["diffusion"])
    with pytest.raises(AppError, match="Batch count must be a whole number from 1 to 16"):
        client.predict(*args, *_seed_tools(batch_count=17), api_name="/diffusion")
    with pytest.raises(AppError, match="Subseed must be a whole number from 0"):
        client.predict(*args, *_seed_tools(subseed=-3), api_name="/diffusion")
