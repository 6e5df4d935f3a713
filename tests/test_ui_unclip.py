"""The unCLIP tab through the app's client API, over a real socket (built-in shapes weights): the prior's pick and
the decoder's steps, four variations of an upload, a video blending two prompts, Stop, bad input, load settings."""
import socket
import time

import pytest
from PIL import Image

import shapes
from pipelines import media
from tests.conftest import shown

PROMPT = "a red circle above a blue square"
SHARED = ["DDIM", 4, 2.0, "DPM-Solver++", 4, 3.0, 0, 1]   # prior sampler, steps, guidance; decoder ...; seed, preview


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    import app
    from gradio_client import Client

    app.demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(app.demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "circle.png"
    shapes.render(shapes.parse_caption("a large red circle on a blue background"), 32, 0).save(path)
    return str(path)


def text_args(prompt=PROMPT, candidates=2, batch=1, steps=4, seed=0):
    shared = list(SHARED)
    shared[4], shared[6] = steps, seed
    return ["shapes", prompt, candidates, batch, *shared, 8]


def test_endpoints(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/unclip", "/unclip_variations", "/unclip_interpolate", "/unclip_stop", "/unclip_load",
            "/unclip_resume"} <= set(names)


def test_text_to_image_shows_the_prior_pick_and_the_decoder_steps(client):
    outs = list(client.submit(*text_args(), api_name="/unclip"))
    assert any("nearest to" in (o[1] or "") for o in outs)          # the prior's estimate, by captions
    assert sum(1 for o in outs if shown(o[2])) >= 4                          # x_t previews, one per decoder step
    status, prior, x_t, x0, gallery, strip, video, files, settings = outs[-1]
    assert status.startswith("**Done**") and "prior's pick" in prior
    assert len(gallery) == 1 and video.endswith(".mp4") and Image.open(strip).width > Image.open(strip).height
    pngs = [f for f in files if f.endswith(".png")]
    assert sorted({Image.open(p).size for p in pngs})[0] == (32, 32)
    meta = media.read_meta(pngs[0])
    assert meta["engine"] == "unclip" and meta["settings"]["prompt"] == PROMPT and len(meta["prior"]) == 1


def test_four_variations_of_an_upload(client, picture):
    from gradio_client import handle_file

    outs = list(client.submit("shapes", handle_file(picture), 4, 0.5, *SHARED, 8, api_name="/unclip_variations"))
    status, prior, x_t, x0, gallery, strip, video, files, settings = outs[-1]
    assert status.startswith("**Done**") and "similarity to the source" in status
    assert settings["settings"]["strength"] == 0.5 and settings["steps_total"] == 2   # half of the 4 decoder steps
    assert len(gallery) == 4 and settings["mode"] == "variations" and len(settings["similarity_to_source"]) == 4


def test_a_video_blending_two_prompts(client):
    outs = list(client.submit("shapes", "a red circle", None, "a blue star", None, 6, *SHARED, 8,
                              api_name="/unclip_interpolate"))
    status, prior, x_t, x0, gallery, strip, video, files, settings = outs[-1]
    assert status.startswith("**Done**") and len(gallery) == 6 and video.endswith(".mp4")
    assert Image.open(strip).width > 4 * Image.open(strip).height  # six frames side by side


@pytest.mark.parametrize("a, b, frames, words", [
    ("a red circle", "a red circle", 6, "same"),
    ("a red circle", "a blue star", 0, "Frames"),
    ("a red circle", "a blue star", 10_000, "Frames"),
])
def test_bad_interpolations_are_clear_messages(client, a, b, frames, words):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=words):
        client.predict("shapes", a, None, b, None, frames, *SHARED, 8, api_name="/unclip_interpolate")


def test_an_unreadable_picture_to_vary_is_a_clear_message(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = tmp_path / "bad.png"
    bad.write_text("this is not a picture")
    with pytest.raises(AppError, match="not an image"):
        client.predict("shapes", handle_file(str(bad)), 4, 1.0, *SHARED, 8, api_name="/unclip_variations")


def test_stop_keeps_what_was_made(client):
    job = client.submit(*text_args(steps=400), api_name="/unclip")
    t0 = time.time()
    while not any(shown(o[2]) for o in job.outputs()) and time.time() - t0 < 60:   # the decoder has begun
        time.sleep(0.05)
    client.predict("", api_name="/unclip_stop")
    final = job.result(timeout=60)
    assert final[0].startswith("**Stopped**") and final[8]["stopped"] is True
    assert 1 <= final[8]["steps_done"] < 400 and len(final[4]) == 1


def test_load_settings_from_png(client):
    from gradio_client import handle_file

    outs = list(client.submit(*text_args(seed=42, candidates=3), api_name="/unclip"))
    png = [f for f in outs[-1][7] if f.endswith(".png")][0]
    values = client.predict(handle_file(png), api_name="/unclip_load")
    assert values[0] == "shapes" and values[1] == PROMPT and values[2] == PROMPT
    assert values[5] == 3 and values[7] == 1.0 and values[14] == 42 and "loaded" in values[-1]
