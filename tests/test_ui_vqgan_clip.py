"""The VQGAN+CLIP tab through the app's client API, over a real socket (what every tab does: tests/test_tabs.py)."""

import pytest
from PIL import Image

from pipelines import media
from tests.conftest import api_args, shown


def args(**kw):
    return api_args("vqgan_clip", **{"prompt": "a red circle:1 | on a blue background:0.5", "iterations": 6,
                                      "preview_every": 2, "cutn": 4, "seed": 0, **kw})


def test_run_streams_previews_and_ends_with_png_and_video(client):
    outs = list(client.submit(*args(), api_name="/vqgan_clip"))
    previews = [o for o in outs if shown(o[0])]
    assert len(previews) >= 3  # previews at iterations 0, 2, 4 and the final image
    preview, status, final, video, files, settings = outs[-1]
    assert status.startswith("**Done**")
    assert Image.open(final).size == (256, 256)  # shown enlarged, nearest-neighbour
    pngs = [f for f in files if f.endswith(".png")]
    assert len(pngs) == 2 and video.endswith(".mp4")
    sizes = sorted(Image.open(p).size for p in pngs)
    assert sizes == [(32, 32), (256, 256)]  # true size plus the enlarged copy
    meta = media.read_meta(pngs[0])
    assert meta["settings"]["prompt"] == "a red circle:1 | on a blue background:0.5"
    assert settings["settings"]["iterations"] == 6


def test_models_panel_lists_loaded_models(client):
    list(client.submit(*args(iterations=2), api_name="/vqgan_clip"))
    table = client.predict(api_name="/models_status")
    assert "vqgan:builtin:shapes-vqgan" in table and "clip:builtin:shapes-clip" in table and "cpu" in table


@pytest.mark.parametrize("kind, words", [("text", "not an image"), ("tiny", "at least 8 pixels"), ("huge", "8000")])
def test_bad_images_are_clear_messages(client, tmp_path, kind, words):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / f"{kind}.png"
    if kind == "text":
        path.write_text("this is not a picture")
    elif kind == "tiny":
        Image.new("RGB", (1, 1)).save(path)
    else:  # a valid PNG header claiming 8000x8000: refused before any pixel is decoded
        Image.new("1", (8000, 8000)).save(path, optimize=True)
    with pytest.raises(AppError, match=words):    # as a target image
        client.predict(*args(targets=[handle_file(str(path))]), api_name="/vqgan_clip")
    with pytest.raises(AppError, match=words):    # as the init image
        client.predict(*args(init_image=handle_file(str(path))), api_name="/vqgan_clip")


def test_target_weight_that_is_not_a_number(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / "target.png"
    Image.new("RGB", (32, 32), (220, 38, 38)).save(path)
    with pytest.raises(AppError, match="'heavy' of target image 1 is not a number"):
        client.predict(*args(targets=[handle_file(str(path))], target_weights="heavy"), api_name="/vqgan_clip")


def test_choosing_a_preset_sets_its_settings_and_the_engines_defaults_for_the_rest():
    """The shapes preset's own random starts and cutout noise do not stay on when another preset is chosen
    (ui.tab.preset_values: what a preset gives, else the engine's default); the shared ones follow the preset."""
    from pipelines.engines import ENGINES
    from pipelines.presets import load_preset
    from ui.tab import preset_values

    keys = ["starts", "starts_for", "cut_noise", "clip_2_weight", "width", "augments"]
    assert preset_values(ENGINES["vqgan_clip"], load_preset("shapes"), keys) == [4, 50, 0.03, 0.5, 32, ["Af"]]
    imagenet = load_preset("imagenet").defaults["vqgan_clip"]
    assert preset_values(ENGINES["vqgan_clip"], load_preset("imagenet"), keys) == [
        1, 50, 0.1, 1.0, imagenet["width"], list(imagenet["augments"])]


def test_a_bad_second_clip_weight_is_a_clear_message_and_the_next_run_works(client):
    """A negative weight of the second CLIP is refused in words naming the setting; the server runs on."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Second CLIP's weight must be a number from 0 to 100"):
        client.predict(*args(clip_2_weight=-1), api_name="/vqgan_clip")
    preview, status, *_ = client.predict(*args(clip_2_weight=0.5), api_name="/vqgan_clip")
    assert status.startswith("**Done**")
