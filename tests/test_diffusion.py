"""The diffusion engine: model files, schedulers, the sampling loop, image to image, Stop, bad input,
unconditional diffusers checkpoints through the registry, the command line and the training command."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import diffusion as engine
from pipelines import media
from pipelines.diffusion_sampling import SAMPLERS, make_scheduler, predict_x0
from pipelines.events import Final, Step, generate
from pipelines.models import diffusion as dm
from pipelines.presets import ComponentSpec, PRESETS_DIR
from pipelines.registry import ModelUnavailable, Registry

WEIGHTS = PRESETS_DIR / "weights" / "shapes-diffusion"


@pytest.fixture(scope="module")
def parts(registry):
    """The built-in model, VQGAN and CLIP, loaded once through the registry."""
    p = engine.load_preset("shapes")
    return {role: registry.get(spec) for role, spec in engine.ENGINE_SPEC.components(p).items()}


def _sample(parts, **kw):
    req = engine.DiffusionRequest(**{"prompt": "a red circle", "steps": 4, "preview_every": 1, **kw})
    return list(engine.sample(req, parts["diffusion"], parts["vqgan"], parts["text_encoder"], torch.device("cpu")))


# -- the model file -------------------------------------------------------------------------------


def test_builtin_weights_are_small_and_carry_their_config():
    assert (WEIGHTS / "model.safetensors").stat().st_size < 10 * 2**20
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    assert cfg["latent_channels"] == 16 and cfg["latent_size"] == 8 and len(cfg["latent_std"]) == 16
    rec = json.loads((WEIGHTS / "train.json").read_text())
    assert "lab.train.diffusion" in rec["command"] and "seed" in rec


def test_tiny_model_round_trips_through_safetensors(tmp_path):
    model = dm.LatentDiffusion(dm.DiffusionConfig(block_out_channels=(32, 32), latent_mean=[0.5] * 16))
    dm.save_pretrained(model, tmp_path)
    back = dm.load_any(tmp_path)
    assert isinstance(back, dm.LatentDiffusion) and back.config.latent_mean == (0.5,) * 16
    z, t, text = torch.randn(2, 16, 8, 8), torch.tensor([0, 999]), torch.randn(2, 32, 128)
    with torch.no_grad():
        assert torch.allclose(model(z, t, text), back(z, t, text), atol=2e-2)  # float16 on disk
    h = torch.randn(2, 16, 8, 8)
    assert torch.allclose(back.denormalize(back.normalize(h)), h, atol=1e-6)


def test_token_embeddings_widen_a_trained_model_without_changing_it(tmp_path):
    """text_inputs ("last", "embed"): CLIP's token embeddings beside its last layer; zero columns at first."""
    from pipelines.models.clip import load_clip

    clip = load_clip(PRESETS_DIR / "weights" / "shapes-clip")
    model = dm.LatentDiffusion(dm.DiffusionConfig(block_out_channels=(32, 32))).eval()
    captions = ["a red circle", "a red star", ""]
    last = dm.text_states(model, clip, captions)
    wide = dm.with_text_inputs(model, ("last", "embed")).eval()
    both = dm.text_states(wide, clip, captions)
    assert last.shape == (3, 32, 128) and both.shape == (3, 32, 256) and torch.equal(both[..., :128], last)
    embed = both[..., 128:]
    ids = clip.tokenizer(captions, padding="max_length", max_length=32, return_tensors="pt")["input_ids"]
    text = clip.model.text_model.embeddings
    raw = text(input_ids=ids)                                         # token + position embeddings, no layer
    assert torch.allclose(embed, torch.nn.functional.layer_norm(raw, (128,)), atol=1e-5)
    assert abs(embed.std().item() - last.std().item()) < 0.1 and raw.std() < 0.2   # on the last layer's scale
    z, t = torch.randn(3, 16, 8, 8), torch.tensor([10, 500, 999])
    with torch.no_grad():
        assert torch.allclose(model(z, t, last), wide(z, t, both), atol=1e-5)   # the same model, to start with
        wide.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v.weight[:, 128:].normal_(0, 0.1)
        assert not torch.allclose(model(z, t, last), wide(z, t, both), atol=1e-3)  # and the new columns are read
    dm.save_pretrained(wide, tmp_path)
    back = dm.load_any(tmp_path)
    assert back.config.text_inputs == ("last", "embed") and back.config.context_dim == 256
    with pytest.raises(ValueError, match="text_inputs"):
        dm.DiffusionConfig(text_inputs=("penultimate",))
    with pytest.raises(ValueError, match="add text inputs after"):
        dm.with_text_inputs(wide, ("embed",))


