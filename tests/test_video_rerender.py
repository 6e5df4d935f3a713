"""Progress videos made again from a run's kept frames (pipelines/media/frames.py): same frames re-timed,
pacing by visual change, ease-in/out, sizes, frames on disk, and what the recorder keeps."""
from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from pipelines.media import FrameKeeper, VideoWriter, load_frames, rerender, save_frames
from pipelines.media.frames import MAX_OUT_FRAMES, pick


def _decode(path: Path) -> tuple[dict, list[np.ndarray]]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return meta, [np.frombuffer(b, np.uint8).reshape(h, w, 3).astype(int) for b in gen]


def _frames(n: int = 12, side: int = 32, seed: int = 0) -> list[Image.Image]:
    """Pictures of flat 4x4 blocks, each unlike the last (H.264 keeps flat blocks nearly exact)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1))
            for _ in range(n)]


def _fade(n: int, hold: int) -> list[Image.Image]:
    """`hold` identical black frames, then a fade to white over the rest."""
    out = [Image.new("RGB", (16, 16), 0)] * hold
    out += [Image.new("RGB", (16, 16), (v, v, v)) for v in np.linspace(0, 255, n - hold).astype(int)]
    return out


def test_another_fps_gives_the_same_frames_re_timed(tmp_path):
    src = _frames()
    with VideoWriter(tmp_path / "run.mp4", fps=10) as w:           # as the recorder writes the run's video
        for f in src:
            w.append(f)
    again = rerender(src, tmp_path / "again.mp4", fps=25)
    (m0, a), (m1, b) = _decode(tmp_path / "run.mp4"), _decode(again)
    assert (m0["fps"], m1["fps"]) == (10, 25) and m0["size"] == m1["size"] == (256, 256)
    assert len(a) == len(b) == len(src)
    assert m1["duration"] < m0["duration"] / 2
    for x, y, s in zip(a, b, src):
        want = np.asarray(s).repeat(8, 0).repeat(8, 1).astype(int)
        assert np.abs(x - y).mean() < 2 and np.abs(y - want).mean() < 8


def test_size_scales_the_longer_side_crisply(tmp_path):
    src = [f.crop((0, 0, 32, 16)) for f in _frames(3)]
    meta, out = _decode(rerender(src, tmp_path / "big.mp4", fps=5, size=512))
    assert meta["size"] == (512, 256) and len(out) == 3
    want = np.asarray(src[1]).repeat(16, 0).repeat(16, 1).astype(int)     # nearest-neighbour, 16x
    assert np.abs(out[1] - want).mean() < 8
    meta, _ = _decode(rerender(src, tmp_path / "small.mp4", fps=5, size=16))
    assert meta["size"] == (16, 16)                                       # 16x8, padded to a multiple of 16


def test_seconds_set_the_length_and_the_last_frame_stays_the_result(tmp_path):
    src = _frames(6)
    meta, out = _decode(rerender(src, tmp_path / "long.mp4", fps=10, seconds=3))
    assert len(out) == 30
    last = np.asarray(src[-1]).repeat(8, 0).repeat(8, 1).astype(int)
    first = np.asarray(src[0]).repeat(8, 0).repeat(8, 1).astype(int)
    assert np.abs(out[-1] - last).mean() < 8 and np.abs(out[0] - first).mean() < 8


def test_even_pacing_keeps_order_and_ends():
    src = _frames(10)
    assert pick(src) == list(range(10))
    assert pick(src, 4) == [0, 3, 6, 9]
    assert pick(src, 19) == sorted(pick(src, 19)) and pick(src, 19)[-1] == 9 and set(pick(src, 19)) == set(range(10))


def test_change_pacing_skips_frames_where_nothing_changes():
    src = _fade(40, hold=30)           # 30 still frames, then 10 frames of fading
    even, change = pick(src, 10), pick(src, 10, "change")
    assert even[0] == change[0] == 0 and even[-1] == change[-1] == 39
    assert sum(i >= 30 for i in change) > sum(i >= 30 for i in even)
    assert sum(i >= 30 for i in change) >= 8                           # the fade gets nearly all the time
    still = [Image.new("RGB", (8, 8), 3)] * 5                          # no change at all: even pacing
    assert pick(still, 5, "change") == [0, 1, 2, 3, 4]


def test_ease_holds_the_start_and_the_end():
    src = _frames(20)
    eased = pick(src, 20, ease=True)
    assert eased[0] == 0 and eased[-1] == 19 and eased == sorted(eased)
    assert eased.count(0) >= 2 and eased.count(19) >= 2               # held longer than one frame
    assert eased.count(0) > pick(src, 20).count(0)


def test_bad_exports_are_clear_messages(tmp_path):
    src = _frames(3)
    for kw, word in [(dict(fps=0), "Frame rate"), (dict(fps=30, size=9), "Size"), (dict(fps=30, size=10**6), "Size"),
                     (dict(fps=30, seconds=-1), "Length"), (dict(fps=60, seconds=10**6), "at most"),
                     (dict(fps=30, pacing="wobbly"), "Pacing")]:
        with pytest.raises(ValueError, match=word):
            rerender(src, tmp_path / "x.mp4", **kw)
    with pytest.raises(ValueError, match="no frames"):
        rerender([], tmp_path / "x.mp4", fps=10)
    assert MAX_OUT_FRAMES >= 60 * 60 and not list(tmp_path.glob("*.mp4"))


def test_frames_round_trip_through_a_folder(tmp_path):
    src = _frames(5) + [Image.new("RGB", (70, 30), (1, 2, 3))]
    save_frames(src, tmp_path / "frames", fps=12, engine="diffusion")
    got, info = load_frames(tmp_path / "frames")
    assert [g.tobytes() for g in got] == [s.tobytes() for s in src]
    assert info["fps"] == 12 and info["count"] == 6 and info["engine"] == "diffusion"
    save_frames(src[:2], tmp_path / "frames", fps=12)                  # saving again replaces them
    assert len(load_frames(tmp_path / "frames")[0]) == 2
    with pytest.raises(ValueError, match="No frames"):
        load_frames(tmp_path / "nothing")


def test_the_keeper_thins_evenly_and_keeps_the_last():
    keeper = FrameKeeper(max_frames=10)
    pics = [Image.new("RGB", (4, 4), (i % 256, i // 256, 0)) for i in range(95)]
    for p in pics:
        keeper.add(p)
    kept = [f.getpixel((0, 0)) for f in keeper.frames]
    index = [r + 256 * g for r, g, _ in kept]
    assert len(index) <= 11 and index[0] == 0 and index[-1] == 94
    gaps = np.diff(index[:-1])
    assert len(set(gaps)) == 1                                         # evenly spread
    assert "of 95 frames" in keeper.note
    small = FrameKeeper(max_frames=600, max_bytes=10 * 4 * 4 * 3)      # the byte bound thins too
    for p in pics[:40]:
        small.add(p)
    assert len(small.frames) <= 11 and small.frames[-1].getpixel((0, 0)) == (39, 0, 0)
    plain = FrameKeeper()
    for p in pics[:5]:
        plain.add(p)
    assert len(plain.frames) == 5 and plain.note == ""


def test_the_recorder_keeps_the_videos_frames(tmp_path):
    from pipelines.engines import ENGINES
    from pipelines.events import Final
    from pipelines.presets import load_preset
    from pipelines.recorder import Recorder
    from pipelines.registry import Registry

    engine = ENGINES["diffusion"]
    req = engine.make_request(load_preset("shapes"), prompt="a red circle", steps=4, preview_every=1)
    rec = Recorder(engine, req, tmp_path, "run", fps=7, unique=False)
    for ev in engine.run(req, Registry(device="cpu"), lambda: False):
        out = rec.finish(ev) if isinstance(ev, Final) else rec.add(ev)
    assert len(out.frames) == 4 and out.fps == 7 and out.frames_note == ""
    meta, video = _decode(out.video)
    assert len(video) == 4 and meta["fps"] == 7
    # the last kept frame is x_t | x_0 of the last step: its right half is the result
    assert out.frames[-1].size[0] > out.frames[-1].size[1]


def test_the_command_line_keeps_frames_and_re_exports_them(tmp_path, capsys):
    from pipelines.__main__ import main
    from pipelines.media import frames as frames_cli

    out = tmp_path / "o" / "pic.png"
    assert main(["diffusion", "a red circle", "--steps", "5", "--preview-every", "1", "--video", "--keep-frames",
                 "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "About" in said.err and "MB" in said.err                     # the estimate, before the run
    kept, info = load_frames(out.parent / "pic_frames")
    assert len(kept) == 5 and info["fps"] == 10 and info["engine"] == "diffusion"
    frames_cli.main([str(out.parent / "pic_frames"), str(tmp_path / "again.mp4"), "--fps", "25"])
    (m0, a), (m1, b) = _decode(out.parent / "pic.mp4"), _decode(tmp_path / "again.mp4")
    assert (m0["fps"], m1["fps"]) == (10, 25) and len(a) == len(b) == 5
    assert all(np.abs(x - y).mean() < 3 for x, y in zip(a, b))
