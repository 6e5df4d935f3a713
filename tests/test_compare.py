"""One prompt through every engine: requests, the side-by-side board, the combined video, Stop, bad input,
and the Compare tab through the served app."""
import numpy as np
import pytest

from pipelines import compare, media
from pipelines.events import Final
from tests.conftest import QUICK

PROMPT = "a red circle above a blue square"


def test_every_engine_gets_the_prompt_and_seed_and_makes_one_picture():
    reqs = compare.requests(compare.CompareRequest(prompt=PROMPT, seed=5))
    assert list(reqs) == ["vqgan_clip", "diffusion", "dalle", "unclip"]
    assert all(r.prompt == PROMPT and r.seed == 5 and r.preset == "shapes" for r in reqs.values())
    assert reqs["diffusion"].batch == 1 and reqs["unclip"].batch == 1
    assert reqs["diffusion"].steps == 25           # the preset's own settings


@pytest.mark.parametrize("req, words", [
    (compare.CompareRequest(prompt=" "), "Type a prompt"),
    (compare.CompareRequest(prompt=PROMPT, preset="sd-v1-5"), "serves only 1 engine"),
    (compare.CompareRequest(prompt=PROMPT, seed=-1), "Seed must be"),
    (compare.CompareRequest(prompt=PROMPT, preset="nope"), "Unknown preset"),
])
def test_bad_input_is_one_sentence(req, words):
    with pytest.raises(ValueError, match=words):
        compare.requests(req)


def test_the_board_and_the_video_end_on_every_engines_result(registry, tmp_path):
    board = compare.CompareBoard(compare.CompareRequest(prompt=PROMPT, seed=2), overrides=QUICK)
    for name, ev in compare.run(board.requests, registry):
        board.add(name, ev)
    assert set(board.finals) == {"vqgan_clip", "diffusion", "dalle", "unclip"}
    frames = board.video_frames()
    assert len(frames) == max(len(f) for f in board.frames.values()) and len({f.size for f in frames}) == 1
    # the last frame shows every engine's result, each centred in its column
    last, x = np.asarray(frames[-1]), 0
    for name, fr in board.frames.items():
        width = max(compare._scaled_width(im) for im in fr)
        result = board.finals[name].images[0]
        side = compare._scaled_width(result)
        want = np.asarray(result.convert("RGB").resize((side, compare.SIDE), 0))
        left = x + (width - side) // 2
        assert np.array_equal(last[compare.LABEL_H:, left:left + side], want), name
        x += width + 4
    out = board.write(tmp_path, "cmp", fps=8)
    assert out["video"].stat().st_size > 1000 and len(out["pictures"]) == 4
    meta = media.read_meta(out["pictures"][1][0])
    assert meta["engine"] == "diffusion" and meta["compare"] == {"prompt": PROMPT, "seed": 2}
    # each engine's picture is the one that engine alone makes for that prompt and seed
    from pipelines.engines import ENGINES
    from pipelines.events import generate

    alone = generate(ENGINES["diffusion"].run(board.requests["diffusion"], registry))
    assert np.array_equal(np.asarray(alone.images[0]), np.asarray(board.finals["diffusion"].images[0]))


def test_stop_ends_the_engine_running_and_skips_the_rest(registry):
    board = compare.CompareBoard(compare.CompareRequest(prompt=PROMPT), overrides=QUICK)
    seen = []

    def stop():
        return len(seen) >= 3

    for name, ev in compare.run(board.requests, registry, stop):
        seen.append(name)
        board.add(name, ev)
    assert list(board.finals) == ["vqgan_clip"] and board.finals["vqgan_clip"].stopped
    assert isinstance(board.finals["vqgan_clip"], Final) and board.results()[0][1] == "VQGAN+CLIP (stopped)"


def test_the_compare_tab_runs_and_says_what_is_wrong(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Type a prompt"):
        client.predict("shapes", "", 0, 10, "", api_name="/compare")
    with pytest.raises((AppError, ValueError), match="not in the list of choices|serves only 1 engine"):
        client.predict("ddpm-cifar10", PROMPT, 0, 10, "", api_name="/compare")
    assert client.predict(api_name="/models_status").startswith("Device")