def test_a_model_trained_top_left_first_reads_captions_in_that_form():
    """top_left_first: text_states rewrites 'A below B' as 'B above A' for such a model, and only for it."""
    from pipelines.models.clip import load_clip

    clip = load_clip(PRESETS_DIR / "weights" / "shapes-clip")
    plain = dm.LatentDiffusion(dm.DiffusionConfig(block_out_channels=(32, 32)))
    tlf = dm.LatentDiffusion(dm.DiffusionConfig(block_out_channels=(32, 32), top_left_first=True))
    below, above = "a red circle below a blue square", "a blue square above a red circle"
    assert torch.equal(dm.text_states(tlf, clip, [below]), dm.text_states(plain, clip, [above]))
    assert not torch.allclose(dm.text_states(plain, clip, [below]), dm.text_states(plain, clip, [above]))
    assert torch.equal(dm.text_states(tlf, clip, ["a cat"]), dm.text_states(plain, clip, ["a cat"]))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_x0_prediction_inverts_the_forward_process(kind):
    sched = make_scheduler("DDIM", {"prediction_type": kind})
    x0, eps, t = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4), 600
    a = sched.alphas_cumprod[t]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    assert torch.allclose(predict_x0(sched, out, x_t, t), x0, atol=1e-4)


def test_every_sampler_is_a_diffusers_scheduler_on_the_training_schedule():
    cfg = dm.DiffusionConfig().scheduler_config()
    for name in SAMPLERS:
        s = make_scheduler(name, cfg)
        s.set_timesteps(10)
        assert len(s.timesteps) == 10 and int(s.timesteps[0]) == 999  # trailing spacing starts at T - 1
    with pytest.raises(ValueError, match="Unknown sampler 'Heun'"):
        make_scheduler("Heun", cfg)


# -- the engine ----------------------------------------------------------------------------------


def test_text_to_image_streams_previews_and_is_reproducible(parts):
    events = _sample(parts, batch=2, seed=3, preview_every=2)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == [1, 2, 3, 4] and steps[-1].total == 4
    with_previews = [s for s in steps if s.previews]
    assert [s.step for s in with_previews] == [1, 3, 4]  # every 2 steps from the first, and the last
    assert with_previews[0].previews["x_t"].size == (64, 32)  # the batch side by side
    final = events[-1]
    assert isinstance(final, Final) and len(final.images) == 2 and final.images[0].size == (32, 32)
    assert final.meta["settings"]["seed"] == 3 and final.meta["steps_done"] == 4 and not final.stopped
    again = _sample(parts, batch=2, seed=3, preview_every=0)[-1]
    assert np.array_equal(np.asarray(again.images[1]), np.asarray(final.images[1]))
    other = _sample(parts, batch=2, seed=4, preview_every=0)[-1]
    assert not np.array_equal(np.asarray(other.images[0]), np.asarray(final.images[0]))


def test_clean_previews_show_the_colours_the_decoder_will_draw(parts):
    """The x0 preview colours each 8x8 cell by its nearest VQGAN code's mean colour: on real scenes'
    latents it is far closer to the true cell colours than the linear map, and the engine's last x0
    preview matches the finished picture's cells."""
    import shapes

    model, vqgan = parts["diffusion"], parts["vqgan"]
    assert len(model.config.preview_codes) == vqgan.codebook.shape[0]
    x = torch.from_numpy(shapes.sample_batch(64, 32, np.random.default_rng(77))[0]).permute(0, 3, 1, 2) / 127.5 - 1
    with torch.no_grad():
        z = model.normalize(vqgan.encode_latent(x))
        cells = torch.nn.functional.avg_pool2d(x, 4)
        clean = (model.preview_clean(z, vqgan) - cells).abs().mean().item()
        linear = (model.preview_rgb(z) - cells).abs().mean().item()
    assert clean < 0.3 and clean < 0.7 * linear, (clean, linear)
    events = _sample(parts, seed=5, steps=6, preview_every=1)
    last = np.asarray(events[-2].previews["x0_pred"], dtype=float)            # (32, 32, 3), cells enlarged
    final = np.asarray(events[-1].images[0], dtype=float)
    cell_means = final.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3))
    assert np.abs(last[::4, ::4] - cell_means).mean() < 0.15 * 255


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_runs_with_and_without_guidance(parts, sampler):
    for g in (1.0, 3.0):
        final = _sample(parts, sampler=sampler, guidance=g, eta=1.0, preview_every=0)[-1]
        assert np.asarray(final.images[0]).std() > 1  # a picture, not a flat colour


