"""The DALL-E tab through the app's client API, over a real socket (what every tab does: tests/test_tabs.py)."""
import pytest
from PIL import Image

from pipelines import media
from tests.conftest import api_args, shown

PROMPT = "a large yellow diamond above a small blue circle"


def args(**kw):
    return api_args("dalle", **{"prompt": PROMPT, "candidates": 4, "seed": 0, **kw})


def test_grid_fills_row_by_row_and_candidates_come_ranked(client):
    outs = list(client.submit(*args(), api_name="/dalle"))
    previews = [o for o in outs if shown(o[0])]
    assert len(previews) >= 8  # one per token row, then the final sheet
    preview, status, gallery, video, files, settings = outs[-1]
    assert status.startswith("**Done**") and "ranked by CLIP" in status
    assert len(gallery) == 4 and gallery[0]["caption"].startswith("#1 · CLIP")
    scores = settings["clip_scores"]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    pngs = [f for f in files if f.endswith(".png")]
    assert len(pngs) == 8 and video.endswith(".mp4")  # each candidate at true size and enlarged
    assert sorted({Image.open(p).size for p in pngs}) == [(32, 32), (256, 256)]
    meta = media.read_meta(pngs[0])
    assert meta["engine"] == "dalle" and meta["rank"] == 1 and meta["settings"]["prompt"] == PROMPT


def test_completion_of_an_uploaded_picture(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "half.png"
    Image.new("RGBA", (64, 64), (35, 85, 220, 255)).save(path)
    final = client.predict(*args(candidates=2, init_image=handle_file(str(path)), keep_rows=4), api_name="/dalle")
    assert final[1].startswith("**Done**") and final[5]["tokens_total"] == 32
    assert final[5]["settings"]["keep_rows"] == 4 and final[5]["settings"]["init_image"]


@pytest.mark.parametrize("kind, words", [("wide", "must be square \\(got 48x32\\)"), ("text", "not an image")])
def test_bad_image_to_complete(client, tmp_path, kind, words):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / f"{kind}.png"
    if kind == "wide":
        Image.new("RGB", (48, 32), (245, 215, 35)).save(path)
    else:
        path.write_text("this is not a picture")
    with pytest.raises(AppError, match=words):
        client.predict(*args(init_image=handle_file(str(path))), api_name="/dalle")
