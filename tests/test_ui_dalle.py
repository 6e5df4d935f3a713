"""The DALL-E tab through the app's client API, over a real socket (built-in shapes weights)."""
import socket

import pytest
from PIL import Image

from pipelines import media
from tests.conftest import reload_page, shown, wait_for_outputs

PROMPT = "a large yellow diamond above a small blue circle"


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


def args(prompt=PROMPT, candidates=4, temperature=1.0, top_k=1024, top_p=1.0, guidance=1.0, seed=0, rerank=True,
         init_image=None, keep_rows=4, fps=4):
    return ["shapes", prompt, candidates, temperature, top_k, top_p, guidance, seed, rerank, init_image, keep_rows,
            fps]


def test_endpoints(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/dalle", "/dalle_stop", "/dalle_load", "/dalle_resume"} <= set(names)


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


def test_load_settings_from_png(client):
    from gradio_client import handle_file

    outs = list(client.submit(*args(seed=42, candidates=2, top_k=100, top_p=0.9), api_name="/dalle"))
    png = [f for f in outs[-1][4] if f.endswith(".png")][0]
    values = client.predict(handle_file(png), api_name="/dalle_load")
    assert list(values[:8]) == ["shapes", PROMPT, 2, 1.0, 100, 0.9, 1.0, 42] and "loaded" in values[-1]


def test_stop_keeps_what_was_made(client):
    job = client.submit(*args(candidates=8), api_name="/dalle")
    wait_for_outputs(job, 1)
    client.predict(api_name="/dalle_stop")
    final = job.result(timeout=60)
    assert final[1].startswith("**Stopped**")
    assert final[5]["stopped"] is True and 1 <= final[5]["tokens_done"] < 64 and len(final[2]) == 8
    assert final[5]["clip_scores"] is None and not any("CLIP" in g["caption"] for g in final[2])


def test_a_reloaded_page_follows_its_run(client, tmp_path):
    browser = "00112233445566778899"
    job = client.submit(*args(candidates=4), browser, api_name="/dalle")
    page = reload_page(client, job, tmp_path, after_outputs=1)   # the page is reloaded: the run goes on
    final = page.predict(browser, api_name="/dalle_resume")
    assert final[1].startswith("**Done**") and len(final[2]) == 4


def test_completion_of_an_uploaded_picture(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "half.png"
    Image.new("RGBA", (64, 64), (35, 85, 220, 255)).save(path)
    final = client.predict(*args(candidates=2, init_image=handle_file(str(path)), keep_rows=4), api_name="/dalle")
    assert final[1].startswith("**Done**") and final[5]["tokens_total"] == 32
    assert final[5]["settings"]["keep_rows"] == 4 and final[5]["settings"]["init_image"]


@pytest.mark.parametrize("kw, words", [
    (dict(temperature=0), "Temperature must be a number above 0"),
    (dict(top_k=0), "Top-k must be a whole number from 1"),
    (dict(top_k=5000), "Top-k"),
    (dict(top_p=1.5), "Top-p must be a number above 0 and at most 1"),
    (dict(candidates=0), "Candidates must be a whole number from 1 to 64"),
    (dict(candidates=10000), "Candidates"),
    (dict(prompt=""), "Enter a prompt"),
])
def test_bad_input_is_a_clear_message_and_the_server_lives(client, kw, words):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=words):
        client.predict(*args(**kw), api_name="/dalle")
    assert client.predict(api_name="/models_status").startswith("Device")


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
