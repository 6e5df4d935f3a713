"""The diffusion tab through the app's client API, over a real socket (what every tab does: tests/test_tabs.py)."""

import pytest
from PIL import Image

from pipelines import media
from tests.conftest import api_args, shown


def args(init=None, **kw):
    return api_args("diffusion", **{"prompt": "a small green square to the left of a large purple cross", "steps": 4,
                                     "preview_every": 1, "guidance": 3.0, "sampler": "DPM-Solver++", "seed": 0,
                                     "init_image": init, **kw})


def _image(item):
    """A gallery item as the client returns it: a path, or {"image": path or {"path": ...}}."""
    if isinstance(item, dict):
        item = item.get("image", item)
        item = item.get("path", item) if isinstance(item, dict) else item
    return item


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


def test_image_to_image_from_an_upload(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "init.png"
    Image.new("RGB", (48, 48), (35, 85, 220)).save(path)
    outs = list(client.submit(*args(steps=10, init=handle_file(str(path)), strength=0.5), api_name="/diffusion"))
    assert outs[-1][7]["steps_total"] == 5 and outs[-1][7]["settings"]["init_image"]


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