def test_image_to_image_keeps_the_init_at_low_strength(parts):
    import shapes

    init = shapes.render(shapes.parse_caption("a large white square on a black background"), 64, 0)
    keep = _sample(parts, init_image=init, strength=0.0, steps=10)
    assert not [e for e in keep if isinstance(e, Step)]  # strength 0: no step at all
    low = _sample(parts, init_image=init, strength=0.3, steps=10, prompt="a red circle on a blue background")
    assert low[-1].meta["steps_total"] == 3
    high = _sample(parts, init_image=init, strength=1.0, steps=10, prompt="a red circle on a blue background")
    ref = np.asarray(keep[-1].images[0], dtype=float)

    def dist(ev):
        return np.abs(np.asarray(ev[-1].images[0], dtype=float) - ref).mean()
    assert dist(low) < dist(high)
    assert low[-1].meta["settings"]["init_image"] == media.image_digest(init)


def _stop_after(n: int):
    """A Stop pressed after the engine's n-th check."""
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= n
    return stop


def test_stop_keeps_the_clean_estimate(parts):
    req = engine.DiffusionRequest(prompt="a red circle", steps=20, preview_every=0)
    final = generate(engine.sample(req, parts["diffusion"], parts["vqgan"], parts["text_encoder"], "cpu", _stop_after(2)))
    assert final.stopped and final.meta["steps_done"] == 2 and final.meta["stopped"]
    assert final.images[0].size == (32, 32)


BAD = [({"steps": 0}, "Steps must be a whole number from 1 to 1000"),
       ({"steps": 100000}, "Steps must be a whole number from 1 to 1000"),
       ({"guidance": -1}, "Guidance scale must be a number from 0 to 50"),
       ({"guidance": float("nan")}, "Guidance scale must be a number from 0 to 50"),
       ({"batch": 0}, "Batch size must be a whole number from 1 to 16"),
       ({"batch": 1000}, "Batch size must be a whole number from 1 to 16"),
       ({"strength": -0.1}, "Strength must be a number from 0 to 1"),
       ({"strength": 1.5}, "Strength must be a number from 0 to 1"),
       ({"eta": 2}, "Eta must be a number from 0 to 1"),
       ({"sampler": "Heun"}, "Unknown sampler 'Heun'"),
       ({"init_image": Image.new("RGB", (400, 20))}, "sides may differ by at most 4x")]


@pytest.mark.parametrize("change,message", BAD, ids=[next(iter(c)) + "=" + str(next(iter(c.values())))[:12] for c, _ in BAD])
def test_bad_input_is_one_clear_message_before_any_model_loads(change, message):
    spy = Registry(device="cpu", loaders={})  # no loaders: loading anything would fail differently
    with pytest.raises(ValueError, match=message):
        generate(engine.run(engine.DiffusionRequest(prompt="a red circle", **change), spy))
    assert spy.status() == []


def test_huge_or_broken_init_images_are_refused_by_the_loader(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 5000)).save(big)
    with pytest.raises(media.ImageInputError, match="(?i)init image"):
        media.load_image(big, name="init image")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(media.ImageInputError, match="(?i)init image"):
        media.load_image(bad, name="init image")


