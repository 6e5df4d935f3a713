"""Tests for pipelines.media: pixel conversion, upload checks, PNG metadata, mp4 output, names."""
from __future__ import annotations

import io
import json
import math
import re
import struct
import zlib
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.media import (
    META_KEY,
    ImageInputError,
    VideoWriter,
    enlarge,
    format_parameters,
    image_digest,
    load_image,
    new_output_path,
    read_meta,
    save_png,
    to_pil,
    to_uint8,
    write_video,
)


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height; its pixel data is truncated,
    so any attempt to decode it fails with a different message than the size check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# --- to_uint8 / to_pil / enlarge -------------------------------------------------------------

def test_to_uint8_maps_minus_one_to_one():
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 3.0, -0.5]).view(1, 1, 6)  # (C, H, W)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 6, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255, 0, 255, 64]  # -0.5 -> 63.75 -> 64
    assert (out[..., 0] == out[..., 2]).all()  # grey repeated to RGB


def test_to_uint8_zero_one_range_batch_and_grad():
    x = torch.tensor([0.0, 0.5, 1.0, 2.0, float("nan")]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    x = x.clone().requires_grad_(True)
    out = to_uint8(x, value_range=(0, 1))
    assert out.shape == (1, 5, 3)
    assert out[0, :, 1].tolist() == [0, 128, 255, 255, 0]  # clamped; NaN -> low end
    with pytest.raises(ValueError, match="batch"):
        to_uint8(torch.zeros(2, 3, 4, 4))


def test_to_uint8_channels_and_dtypes():
    x = torch.zeros(3, 2, 4, dtype=torch.bfloat16)
    x[0] = 1  # red channel
    out = to_uint8(x)
    assert out.shape == (2, 4, 3) and out[0, 0].tolist() == [255, 128, 128]
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(pixels), pixels)  # uint8 arrays are pixels already
    chw = np.moveaxis(pixels.astype(np.float32) / 255.0, -1, 0)  # channels-first floats
    assert np.array_equal(to_uint8(chw, value_range=(0, 1)), pixels)
    assert to_uint8(torch.from_numpy(pixels).permute(2, 0, 1)).tolist() == pixels.tolist()
    with pytest.raises(ValueError):
        to_uint8(np.zeros((4, 4, 5), dtype=np.float32))
    with pytest.raises(TypeError):
        to_uint8([1, 2, 3])


def test_to_pil():
    img = to_pil(torch.zeros(3, 4, 6))
    assert img.mode == "RGB" and img.size == (6, 4)
    assert img.getpixel((0, 0)) == (128, 128, 128)
    assert to_pil(Image.new("L", (3, 3), 7)).getpixel((1, 1)) == (7, 7, 7)


def test_enlarge_is_exact_nearest_copy():
    small = np.random.default_rng(1).integers(0, 256, (5, 10, 3), dtype=np.uint8)  # 10x5
    big = enlarge(Image.fromarray(small), 256)
    k = 52  # ceil(256 / 5)
    assert big.size == (10 * k, 5 * k)
    assert np.array_equal(np.asarray(big), small.repeat(k, axis=0).repeat(k, axis=1))
    large = Image.new("RGB", (300, 400))
    assert enlarge(large, 256) is large  # no-op
    assert enlarge(Image.new("RGB", (32, 32)), 64).size == (64, 64)
    assert enlarge(Image.new("RGB", (1000, 1)), 256).size == (4000, 4)  # capped at 4096


# --- load_image -------------------------------------------------------------------------------

def _mode_images() -> dict[str, tuple[Image.Image, str]]:
    """mode -> (image, format that keeps the mode)"""
    rgb = Image.linear_gradient("L").resize((24, 16)).convert("RGB")
    p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    i16 = Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 170).astype(np.uint16))
    f = Image.fromarray(np.linspace(0, 1, 24 * 16, dtype=np.float32).reshape(16, 24))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    la = Image.new("LA", (24, 16), (0, 0))
    return {
        "P": (p, "PNG"),
        "CMYK": (Image.new("CMYK", (24, 16), (0, 255, 0, 0)), "JPEG"),
        "I;16": (i16, "PNG"),
        "RGBA": (rgba, "PNG"),
        "LA": (la, "PNG"),
        "L": (Image.new("L", (24, 16), 77), "PNG"),
        "1": (Image.new("1", (24, 16), 1), "PNG"),
        "F": (f, "TIFF"),
    }


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_load_image_modes(mode):
    img, fmt = _mode_images()[mode]
    assert img.mode == mode
    for src in (img, _png_bytes(img, fmt)):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (24, 16)


