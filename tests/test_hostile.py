"""Hostile input to every input of every tab, oversized uploads, and the file route.

Each value either gets a clear message (an error naming what is wrong, never
Gradio's generic "an exception was raised") or is a value the engine may take
(then the run is stopped and must end cleanly). Afterwards the server still
makes a normal picture. A new engine joins with one row in ENGINES.
"""
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GENERIC = ("has not enabled verbose error reporting", "upstream Gradio app has raised an exception")
HOSTILE = [None, "", "x" * 100_000, -1, -1e300, 1e300, "abc", [1, 2], {"a": 1}]


def vqgan_clip():
    return ["shapes", "a red circle", 0, 32, 32, 2, 1, None, "", None, 0, "", "", 0.1, "Adam", 2, 1.0, "latest",
            ["Af"], 0, "auto", 10]


def dalle():
    return ["shapes", "a red circle", 1, 1.0, 1024, 1.0, 1.0, 0, False, None, 4, 4]


def diffusion():
    return ["shapes", "a red circle", "", "DPM-Solver++", 2, 3.0, 0.0, 0, 1, None, 0.75, 1, 0, 0, "auto", 10]


def unclip():
    return ["shapes", "a red circle", 1, 1, "DDIM", 2, 2.0, "DPM-Solver++", 2, 3.0, 0, 1, 8]


def unclip_variations():
    return ["shapes", None, 1, 1.0, "DDIM", 2, 2.0, "DPM-Solver++", 2, 3.0, 0, 1, 8]


# api name -> (a quick valid call, its file inputs: index -> takes a list, index of the status line)
ENGINES = {
    "vqgan_clip": (vqgan_clip, {7: True, 9: False}, 1),
    "dalle": (dalle, {9: False}, 1),
    "diffusion": (diffusion, {9: False}, 2),
    "unclip": (unclip, {}, 0),
}


@pytest.fixture(scope="module")
def client(served_app, tmp_path_factory):
    from gradio_client import Client

    return Client(served_app.demo.local_url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def _outcome(client, api: str, args: list, status_at: int = 1) -> str:
    """'error: <message>' or the final status line of a run (stopped after 6 s if it goes on)."""
    from gradio_client.exceptions import AppError

    try:
        job = client.submit(*args, api_name=f"/{api}")
        t0 = time.time()
        while not job.done() and time.time() - t0 < 6:
            time.sleep(0.05)
        if not job.done():
            client.predict(api_name=f"/{api.split('_')[0] if api.startswith('unclip') else api}_stop")
        return "ran: " + str(job.result(timeout=120)[status_at])
    except AppError as e:
        return f"error: {e}"


def _clear(outcome: str) -> bool:
    if outcome.startswith("ran: "):
        return outcome.startswith(("ran: **Done**", "ran: **Stopped**"))
    return len(outcome) > 15 and not any(g in outcome for g in GENERIC)


@pytest.mark.parametrize("api", list(ENGINES))
def test_every_input_with_hostile_values(client, api):
    make, files, status_at = ENGINES[api]
    bad = []
    n_inputs = len(make())
    for i in range(n_inputs):
        for value in HOSTILE:
            if i in files and value not in (None, ""):
                continue   # file inputs get their own hostile files below
            args = make()
            args[i] = value
            out = _outcome(client, api, args, status_at)
            if not _clear(out):
                bad.append((i, repr(value)[:20], out[:200]))
    assert not bad, bad
    assert _outcome(client, api, make(), status_at).startswith("ran: **Done**")     # the server lives


def _hostile_files(d: Path) -> dict[str, Path]:
    d.mkdir(exist_ok=True)
    out = {}
    (d / "bytes.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 100)
    out["non-image bytes"] = d / "bytes.png"
    (d / "empty.png").write_bytes(b"")
    out["empty file"] = d / "empty.png"
    Image.new("1", (20000, 20000)).save(d / "huge.png")        # 400 megapixels, a few kB compressed
    out["huge image"] = d / "huge.png"
    Image.new("CMYK", (40, 40), (0, 255, 0, 0)).save(d / "cmyk.jpg")
    out["CMYK"] = d / "cmyk.jpg"
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(d / "sixteen.png")
    out["16-bit"] = d / "sixteen.png"
    Image.new("LA", (40, 40), (200, 100)).save(d / "la.png")
    out["grey+alpha"] = d / "la.png"
    Image.new("RGB", (1, 3000)).save(d / "strip.png")
    out["1x3000 strip"] = d / "strip.png"
    return out


@pytest.mark.parametrize("api", [a for a in ENGINES if ENGINES[a][1]] + ["unclip_variations"])
def test_hostile_image_files(client, api, tmp_path):
    from gradio_client import handle_file

    make, files, status_at = ENGINES[api] if api in ENGINES else (unclip_variations, {1: False}, 0)
    bad = []
    for name, path in _hostile_files(tmp_path).items():
        for i, is_list in files.items():
            args = make()
            args[i] = [handle_file(str(path))] if is_list else handle_file(str(path))
            out = _outcome(client, api, args, status_at)
            if not _clear(out):
                bad.append((name, i, out[:200]))
    assert not bad, bad


def test_uploads_over_the_cap_are_refused(client, served_app, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    with open(big, "wb") as f:          # 100 MB
        f.write(b"\0" * (100 * 2**20))
    r = httpx.post(served_app.demo.local_url + "gradio_api/upload", files={"files": ("big.png", open(big, "rb"))},
                   timeout=120)
    assert r.status_code == 413 and "20" in r.text
    assert _outcome(client, "vqgan_clip", vqgan_clip()).startswith("ran: **Done**")


@pytest.mark.parametrize("target", [
    "/etc/passwd", "../../../../etc/passwd", "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    str(Path(__file__).resolve().parents[1] / "app.py"),
    str(Path(__file__).resolve().parents[1] / "presets" / "shapes.json"),
])
def test_the_file_route_serves_nothing_outside_its_folders(served_app, target):
    import httpx

    r = httpx.get(served_app.demo.local_url + "gradio_api/file=" + target, timeout=30)
    assert r.status_code in (403, 404), (r.status_code, r.text[:100])
    assert "root:" not in r.text and "build_demo" not in r.text
