"""The app through its own client API, over a real socket: what a browser user does, minus the browser."""
import time

import pytest
from PIL import Image

from pipelines import media
from tests.conftest import reload_page, shown, wait_for_outputs


@pytest.fixture(scope="module")
def client(served_app, tmp_path_factory):
    from gradio_client import Client

    return Client(served_app.demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def args(prompt="a red circle:1 | on a blue background:0.5", preset="shapes", width=32, iterations=6, seed=0):
    # preset, prompt, seed, width, height, iterations, preview_every, targets, target_weights, init_image,
    # init_weight, noise_seeds, noise_weights, lr, optimiser, cutn, cut_pow, cut_method, augments, change_every, precision, fps
    return [preset, prompt, seed, width, 32, iterations, 2, None, "", None, 0, "", "", 0.1, "Adam", 4, 1.0, "latest",
            ["Af", "Pe"], 0, "auto", 10]


def test_endpoints(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/vqgan_clip", "/vqgan_clip_stop", "/vqgan_clip_load", "/vqgan_clip_resume", "/models_status"} <= set(names)


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


def test_load_settings_from_png(client, tmp_path):
    from gradio_client import handle_file

    outs = list(client.submit(*args(seed=42, iterations=4), api_name="/vqgan_clip"))
    png = [f for f in outs[-1][4] if f.endswith(".png")][0]
    values = client.predict(handle_file(png), api_name="/vqgan_clip_load")
    assert values[0] == "shapes" and values[1] == "a red circle:1 | on a blue background:0.5"
    assert values[2] == 42 and values[5] == 4 and "loaded" in values[-1]


def test_stop_ends_the_run_and_keeps_the_picture(client):
    job = client.submit(*args(iterations=400), api_name="/vqgan_clip")
    wait_for_outputs(job, 2)
    client.predict(api_name="/vqgan_clip_stop")
    t_stop = time.time()
    final = job.result(timeout=60)
    assert time.time() - t_stop < 15
    assert final[1].startswith("**Stopped**")
    done = final[5]["iterations_done"]
    assert 1 <= done < 400 and final[5]["stopped"] is True
    assert any(f.endswith(".mp4") for f in final[4]) and Image.open(final[2]).size == (256, 256)


def test_a_reloaded_page_finds_its_run_again(client, tmp_path):
    """The page that started a run goes away; a new page of the same browser follows it to its end."""
    browser = "0123456789abcdef"
    job = client.submit(*args(iterations=400), browser, api_name="/vqgan_clip")
    page = reload_page(client, job, tmp_path, after_outputs=2)   # the first page goes: the run goes on
    stranger = list(page.submit("fedcba9876543210", api_name="/vqgan_clip_resume"))
    assert not any(shown(o[0]) for o in stranger)     # another browser sees nothing of it
    resumed = page.submit(browser, api_name="/vqgan_clip_resume")
    wait_for_outputs(resumed, 2)
    first = resumed.outputs()[0]
    assert shown(first[0]) and first[1].startswith("**Iteration")   # the latest preview at once, then live ones
    page.predict(browser, api_name="/vqgan_clip_stop")
    final = resumed.result(timeout=60)
    assert final[1].startswith("**Stopped**") and final[5]["iterations_done"] > 2
    assert any(f.endswith(".mp4") for f in final[4])


@pytest.mark.parametrize("kw, words", [
    (dict(prompt=""), "Enter a prompt"),
    (dict(prompt="a:b:c"), "not a number"),
    (dict(width=30), "multiple of 4"),
    (dict(width=0), "Width"),
    (dict(iterations=0), "Iterations"),
])
def test_bad_input_is_a_clear_message_and_the_server_lives(client, kw, words):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=words):
        client.predict(*args(**kw), api_name="/vqgan_clip")
    assert client.predict(api_name="/models_status").startswith("Device")


def test_hub_preset_offline_says_so_at_once(client):
    from gradio_client.exceptions import AppError

    t0 = time.time()
    with pytest.raises(AppError, match="cannot be reached"):
        client.predict(*args(preset="imagenet", width=256), api_name="/vqgan_clip")
    assert time.time() - t0 < 10


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
    a = args()
    a[7] = [handle_file(str(path))]  # as a target image
    with pytest.raises(AppError, match=words):
        client.predict(*a, api_name="/vqgan_clip")
    a = args()
    a[9] = handle_file(str(path))  # as the init image
    with pytest.raises(AppError, match=words):
        client.predict(*a, api_name="/vqgan_clip")


def test_target_weight_that_is_not_a_number(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / "target.png"
    Image.new("RGB", (32, 32), (220, 38, 38)).save(path)
    a = args()
    a[7], a[8] = [handle_file(str(path))], "heavy"
    with pytest.raises(AppError, match="'heavy' of target image 1 is not a number"):
        client.predict(*a, api_name="/vqgan_clip")
