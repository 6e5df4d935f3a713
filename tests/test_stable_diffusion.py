"""Stable Diffusion-family presets (sd-v1-5, sd-turbo) on tiny stand-ins in the hub's layout, offline.

Every test here has `standin` in its name: `pytest -q -k standin` runs every download preset's stand-in.
The parity test runs the same tiny weights through diffusers' own StableDiffusionPipeline.
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import diffusion as engine
from pipelines import media
from pipelines.events import Step
from pipelines.presets import ComponentSpec
from pipelines.registry import ModelUnavailable, Registry

SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def generate(events):
    return list(events)[-1]


@pytest.fixture
def reg(on_standins):
    return Registry(device="cpu", allow_network=False)


def _req(**kw):
    kw = {"prompt": "a red cat", "preset": "sd-v1-5", "steps": 3, "width": 64, "height": 64, "preview_every": 1, **kw}
    return engine.DiffusionRequest(**kw)


@pytest.mark.parametrize("preset,sampler", [("sd-v1-5", "DPM-Solver++"), ("sd-v1-5", "DDIM"), ("sd-v1-5", "DDPM"),
                                            ("sd-v1-5", "Euler"), ("sd-turbo", "Euler a"), ("sd-turbo", "DPM-Solver++")])
def test_standin_sd_presets_run_every_sampler_with_previews(reg, preset, sampler):
    events = list(engine.run(_req(preset=preset, sampler=sampler, batch=2, negative_prompt="blurry"), reg))
    final = events[-1]
    assert [im.size for im in final.images] == [(64, 64)] * 2 and final.meta["steps_done"] == 3
    previews = [e.previews for e in events if isinstance(e, Step) and e.previews]
    assert len(previews) == 3 and previews[0]["x_t"].size == previews[0]["x0_pred"].size == (128, 64)
    # the last preview is the result, and the run is the same picture for the same seed
    assert np.array_equal(np.asarray(previews[-1]["x0_pred"]),
                          np.concatenate([np.asarray(im) for im in final.images], axis=1))
    again = generate(engine.run(_req(preset=preset, sampler=sampler, batch=2, negative_prompt="blurry"), reg))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(final.images, again.images))
    assert final.meta["models"]["stable_diffusion"]["key"].startswith("stable_diffusion:hub:")
    assert final.meta["settings"]["width"] == 64


def test_standin_sd_previews_use_taesd_for_x0_and_the_map_for_x_t(reg):
    events = list(engine.run(_req(steps=4), reg))
    first = next(e.previews for e in events if isinstance(e, Step) and e.previews)
    model = reg.get(ComponentSpec("stable_diffusion", "hub", SD, {"index": "model_index.json"}))
    taesd = reg.get(ComponentSpec("taesd", "hub", "madebyollin/taesd"))
    assert model.latent_rgb.abs().sum() > 0              # fitted when it loaded
    z = torch.randn(1, 4, 8, 8)
    assert model.preview_rgb(z).shape == (1, 3, 64, 64) and taesd(z).shape == (1, 3, 64, 64)
    assert first["x0_pred"].size == (64, 64)


def test_standin_sd_matches_diffusers_pipeline(on_standins):
    """The same stand-in through diffusers' StableDiffusionPipeline and through Atelier: the same picture."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    reg = Registry(device="cpu", allow_network=False)
    pipe = StableDiffusionPipeline.from_pretrained(SD, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for sampler, cls, extra in [("DDIM", DDIMScheduler, {"set_alpha_to_one": False}),
                                ("DPM-Solver++", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"})]:
        pipe.scheduler = cls.from_config({**pipe.scheduler.config, **extra})
        theirs = pipe("a red cat", negative_prompt="a blue dog", num_inference_steps=4, guidance_scale=5.0,
                      num_images_per_prompt=2, generator=torch.Generator().manual_seed(7), output_type="np",
                      height=64, width=64).images
        ours = generate(engine.run(_req(sampler=sampler, negative_prompt="a blue dog", steps=4, guidance=5.0,
                                        batch=2, seed=7), reg)).images
        ours = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in ours])
        assert theirs.shape == ours.shape
        assert np.abs(theirs - ours).max() <= 1.5 / 255, sampler       # 8-bit rounding only


def test_standin_sd_image_to_image_sizes_and_precision(reg):
    src = Image.new("RGB", (90, 60), (200, 30, 30))
    final = generate(engine.run(_req(width=96, height=64, init_image=src, strength=0.5, steps=4), reg))
    assert final.images[0].size == (96, 64) and final.meta["steps_done"] == 2
    with pytest.raises(ValueError, match="multiples of 8"):
        generate(engine.run(_req(width=100), reg))
    with pytest.raises(ValueError, match="64 to 1024"):
        generate(engine.run(_req(width=2048, height=2048), reg))
    with pytest.raises(ValueError, match="float16 runs on a GPU only"):
        generate(engine.run(_req(precision="float16"), reg))
    # the built-in model keeps its own size and says so
    with pytest.raises(ValueError, match="32x32 pictures only"):
        generate(engine.run(engine.DiffusionRequest(prompt="a red circle", steps=2, width=64), Registry(device="cpu")))


def test_standin_sd_png_settings_rebuild_the_request(reg, tmp_path):
    final = generate(engine.run(_req(preset="sd-turbo", sampler="Euler a", steps=1, guidance=1.0, seed=5), reg))
    path = media.save_png(final.images[0], tmp_path / "x.png", final.meta)[0]
    req = engine.ENGINE_SPEC.request_from_settings(media.read_meta(path)["settings"])
    assert (req.preset, req.sampler, req.steps, req.seed, req.width) == ("sd-turbo", "Euler a", 1, 5, 64)


def test_standin_sd_cli_runs_with_previews_and_video(on_standins, tmp_path):
    from pipelines.__main__ import main

    out = tmp_path / "o" / "cat.png"
    assert main(["diffusion", "a cat", "--preset", "sd-v1-5", "--steps", "3", "--width", "64", "--height", "64",
                 "--preview-every", "1", "--video", "--out", str(out)]) == 0
    names = {p.name for p in out.parent.iterdir()}
    assert {"cat.png", "cat_strip.png", "cat.mp4"} <= names
    assert media.read_meta(out.parent / "cat.png")["settings"]["preset"] == "sd-v1-5"


def test_standin_sd_bad_folders_are_one_sentence(standin_hub, tmp_path):
    snap = next((standin_hub / ("models--" + SD.replace("/", "--")) / "snapshots").iterdir())
    broken = tmp_path / "no-vae"
    shutil.copytree(snap, broken)
    shutil.rmtree(broken / "vae")
    reg = Registry(device="cpu", allow_network=False)
    with pytest.raises(ModelUnavailable, match=r"no vae \(a Stable Diffusion folder holds"):
        reg.get(ComponentSpec("stable_diffusion", "path", str(broken)))
    wrong = tmp_path / "wrong"
    shutil.copytree(snap, wrong)
    index = json.loads((wrong / "model_index.json").read_text())
    (wrong / "model_index.json").write_text(json.dumps({**index, "_class_name": "UnCLIPPipeline", "prior": ["x", "y"]}))
    with pytest.raises(ModelUnavailable, match="not Stable Diffusion"):
        reg.get(ComponentSpec("stable_diffusion", "path", str(wrong)))
    with pytest.raises(ModelUnavailable, match="does-not/exist.*cannot be reached"):
        reg.get(ComponentSpec("stable_diffusion", "hub", "does-not/exist", {"index": "model_index.json"}))
    assert reg.get(ComponentSpec("stable_diffusion", "path", str(snap))) is not None   # the good one still loads


def test_standin_models_panel_says_what_each_preset_downloads_and_whether_it_can_load(on_standins):
    from ui.models import presets_markdown

    rows = {line.split("**")[1]: line for line in presets_markdown(Registry(device="cpu", allow_network=False))
            .splitlines() if line.startswith("| **")}
    assert rows["shapes"].endswith("| offline | ready |")
    assert "downloads about 4.2 GB on first use | ready |" in rows["sd-v1-5"]     # the stand-in is in the cache
    assert "Diffusion" in rows["sd-turbo"] and "unCLIP" not in rows["sd-turbo"]
    assert "cannot be reached (offline)." in rows["ddpm-cifar10"]                 # no stand-in: one sentence
    online = presets_markdown(Registry(device="cpu", allow_network=True))
    assert "| downloads on first use |" in online