def test_hub_preset_offline_is_one_sentence(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    reg = Registry(device="cpu", allow_network=False)
    with pytest.raises(ModelUnavailable, match="google/ddpm-cifar10-32.*cannot be reached"):
        generate(engine.run(engine.DiffusionRequest(preset="ddpm-cifar10"), reg))


def test_png_metadata_rebuilds_the_request(parts, tmp_path):
    final = _sample(parts, prompt="a purple star", negative_prompt="a red circle", seed=9, guidance=2.5)[-1]
    path = media.save_png(final.images[0], tmp_path / "x.png", final.meta)[0]
    req = engine.ENGINE_SPEC.request_from_settings(media.read_meta(path)["settings"])
    assert (req.prompt, req.negative_prompt, req.seed, req.guidance, req.steps) == ("a purple star", "a red circle", 9, 2.5, 4)
    assert "a purple star" in Image.open(path).text["parameters"]


def test_strip_and_video_frames():
    a, b = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    assert engine.side_by_side(a, b).size == (66, 32)
    strip = engine.trajectory_strip([(a, b)] * 30, max_columns=12)
    assert strip.size == (12 * 34 - 2, 66)
    assert strip.getpixel((0, 0)) == (255, 0, 0) and strip.getpixel((0, 40)) == (0, 0, 255)
    assert engine.trajectory_strip([]) is None


# -- unconditional diffusers checkpoints -----------------------------------------------------------


def make_standin(folder, flat: bool):
    """A tiny unconditional UNet2DModel + DDPMScheduler saved in the diffusers layouts."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    sched = DDPMScheduler(num_train_timesteps=1000)
    if flat:  # google/ddpm-cifar10-32 keeps the UNet and scheduler configs side by side
        unet.save_pretrained(folder)
        sched.save_config(folder)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    else:
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("flat", [False, True], ids=["nested", "flat"])
def test_unconditional_diffusers_folder_loads_through_the_registry_and_samples(tmp_path, flat):
    folder = make_standin(tmp_path / "standin", flat)
    reg = Registry(device="cpu")
    model = reg.get(ComponentSpec("diffusion", "path", str(folder)))
    assert isinstance(model, dm.PixelDiffusion) and not model.conditional and model.sample_shape == (3, 8, 8)
    req = engine.DiffusionRequest(prompt="ignored", steps=3, batch=2, preview_every=1, sampler="DDIM")
    events = list(engine.sample(req, model, None, None, "cpu"))
    assert "unconditional" in events[0].notice
    assert len(events[-1].images) == 2 and events[-1].images[0].size == (8, 8)
    assert events[-1].meta["conditional"] is False


def test_hub_preset_runs_from_the_hub_cache(tmp_path, monkeypatch):
    """The real ddpm-cifar10 preset, its files put where the hub client caches them: no network needed."""
    from huggingface_hub import constants

    snap = tmp_path / "models--google--ddpm-cifar10-32" / "snapshots" / ("0" * 40)
    make_standin(snap, flat=True)
    (tmp_path / "models--google--ddpm-cifar10-32" / "refs").mkdir()
    (tmp_path / "models--google--ddpm-cifar10-32" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    reg = Registry(device="cpu", allow_network=False)
    final = generate(engine.run(engine.DiffusionRequest(preset="ddpm-cifar10", steps=2), reg))
    assert final.images[0].size == (8, 8) and final.meta["preset"] == "ddpm-cifar10"
    assert final.meta["models"]["diffusion"]["weights_id"]


# -- command line and training -------------------------------------------------------------------


def test_cli_writes_pictures_strip_and_video(tmp_path, capsys):
    out = tmp_path / "o" / "pic.png"
    from pipelines.__main__ import main

    assert main(["diffusion", "a red circle", "--steps", "3", "--batch", "2", "--preview-every", "1", "--video",
                 "--out", str(out)]) == 0
    names = {p.name for p in out.parent.iterdir()}
    assert {"pic_0.png", "pic_1.png", "pic_strip.png", "pic.mp4"} <= names
    assert media.read_meta(out.parent / "pic_1.png")["batch_index"] == 1
    assert main(["diffusion", "a red circle", "--steps", "0"]) == 2
    assert "error: Steps must be" in capsys.readouterr().out


def test_training_command_trains_resumes_and_exports(tmp_path):
    from lab.train import diffusion as train

    out, run = tmp_path / "w", tmp_path / "run"
    common = ["--out", str(out), "--run-dir", str(run), "--batch", "4", "--channels", "32,32", "--log-every", "1",
              "--sample-every", "2", "--ckpt-every", "1", "--stat-images", "16", "--grid-steps", "2"]
    train.main(common + ["--steps", "2"])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2 and (run / "samples_000002.png").exists()
    train.main(common + ["--steps", "3", "--resume"])
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    rec = json.loads((out / "train.json").read_text())
    assert "lab.train.diffusion" in rec["command"] and rec["seed"] == 0 and math.isfinite(rec["metrics"]["loss"])
    model = dm.load_any(out)
    assert model.config.block_out_channels == (32, 32) and (out / "samples.png").exists()
    # a run shorter than --log-every still exports (it once failed reading an empty log), here widened too
    short = tmp_path / "short"
    train.main(["--out", str(short), "--run-dir", str(tmp_path / "run_short"), "--init", str(out), "--batch", "2",
                "--steps", "1", "--log-every", "50", "--sample-every", "0", "--grid-steps", "1",
                "--text-inputs", "last,embed"])
    assert dm.load_any(short).config.text_inputs == ("last", "embed")
    assert json.loads((short / "train.json").read_text())["metrics"] == {}
    # continuing from that export keeps its text inputs unless told (it once fell back to "last" and refused)
    again = tmp_path / "again"
    train.main(["--out", str(again), "--run-dir", str(tmp_path / "run_again"), "--init", str(short),
                "--batch", "2", "--steps", "1", "--sample-every", "0", "--grid-steps", "1", "--top-left-first"])
    cfg = dm.load_any(again).config
    assert cfg.text_inputs == ("last", "embed") and cfg.top_left_first
    with pytest.raises(SystemExit):                      # an unknown text input is argparse's one-line error
        train.main(["--out", str(short), "--text-inputs", "last,penultimate"])


# -- previews an artist can read ---------------------------------------------------------------------


def test_previews_are_pictures_and_the_last_one_is_the_result(parts):
    """x0_pred goes through the decoder as the result does (no 8x8 colour cells); the MAD to the result
    falls along the run and is 0 at the last preview, whose x_t is the result too."""
    evs = list(_sample(parts, steps=12, preview_every=1, batch=2))
    final, previews = evs[-1], [e.previews for e in evs if isinstance(e, Step) and e.previews]
    result = np.concatenate([np.asarray(im) for im in final.images], axis=1).astype(float)
    mad = [np.abs(np.asarray(p["x0_pred"]).astype(float) - result).mean() for p in previews]
    assert len(previews) == 12 and mad[-1] == 0 and mad[0] > mad[len(mad) // 2] > mad[-1]
    assert np.array_equal(np.asarray(previews[-1]["x_t"]), result.astype(np.uint8))
    cells = np.asarray(previews[0]["x0_pred"]).astype(float)[:32, :32].reshape(8, 4, 8, 4, 3)
    assert (cells.std(axis=(1, 3)) > 0).mean() > 0.5        # not a mosaic of flat 4x4 cells


def test_a_stopped_run_previews_the_picture_it_keeps(parts):
    req = engine.DiffusionRequest(prompt="a red circle", steps=25, preview_every=10)
    evs = list(engine.sample(req, parts["diffusion"], parts["vqgan"], parts["text_encoder"], "cpu", _stop_after(4)))
    final, last = evs[-1], [e for e in evs if isinstance(e, Step) and e.previews][-1]
    assert final.stopped and final.meta["steps_done"] == 4 and last.step == 4
    assert np.array_equal(np.asarray(last.previews["x0_pred"]), np.asarray(final.images[0]))


def test_auto_previews_pick_a_cadence_and_say_so(parts):
    evs = list(_sample(parts, steps=30, preview_every=-1))
    steps = [e for e in evs if isinstance(e, Step)]
    n = int(steps[-1].metrics["preview_every"])
    shown = [e for e in steps if e.previews]
    assert n >= 1 and shown[0].step == 1 and shown[-1].step == 30
    # after each preview the cadence is picked again from the costs so far (a busy machine changes them):
    # the next preview comes no sooner than the cadence chosen then, except the last step's
    assert all(b.step - a.step >= int(a.metrics["preview_every"]) for a, b in zip(shown[:-2], shown[1:-1]))
