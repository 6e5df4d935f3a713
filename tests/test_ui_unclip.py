"""The unCLIP tab through the app's client API, over a real socket (built-in shapes weights): the prior's pick and
the decoder's steps, four variations of an upload, a video blending two prompts, Stop, bad input, load settings."""

import pytest
from PIL import Image

import shapes
from pipelines import media
from tests.conftest import shown

PROMPT = "a red circle above a blue square"
SHARED = ["DDIM", 4, 2.0, "DPM-Solver++", 4, 3.0, 0, 1]   # prior sampler, steps, guidance; decoder ...; seed, preview


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "circle.png"
    shapes.render(shapes.parse_caption("a large red circle on a blue background"), 32, 0).save(path)
    return str(path)


def text_args(prompt=PROMPT, candidates=2, batch=1, steps=4, seed=0):
    shared = list(SHARED)
    shared[4], shared[6] = steps, seed
    return ["shapes", prompt, candidates, batch, *shared, 8]


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