def test_load_image_mode_values():
    imgs = _mode_images()
    assert load_image(imgs["LA"][0]).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert load_image(imgs["L"][0]).getpixel((3, 3)) == (77, 77, 77)
    assert load_image(imgs["1"][0]).getpixel((3, 3)) == (255, 255, 255)
    r, g, b = load_image(_png_bytes(imgs["CMYK"][0], "JPEG")).getpixel((5, 5))
    assert r > 200 and g < 60 and b > 200  # magenta
    i16 = load_image(Image.fromarray(np.array([[0, 257 * 100, 65535] * 4] * 8, np.uint16)))
    assert [i16.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]
    f = load_image(imgs["F"][0])
    assert f.getpixel((0, 0))[0] == 0 and f.getpixel((23, 15))[0] == 255
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    out = load_image(rgba)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (255, 0, 0)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 20, 30, 200, 0, 0])
    pal.info["transparency"] = 0
    assert load_image(_png_bytes(pal)).getpixel((2, 2)) == (255, 255, 255)


def test_load_image_exif_orientation():
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = load_image(_png_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_load_image_paths_files_and_arrays(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (16, 12), (1, 2, 3)).save(path)
    assert load_image(path).getpixel((0, 0)) == (1, 2, 3)
    assert load_image(str(path)).size == (16, 12)
    with open(path, "rb") as fh:
        assert load_image(fh).size == (16, 12)
    assert load_image(np.full((9, 10), 0.5)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(np.zeros((9, 10, 4), np.uint8)).getpixel((0, 0)) == (255, 255, 255)


def test_load_image_rejections(tmp_path):
    with pytest.raises(ImageInputError, match=r"Init image is not an image Atelier can read"):
        load_image(b"hello, this is text", name="init image")
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageInputError, match=r"1x1 pixels.*at least 8 pixels"):
        load_image(_png_bytes(Image.new("RGB", (1, 1))))
    with pytest.raises(ImageInputError, match="was not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageInputError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageInputError, match="No image"):
        load_image(None)
    big = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3),
                                                                        np.uint8)))
    assert len(big) > 2**12
    with pytest.raises(ImageInputError, match=r"Image is 12\.\d KB; the limit is 100 bytes"):
        load_image(big, max_bytes=100)
    (tmp_path / "big.png").write_bytes(big)
    with pytest.raises(ImageInputError, match=r"KB; the limit is 2 KB"):
        load_image(tmp_path / "big.png", max_bytes=2048)
    with open(tmp_path / "big.png", "rb") as fh:
        with pytest.raises(ImageInputError, match=r"larger than the limit of 4 KB"):
            load_image(fh, max_bytes=4096)
    with pytest.raises(ImageInputError, match="array shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))


def test_load_image_size_checked_before_decoding():
    data = _png_header_only(8000, 8000)
    assert len(data) < 200
    assert Image.open(io.BytesIO(data)).size == (8000, 8000)
    with pytest.raises(ImageInputError) as err:
        load_image(data, name="init image")
    msg = str(err.value)
    assert msg.startswith("Init image is 8000x8000 pixels") and "4096 pixels per side" in msg
    with pytest.raises(ImageInputError, match="16.8 MP"):
        load_image(_png_header_only(4096, 4100), max_side=5000)
    # the same header under generous limits is decoded, and fails as truncated
    with pytest.raises(ImageInputError, match="could not be decoded"):
        load_image(_png_header_only(100, 100))
    # a header far beyond Pillow's own bomb limit is refused even with our limits raised
    with pytest.raises(ImageInputError, match="decompression bomb"):
        load_image(_png_header_only(20000, 20000), max_side=10**6, max_pixels=10**12)


def test_image_digest():
    a = Image.new("RGB", (4, 2), (1, 2, 3))
    d = image_digest(a)
    assert re.fullmatch(r"[0-9a-f]{12}", d)
    assert image_digest(a.copy()) == d
    assert image_digest(a.convert("RGBA")) == d
    assert image_digest(Image.new("RGB", (2, 4), (1, 2, 3))) != d  # same bytes, other size


# --- PNG metadata -----------------------------------------------------------------------------

META = {
    "prompt": "un chat sur la lune 🌙, Æsir",
    "seed": 1,
    "steps": 100,
    "size": [32, 32],
    "engine": "diffusion",
    "model": {"id": "tiny", "hash": "abc"},
    "prompts": [{"text": "cat", "weight": 1.0, "stop": -math.inf}],
    "extra": {"nan": math.nan, "inf": math.inf, "path": Path("a/b"), "t": (1, 2)},
}


def test_save_png_and_read_meta_round_trip(tmp_path):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), np.uint8))
    paths = save_png(img, tmp_path / "out" / "cat.png", META, enlarged_min_side=256)
    assert paths == [tmp_path / "out" / "cat.png", tmp_path / "out" / "cat_x8.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat.png", "cat_x8.png"]

    expected = json.loads(json.dumps(META, default=str))  # what JSON can hold ...
    expected["prompts"][0]["stop"] = "-inf"               # ... with non-finite floats as strings
    expected["extra"].update(nan="nan", inf="inf", t=[1, 2])
    for p in paths:
        reopened = Image.open(p)
        assert read_meta(p) == expected
        assert read_meta(reopened) == expected
        assert read_meta(reopened.convert("RGB")) == expected
        assert read_meta(p.read_bytes()) == expected
        assert float(read_meta(p)["prompts"][0]["stop"]) == -math.inf
        raw = reopened.info[META_KEY]
        json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
        params = reopened.info["parameters"]
        assert params.startswith(META["prompt"] + "\n")
        assert "Steps: 100" in params and "Seed: 1" in params and "Size: 32x32" in params
        assert reopened.info["Software"] == "Atelier"

    assert np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(img))  # lossless
    big = np.asarray(Image.open(paths[1]))
    assert big.shape == (256, 256, 3)
    assert np.array_equal(big, np.asarray(img).repeat(8, axis=0).repeat(8, axis=1))


