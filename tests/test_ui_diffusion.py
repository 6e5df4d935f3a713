"""The diffusion tab through the app's client API over a real socket, as tests/test_ui.py does for VQGAN+CLIP."""
import time

import pytest
from PIL import Image

from pipelines import media
from tests.conftest import reload_page, shown, wait_for_outputs
from tests.test_ui import client  # noqa: F401  (the app on a free port, one per module)


def args(prompt="a small green square to the left of a large purple cross", preset="shapes", steps=4, batch=1,
         seed=0, guidance=3.0, sampler="DPM-Solver++", init=None, strength=0.75, preview_every=1):
    # preset, prompt, negative, sampler, steps, guidance, eta, seed, batch, init_image, strength, preview_every, fps
    return [preset, prompt, "", sampler, steps, guidance, 0.0, seed, batch, init, strength, preview_every, 10]


def _image(item):
    """A gallery item as the client returns it: a path, or {"image": path or {"path": ...}}."""
    if isinstance(item, dict):
        item = item.get("image", item)
        item = item.get("path", item) if isinstance(item, dict) else item
    return item


def test_endpoints(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/diffusion", "/diffusion_stop", "/diffusion_load", "/diffusion_resume"} <= set(names)


def test_run_streams_x_t_and_x0_and_ends_with_pictures_strip_and_video(client):
    outs = list(client.submit(*args(batch=2), api_name="/diffusion"))
    previews = [o for o in outs if shown(o[0]) and shown(o[1])]
    assert len(previews) >= 4  # x_t and x0 at every one of the 4 steps
    x_t, x0, status, gallery, strip, video, files, settings = outs[-1]
    assert status.startswith("**Done**") and "4 of 4 steps" in status
    assert len(gallery) == 2 and Image.open(_image(gallery[0])).size == (256, 256)
    assert Image.open(strip).size[1] > Image.open(strip).size[0] / 10  # two rows of previews
    assert video.endswith(".mp4")
    pngs = sorted(f for f in files if f.endswith(".png"))
    assert len(pngs) == 5  # two pictures at true size, two enlarged, the strip
    true_size = [p for p in pngs if Image.open(p).size == (32, 32)]
    meta = media.read_meta(true_size[0])
    assert meta["settings"]["prompt"] == "a small green square to the left of a large purple cross"
    assert settings["settings"]["batch"] == 2 and settings["steps_done"] == 4


def test_load_settings_from_png(client):
    from gradio_client import handle_file

    outs = list(client.submit(*args(seed=42, steps=3, guidance=2.5, sampler="DDIM"), api_name="/diffusion"))
    png = [f for f in outs[-1][6] if f.endswith(".png") and Image.open(f).size == (32, 32)][0]
    values = client.predict(handle_file(png), api_name="/diffusion_load")
    # preset, prompt, negative, sampler, steps, guidance, eta, seed, batch, strength, preview_every, note
    assert values[0] == "shapes" and values[1].startswith("a small green square")
    assert values[3] == "DDIM" and values[4] == 3 and values[5] == 2.5 and values[7] == 42
    assert "loaded" in values[-1]


def test_image_to_image_from_an_upload(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "init.png"
    Image.new("RGB", (48, 48), (35, 85, 220)).save(path)
    outs = list(client.submit(*args(steps=10, init=handle_file(str(path)), strength=0.5), api_name="/diffusion"))
    assert outs[-1][7]["steps_total"] == 5 and outs[-1][7]["settings"]["init_image"]


def test_stop_ends_the_run_and_keeps_the_picture(client):
    job = client.submit(*args(steps=1000, preview_every=1), api_name="/diffusion")
    wait_for_outputs(job, 2)
    client.predict(api_name="/diffusion_stop")
    t_stop = time.time()
    final = job.result(timeout=60)
    assert time.time() - t_stop < 15
    assert final[2].startswith("**Stopped**") and final[7]["stopped"] is True
    assert 1 <= final[7]["steps_done"] < 1000 and len(final[3]) == 1 and final[5].endswith(".mp4")


@pytest.mark.parametrize("kw, words", [
    (dict(steps=0), "Steps must be a whole number from 1 to 1000"),
    (dict(steps=100000), "Steps must be a whole number from 1 to 1000"),
    (dict(guidance=-1), "Guidance scale"),
    (dict(batch=1000), "Batch size must be a whole number from 1 to 16"),
    (dict(strength=1.5), "1.5 is greater than maximum value 1|Strength must be a number from 0 to 1"),  # the slider checks first
    (dict(sampler="Euler"), "Euler"),
])
def test_bad_input_is_a_clear_message_and_the_server_lives(client, kw, words):
    from gradio_client.exceptions import AppError

    with pytest.raises((AppError, ValueError), match=words):
        client.predict(*args(**kw), api_name="/diffusion")
    assert client.predict(api_name="/models_status").startswith("Device")


@pytest.mark.parametrize("kind, words", [("odd", "sides may differ"), ("huge", "8000"), ("text", "not an image")])
def test_bad_init_images_are_clear_messages(client, tmp_path, kind, words):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / f"{kind}.png"
    if kind == "odd":
        Image.new("RGB", (400, 20)).save(path)
    elif kind == "huge":  # a valid PNG header claiming 8000x8000: refused before any pixel is decoded
        Image.new("1", (8000, 8000)).save(path, optimize=True)
    else:
        path.write_text("this is not a picture")
    with pytest.raises(AppError, match=words):
        client.predict(*args(init=handle_file(str(path))), api_name="/diffusion")


def test_hub_preset_offline_says_so_at_once(client):
    from gradio_client.exceptions import AppError

    t0 = time.time()
    with pytest.raises(AppError, match="google/ddpm-cifar10-32.*cannot be reached"):
        client.predict(*args(preset="ddpm-cifar10"), api_name="/diffusion")
    assert time.time() - t0 < 10


def test_unconditional_hub_model_runs_in_the_same_tab(client, tmp_path, monkeypatch):
    """The ddpm-cifar10 preset with a tiny stand-in in the hub cache: prompts are ignored, pictures come out."""
    from huggingface_hub import constants

    from tests.test_diffusion import make_standin

    snap = tmp_path / "models--google--ddpm-cifar10-32" / "snapshots" / ("0" * 40)
    make_standin(snap, flat=True)
    (tmp_path / "models--google--ddpm-cifar10-32" / "refs").mkdir()
    (tmp_path / "models--google--ddpm-cifar10-32" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    outs = list(client.submit(*args(preset="ddpm-cifar10", steps=3, sampler="DDIM"), api_name="/diffusion"))
    assert outs[-1][2].startswith("**Done**") and outs[-1][7]["conditional"] is False
    assert Image.open(_image(outs[-1][3][0])).size == (256, 256)


def test_a_reloaded_page_follows_its_run(client, tmp_path):
    browser = "d1ff0510aaaabbbb"
    job = client.submit(*args(steps=1000, preview_every=1), browser, api_name="/diffusion")
    page = reload_page(client, job, tmp_path, after_outputs=2)   # the page is reloaded: the run goes on
    resumed = page.submit(browser, api_name="/diffusion_resume")
    wait_for_outputs(resumed, 2)
    assert resumed.outputs()[0][0] and resumed.outputs()[0][2].startswith("**Step")
    page.predict(browser, api_name="/diffusion_stop")
    final = resumed.result(timeout=60)
    assert final[2].startswith("**Stopped**") and final[7]["steps_done"] > 1