def test_save_png_no_enlarged_copy_when_large(tmp_path):
    paths = save_png(Image.new("RGB", (300, 256)), tmp_path / "a.png", {"seed": 3},
                     enlarged_min_side=256)
    assert paths == [tmp_path / "a.png"]
    assert list(tmp_path.iterdir()) == [tmp_path / "a.png"]  # no temp file left behind
    assert read_meta(tmp_path / "a.png") == {"seed": 3}


def test_read_meta_rejects_plain_and_broken(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(ImageInputError, match="carries no Atelier settings"):
        read_meta(plain)
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text(META_KEY, "{not json")
    broken = _png_bytes(Image.new("RGB", (8, 8)), pnginfo=info)
    with pytest.raises(ImageInputError, match="carries no Atelier settings"):
        read_meta(broken)
    with pytest.raises(ImageInputError, match="not an image"):
        read_meta(b"nope")
    with pytest.raises(ImageInputError, match="not found"):
        read_meta(tmp_path / "missing.png")


def test_format_parameters():
    text = format_parameters({
        "prompt": "a red fox", "negative_prompt": "blurry", "steps": 20,
        "guidance_scale": 7.5, "seed": 42, "width": 64, "height": 48,
        "sampler": "ddim", "weights_hash": "0123abcd", "timings": {"total_s": 1.25},
        "stop": -math.inf,
    })
    assert text == (
        "a red fox\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: ddim, CFG scale: 7.5, Seed: 42, Size: 64x48, "
        'Model hash: 0123abcd, Stop: -inf, Timings: "{\\"total_s\\": 1.25}"'
    )
    assert format_parameters({"prompt": ["a", "b"], "size": 32}) == "a | b\nSize: 32x32"
    assert format_parameters({"seed": 1}, image_size=(8, 4)) == "Seed: 1, Size: 8x4"


# --- video ------------------------------------------------------------------------------------

def _probe(path: Path) -> tuple[dict, list[np.ndarray]]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
    return meta, frames


def test_video_writer_h264_yuv420p(tmp_path):
    rng = np.random.default_rng(3)
    src = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    path = tmp_path / "v" / "run.mp4"
    with VideoWriter(path, fps=4) as w:
        for i, f in enumerate(src):
            w.append(Image.fromarray(f) if i % 2 else f)  # PIL and arrays
    assert w.close() == path and path.exists()
    assert w.size == (256, 256) and w.frame_count == 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.mp4"]

    meta, frames = _probe(path)
    assert meta["codec"].startswith("h264") and "yuv420p" in meta["pix_fmt"]
    assert meta["size"] == (256, 256) and meta["fps"] == 4
    assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 5
    assert len(frames) == 5
    # 8x8 blocks of flat colour survive H.264 at crf 18 nearly unchanged
    want = src[0].repeat(8, axis=0).repeat(8, axis=1).astype(int)
    assert np.abs(frames[0].astype(int) - want).mean() < 8


def test_video_writer_pads_to_multiple_of_16(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, fps=10, min_side=50) as w:
        w.append(Image.new("RGB", (30, 20), (255, 255, 255)))  # x3 -> 90x60 -> 96x64
        w.append(Image.new("RGB", (60, 60), (255, 255, 255)))  # other size: fitted
        w.append(torch.ones(3, 20, 30))  # tensors go through to_uint8
    assert w.size == (96, 64)
    meta, frames = _probe(path)
    assert meta["size"] == (96, 64) and len(frames) == 3
    assert frames[0][32, 48].min() > 230 and frames[0][32, 1].max() < 25  # image, black pad


def test_video_writer_no_frames_leaves_no_file(tmp_path):
    path = tmp_path / "empty.mp4"
    with VideoWriter(path) as w:
        pass
    assert w.close() is None and not path.exists()
    assert write_video([], tmp_path / "e2.mp4") is None
    assert list(tmp_path.iterdir()) == []


def test_video_writer_exception_discards(tmp_path):
    path = tmp_path / "boom.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, min_side=16) as w:
            w.append(np.zeros((16, 16, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        w.append(np.zeros((16, 16, 3), np.uint8))


@pytest.mark.parametrize("fps", [0, 0.5, 61, float("nan"), True, "10"])
def test_video_writer_fps_validated(tmp_path, fps):
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", fps=fps)


def test_write_video(tmp_path):
    frames = [np.full((16, 24, 3), v, np.uint8) for v in (0, 128, 255)]
    path = write_video(frames, tmp_path / "w.mp4", fps=2, min_side=16)
    assert path == tmp_path / "w.mp4"
    meta, out = _probe(path)
    assert meta["size"] == (32, 16) and len(out) == 3  # 24x16 padded to 32x16


# --- output names -----------------------------------------------------------------------------

NAME_RE = r"-\d{8}-\d{6}-[0-9a-f]{6}"


@pytest.mark.parametrize("stem, slug", [
    ("../../etc/passwd", "etc-passwd"),
    ("a/b\\c:*?", "a-b-c"),
    ("Café du Monde!", "cafe-du-monde"),
    ("???", "image"),
    ("", "image"),
    ("snake_case-OK", "snake_case-ok"),
])
def test_new_output_path_slugs(tmp_path, stem, slug):
    out = tmp_path / "outputs"
    p = new_output_path(out, stem, ".png")
    assert out.is_dir() and p.parent == out and not p.exists()
    assert re.fullmatch(re.escape(slug) + NAME_RE + r"\.png", p.name), p.name
    assert p.resolve().is_relative_to(out.resolve())


def test_new_output_path_long_unique_and_suffix(tmp_path):
    p = new_output_path(tmp_path, "x" * 300, "mp4")
    assert p.suffix == ".mp4" and re.fullmatch(r"x{60}" + NAME_RE + r"\.mp4", p.name)
    assert len({new_output_path(tmp_path, "same", ".png") for _ in range(20)}) == 20
    with pytest.raises(ValueError):
        new_output_path(tmp_path, "a", "/../x")
