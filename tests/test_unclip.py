"""The unCLIP engine: prior and decoder files, the two stages, candidate choice, variations, interpolation,
Stop, bad input, PNG settings, the registry's loaders (Karlo's diffusers layout on a tiny stand-in), the
command line and the training command."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import shapes
from pipelines import media
from pipelines import unclip as engine
from pipelines.events import Final, Step, generate
from pipelines.models import unclip as um
from pipelines.presets import PRESETS_DIR, ComponentSpec
from pipelines.registry import ModelUnavailable, Registry

WEIGHTS = PRESETS_DIR / "weights"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(registry):
    """Tiny random prior and decoder over the built-in VQGAN and CLIP (fast, untrained)."""
    preset = engine.load_preset("shapes")
    vqgan, clip = registry.get(preset.components["vqgan"]), registry.get(preset.components["clip"])
    torch.manual_seed(0)
    prior = um.DiffusionPrior(um.PriorConfig(n_layer=1, n_embd=32, n_head=2)).eval()
    decoder = um.UnCLIPDecoder(um.DecoderConfig(block_out_channels=(32, 32), n_head=2)).eval()
    return um.UnCLIPParts(prior, decoder, vqgan, clip)


def _req(**kw):
    return engine.UnCLIPRequest(**{"prompt": "a red circle", "prior_steps": 3, "steps": 3, "preview_every": 1, **kw})


def _circle(seed=0) -> Image.Image:
    return shapes.render(shapes.parse_caption("a large red circle on a blue background"), 32, seed)


# -- the model file -------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["prior", "decoder"])
def test_builtin_weights_are_small_and_carry_their_record(part):
    folder = WEIGHTS / f"shapes-unclip-{part}"
    assert (folder / "model.safetensors").stat().st_size < 10 * 2**20
    assert json.loads((folder / "config.json").read_text())["unclip"] == part
    rec = json.loads((folder / "train.json").read_text())
    assert f"lab.train.unclip {part}" in rec["command"] and "seed" in rec
    assert "purple star" in rec["held_out_excluded"]


def test_prior_and_decoder_round_trip_and_refuse_the_wrong_kind(tmp_path, tiny):
    um.save_pretrained(tiny.prior, tmp_path / "p")
    um.save_pretrained(tiny.decoder.model, tmp_path / "d")  # parts hold it wrapped for sampling
    prior, decoder = um.from_pretrained(tmp_path / "p", "prior"), um.from_pretrained(tmp_path / "d", "decoder")
    cond = torch.randn(2, tiny.prior.config.cond_len, 128)
    x, t = torch.randn(2, 128), torch.tensor([0, 999])
    with torch.no_grad():
        assert torch.allclose(tiny.prior(x, t, cond), prior(x, t, cond), atol=2e-2)  # float16 on disk
        z, e = torch.randn(2, 16, 8, 8), torch.randn(2, 128)
        assert torch.allclose(tiny.decoder.model(z, t, e), decoder(z, t, e), atol=2e-2)
    with pytest.raises(ValueError, match="no unCLIP prior"):
        um.from_pretrained(tmp_path / "d", "prior")


def test_sampling_clamps_the_decoders_clean_estimate(tiny):
    from pipelines.diffusion_sampling import make_scheduler, predict_x0

    wrapped, raw = tiny.decoder, tiny.decoder.model
    assert isinstance(wrapped, um.ClampedDenoiser) and wrapped.limit == 3.0
    sched = make_scheduler("DDPM", raw.scheduler_config)
    z, e = torch.randn(4, 16, 8, 8), torch.randn(4, 128)
    with torch.no_grad():
        for t in (999, 500, 10):
            tt = torch.full((4,), t)
            x0 = predict_x0(sched, wrapped(z, tt, e), z, t)
            x0_raw = predict_x0(sched, raw(z, tt, e), z, t)
            assert x0.abs().max() <= 3.0 + 1e-3
            inside = x0_raw.abs() < 3.0
            assert torch.allclose(x0[inside], x0_raw[inside], atol=1e-3)  # in-range estimates are untouched


def test_prior_reads_the_text_and_is_causal(tiny):
    cond = tiny.prompt_cond(["a red circle", "a blue star"])
    assert cond.shape == (2, 32 + 1, 128)  # token states + the text embedding folded to the same width
    x, t = torch.randn(2, 128), torch.tensor([500, 500])
    with torch.no_grad():
        out = tiny.prior(x, t, cond)
        assert not torch.allclose(out[0], out[1])  # the caption matters
        # causal: the query reads everything before it, so changing x_t changes the output
        assert not torch.allclose(out, tiny.prior(x + 1, t, cond))


# -- the engine -----------------------------------------------------------------------------------


def test_text_to_image_runs_both_stages_with_previews_and_keeps_the_closest_candidate(tiny):
    events = list(engine.sample(_req(candidates=3, batch=2), tiny, CPU))
    steps = [e for e in events if isinstance(e, Step)]
    prior = [e for e in steps if e.stage == "prior"]
    decoder = [e for e in steps if e.stage == "decoder"]
    assert [e.step for e in prior] == [1, 2, 3] and [e.step for e in decoder] == [1, 2, 3]
    assert {(e.stage_index, e.stage_count) for e in prior} == {(0, 2)}
    assert {(e.stage_index, e.stage_count) for e in decoder} == {(1, 2)}
    assert all(len(e.captions) == 3 for e in prior)  # the prior's estimate by its nearest captions
    assert all(set(e.previews) == {"x_t", "x0_pred"} and e.previews["x_t"].size == (64, 32) for e in decoder)
    final = events[-1]
    assert isinstance(final, Final) and len(final.images) == 2 and final.images[0].size == (32, 32)
    for item in final.meta["prior"]:  # the kept candidate is the one most similar to the text
        assert item["candidate"] == int(np.argmax(item["similarity"])) and len(item["similarity"]) == 3
    again = generate(engine.sample(_req(candidates=3, batch=2), tiny, CPU))
    other = generate(engine.sample(_req(candidates=3, batch=2, seed=1), tiny, CPU))
    assert np.array_equal(np.asarray(final.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(final.images[0]), np.asarray(other.images[0]))


def test_variations_paint_n_pictures_from_one_embedding(tiny):
    final = generate(engine.sample(_req(mode="variations", image=_circle(), batch=4), tiny, CPU))
    assert len(final.images) == 4 and len(final.meta["similarity_to_source"]) == 4
    assert len({np.asarray(im).tobytes() for im in final.images}) > 1  # different noise, different pictures
    assert "prior" not in final.meta


def test_variation_strength_runs_that_share_of_the_schedule_from_the_noised_source(tiny):
    src = _circle()
    events = list(engine.sample(_req(mode="variations", image=src, batch=2, steps=10, strength=0.3), tiny, CPU))
    steps, final = events[:-1], events[-1]
    assert [s.step for s in steps] == [1, 2, 3] and steps[0].total == 3 and final.meta["steps_done"] == 3
    # strength 0 paints nothing new: the source through the VQGAN, the same for every noise
    copy = generate(engine.sample(_req(mode="variations", image=src, batch=2, strength=0.0), tiny, CPU))
    assert final.meta["settings"]["strength"] == 0.3 and copy.meta["steps_done"] == 0
    with torch.no_grad():
        through = tiny.decode(tiny.encode([src]))[0]
    assert np.array_equal(np.asarray(copy.images[0]), np.asarray(media.to_pil(through)))
    assert np.array_equal(np.asarray(copy.images[0]), np.asarray(copy.images[1]))
    # the lower the strength, the closer the variations stay to the source (the untrained decoder
    # paints noise, so from pure noise they land far from it)
    def distance(strength):
        out = generate(engine.sample(_req(mode="variations", image=src, batch=2, steps=10, strength=strength),
                                     tiny, CPU))
        return np.mean([np.abs(np.asarray(im, float) - np.asarray(src, float)).mean() for im in out.images])
    assert distance(0.2) < distance(1.0)


def test_slerp_keeps_unit_norm_and_hits_both_ends():
    a, b = torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)
    path = engine.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    assert torch.allclose(path.norm(dim=-1), torch.ones(5), atol=1e-5)
    angles = torch.arccos((path[:-1] * path[1:]).sum(-1).clamp(-1, 1))
    assert torch.allclose(angles, angles[0].expand(4), atol=1e-4)  # equal steps along the great circle


def test_interpolation_shares_one_noise_and_its_ends_are_the_ends(tiny):
    img = _circle()
    final = generate(engine.sample(_req(mode="interpolate", image=img, prompt_b="a blue star", frames=5), tiny, CPU))
    assert len(final.images) == 5 and len(final.meta["prior"]) == 1  # only the prompt end went through the prior
    # the first frame is the variation of the picture from the same noise
    alone = generate(engine.sample(_req(mode="interpolate", image=img, image_b=_circle(1), frames=2), tiny, CPU))
    assert np.array_equal(np.asarray(final.images[0]), np.asarray(alone.images[0]))
    strip = media.strip(final.images)
    assert strip.size == (5 * 32 + 4 * 2, 32)


def test_stop_in_the_decoder_keeps_the_clean_estimate_and_in_the_prior_paints_nothing(tiny):
    calls = {"n": 0}

    def stop_after(k):
        def check():
            calls["n"] += 1
            return calls["n"] >= k
        return check

    final = generate(engine.sample(_req(steps=10, prior_steps=2), tiny, CPU, stop_after(3)))
    assert final.stopped and final.meta["steps_done"] == 1 and final.meta["stopped_in"] == "decoder"
    assert len(final.images) == 1
    calls["n"] = 0
    final = generate(engine.sample(_req(prior_steps=10), tiny, CPU, stop_after(1)))
    assert final.stopped and final.images == [] and final.meta["stopped_in"] == "prior"


@pytest.mark.parametrize("change, message", [
    ({"mode": "interpolate", "prompt_b": "a red circle"}, "same"),
    ({"mode": "interpolate", "image": Image.new("RGB", (32, 32), "red"),
      "image_b": Image.new("RGB", (32, 32), "red")}, "same"),
    ({"mode": "interpolate", "prompt_b": "a blue star", "frames": 0}, "Frames must be a whole number from 2 to 64"),
    ({"mode": "interpolate", "prompt_b": "a blue star", "frames": 10_000}, "from 2 to 64"),
    ({"mode": "interpolate", "prompt_b": " "}, "second end"),
    ({"mode": "variations"}, "Variations need a picture"),
    ({"mode": "variations", "image": Image.new("RGB", (200, 20))}, "crop it closer"),
    ({"steps": 0}, "Decoder steps must be"),
    ({"prior_guidance": -1}, "Prior guidance must be"),
    ({"candidates": 17}, "Prior samples must be"),
    ({"mode": "variations", "image": Image.new("RGB", (32, 32)), "strength": 1.5}, "Variation strength must be"),
    ({"batch": 1.5}, "Batch size must be a whole number"),
    ({"sampler": "Euler"}, "Unknown decoder sampler"),
    ({"mode": "paint"}, "Unknown mode"),
])
def test_bad_input_is_one_clear_message_before_any_model_loads(change, message):
    spy = Registry(device="cpu", loaders={})  # no loaders: loading anything would fail differently
    with pytest.raises(ValueError, match=message):
        generate(engine.run(_req(**change), spy))


def test_an_unreadable_image_to_vary_is_refused_by_the_loader(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(media.ImageInputError, match="(?i)image to vary"):
        media.load_image(bad, name="image to vary")
    from pipelines.__main__ import main

    assert main(["unclip", "--mode", "variations", "--image", str(bad)]) == 2


def test_png_metadata_rebuilds_the_request(tiny, tmp_path):
    final = generate(engine.sample(_req(mode="interpolate", prompt_b="a blue star", frames=3, seed=7), tiny, CPU))
    path = media.save_png(final.images[0], tmp_path / "x.png", final.meta)[0]
    req = engine.ENGINE_SPEC.request_from_settings(media.read_meta(path)["settings"])
    assert req == engine.validate(_req(mode="interpolate", prompt_b="a blue star", frames=3, seed=7))


def test_nearest_captions_find_the_caption_itself(tiny):
    emb = tiny.text_embedding(["a large red circle on the left", "a small blue star above a green cross"])
    near = engine.nearest_captions(tiny, emb, k=1)
    assert near[0][0][0] == "a large red circle on the left" and near[0][0][1] > 0.99


# -- the registry ---------------------------------------------------------------------------------


def test_builtin_pair_loads_through_the_registry_and_runs(registry):
    final = generate(engine.run(_req(batch=2, candidates=2, steps=4), registry))
    assert len(final.images) == 2 and final.meta["models"]["unclip_prior"]["key"].endswith("shapes-unclip-prior")
    assert set(final.meta["models"]) == set(engine.ENGINE_SPEC.components(engine.load_preset("shapes")))   # by role


def test_a_folder_of_the_wrong_kind_is_one_clear_message(tmp_path, tiny):
    um.save_pretrained(tiny.prior, tmp_path / "p")
    reg = Registry(device="cpu", weights_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="no unCLIP decoder"):
        reg.get(ComponentSpec("unclip_decoder", "builtin", "p"))


@pytest.fixture(scope="module")
def karlo_folder(tmp_path_factory):
    from pipelines.models.karlo import save_tiny_standin

    return save_tiny_standin(tmp_path_factory.mktemp("karlo") / "karlo-tiny")


def test_karlo_layout_loads_through_the_registry_and_runs_every_mode(karlo_folder):
    index = json.loads((karlo_folder / "model_index.json").read_text())
    assert index["_class_name"] == "UnCLIPPipeline"
    assert {"prior", "decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder", "tokenizer",
            "prior_scheduler", "decoder_scheduler", "super_res_scheduler"} <= set(index)
    reg = Registry(device="cpu")
    karlo = reg.get(ComponentSpec("karlo", "path", str(karlo_folder)))
    text = generate(engine.sample(_req(batch=2, candidates=2, steps=2, prior_steps=2), karlo, CPU))
    assert len(text.images) == 2 and text.images[0].size == (32, 32)  # after super-resolution
    vary = generate(engine.sample(_req(mode="variations", image=_circle(), batch=2, steps=2), karlo, CPU))
    assert len(vary.images) == 2
    near = generate(engine.sample(_req(mode="variations", image=_circle(), batch=2, steps=4, strength=0.5), karlo, CPU))
    assert len(near.images) == 2 and near.meta["steps_done"] == 2   # from the source at its 64 px size, noised
    events = list(engine.sample(_req(mode="interpolate", image=_circle(), prompt_b="a blue star", frames=3,
                                     steps=2, prior_steps=2), karlo, CPU))
    assert len(events[-1].images) == 3
    previews = [e.previews for e in events if isinstance(e, Step) and "x_t" in e.previews]
    assert previews[0]["x_t"].size == (3 * 16, 16)      # previews: the decoder's 16 px sample, ...
    assert previews[-1]["x0_pred"].size == (3 * 32, 32)  # ... and last the result, after super-resolution


def test_karlo_preset_offline_is_one_sentence(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    reg = Registry(device="cpu", allow_network=False)
    with pytest.raises(ModelUnavailable, match="karlo-v1-alpha"):
        generate(engine.run(engine.UnCLIPRequest(prompt="a cat", preset="karlo"), reg))


# -- command line and training --------------------------------------------------------------------


def test_cli_text_variations_and_interpolation(tmp_path, capsys):
    out = tmp_path / "o" / "pic.png"
    from pipelines.__main__ import main

    assert main(["unclip", "a red circle", "--steps", "3", "--prior-steps", "3", "--batch", "2", "--video",
                 "--out", str(out)]) == 0
    assert (tmp_path / "o" / "pic_0.png").exists() and (tmp_path / "o" / "pic.mp4").exists()
    assert media.read_meta(tmp_path / "o" / "pic_0.png")["engine"] == "unclip"
    src = tmp_path / "src.png"
    _circle().save(src)
    assert main(["unclip", "--mode", "variations", "--image", str(src), "--batch", "2", "--steps", "2",
                 "--out", str(tmp_path / "v.png")]) == 0
    assert (tmp_path / "v_1.png").exists()
    assert main(["unclip", "--mode", "interpolate", "a red circle", "--prompt-b", "a blue star", "--frames", "3",
                 "--steps", "2", "--prior-steps", "2", "--video", "--out", str(tmp_path / "b.png")]) == 0
    assert Image.open(tmp_path / "b_strip.png").height >= 128 and (tmp_path / "b.mp4").exists()
    assert (tmp_path / "b_2.png").exists()      # every frame of the blend
    assert main(["unclip", "--mode", "interpolate", "a red circle", "--prompt-b", "a red circle"]) == 2
    assert "same" in capsys.readouterr().out


def test_training_commands_train_resume_and_export(tmp_path):
    from pipelines.models.unclip import from_pretrained
    from lab.train import unclip as train

    for part, extra in (("prior", ["--width", "32", "--layers", "1", "--heads", "2", "--eval-scenes", "8"]),
                        ("decoder", ["--channels", "32,32", "--stat-images", "16", "--cache", "16",
                                     "--grid-steps", "2"])):
        out, run = tmp_path / part, tmp_path / f"run_{part}"
        args = [part, "--out", str(out), "--run-dir", str(run), "--batch", "4", "--log-every", "1",
                "--sample-every", "100", "--ckpt-every", "1", *extra]
        train.main(args + ["--steps", "1"])
        train.main(args + ["--steps", "2", "--resume"])
        logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
                  if "loss" in line]
        assert logged == [1, 2]  # the resumed run continued at step 2
        rec = json.loads((out / "train.json").read_text())
        assert f"lab.train.unclip {part}" in rec["command"] and rec["seed"] == 0
        assert from_pretrained(out, part) is not None


# -- the decoder that also reads the caption, started from the diffusion engine's UNet --------------


@pytest.fixture(scope="module")
def tiny_text_model():
    from pipelines.models.diffusion import DiffusionConfig, LatentDiffusion

    torch.manual_seed(1)
    base = LatentDiffusion(DiffusionConfig(block_out_channels=(32, 32), n_head=2, prediction_type="v_prediction"))
    base.set_latent_stats(torch.linspace(-0.2, 0.2, 16), torch.linspace(0.5, 1.5, 16))
    return base.eval()


def test_a_text_reading_decoder_widens_to_the_token_embeddings_unchanged(tiny, tmp_path):
    """text_inputs ("last", "embed") on the decoder: its image tokens and text tokens get the wider width."""
    from pipelines.models.diffusion import with_text_inputs

    dec = um.UnCLIPDecoder(um.DecoderConfig(block_out_channels=(32, 32), n_head=2, text_cond=True)).eval()
    torch.nn.init.normal_(dec.to_tokens.weight, std=0.1)
    torch.nn.init.normal_(dec.to_tokens.bias, std=0.1)
    wide = with_text_inputs(dec, ("last", "embed")).eval()
    assert isinstance(wide, um.UnCLIPDecoder) and wide.config.cond_dim == 128 + 32 * 256
    z, t = torch.randn(2, 16, 8, 8), torch.tensor([300, 800])
    e = torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)
    captions = ["a red circle", "a blue star on the left"]
    cond, cond_wide = um.decoder_cond(dec, tiny.clip, e, captions), um.decoder_cond(wide, tiny.clip, e, captions)
    assert cond_wide.shape == (2, wide.config.cond_dim)
    with torch.no_grad():
        assert torch.allclose(dec(z, t, cond), wide(z, t, cond_wide), atol=1e-5)
        tokens = wide.to_tokens(e * 128 ** 0.5).view(2, 4, 256)
        assert torch.allclose(tokens[..., :128], dec.to_tokens(e * 128 ** 0.5).view(2, 4, 128))
        assert tokens[..., 128:].abs().max() == 0                      # the new half of each image token
    um.save_pretrained(wide, tmp_path)
    back = um.from_pretrained(tmp_path, kind="decoder")
    assert back.config.text_inputs == ("last", "embed")


def test_a_text_reading_decoder_starts_from_the_diffusion_unet_and_reads_both_inputs(tiny, tiny_text_model):
    from pipelines.models.diffusion import encode_text

    base, clip = tiny_text_model, tiny.clip
    dec = um.UnCLIPDecoder(um.DecoderConfig(block_out_channels=(32, 32), n_head=2, prediction_type="v_prediction",
                                            text_cond=True))
    dec.init_from_diffusion(base)
    dec.eval()
    for k, v in base.unet.state_dict().items():      # every UNet weight copied
        assert torch.equal(dec.unet.state_dict()[k], v), k
    assert torch.equal(dec.latent_std, base.latent_std) and torch.equal(dec.latent_mean, base.latent_mean)
    assert dec.to_tokens.weight.abs().sum() == 0 and dec.unet.class_embedding.linear_2.weight.abs().sum() == 0
    assert um.sampling_denoiser(dec) is dec          # v-prediction: no clamp wrapper
    z, t = torch.randn(2, 16, 8, 8), torch.tensor([300, 800])
    e = torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)
    captions = ["a red circle", "a blue star on the left"]
    cond = um.decoder_cond(dec, clip, e, captions)
    assert cond.shape == (2, 128 + 32 * 128) == (2, dec.config.cond_dim)
    with torch.no_grad():
        # at step 0 it is close to the text model (only the zero image tokens take some attention)
        ref = base(z, t, encode_text(clip, captions, 32))
        out = dec(z, t, cond)
        assert (out - ref).abs().mean() < 0.5 * ref.abs().mean()
        # once trained, both inputs matter: the caption ...
        assert not torch.allclose(out, dec(z, t, um.decoder_cond(dec, clip, e, ["a green cross", "a black square"])))
        # ... and the embedding (give the new inputs weights to see it)
        torch.nn.init.normal_(dec.to_tokens.weight, std=0.1)
        assert not torch.allclose(dec(z, t, cond), dec(z, t, um.decoder_cond(dec, clip, -e, captions)))
    # the engine hands it the prompt in text mode and the empty caption otherwise
    parts = um.UnCLIPParts(tiny.prior, dec, tiny.vqgan, clip)
    assert torch.allclose(parts.decoder_cond(e, None)[:, 128:], parts.decoder_null(2)[:, 128:])
    assert not torch.allclose(parts.decoder_cond(e, captions)[:, 128:], parts.decoder_null(2)[:, 128:])
    events = list(engine.sample(_req(batch=2), parts, CPU))
    assert isinstance(events[-1], Final) and len(events[-1].images) == 2


def _other_text_encoder(clip):
    """A second CLIP: the same one with its text token embeddings changed (another text encoder)."""
    import copy

    other = copy.deepcopy(clip)
    with torch.no_grad():
        other.model.text_model.embeddings.token_embedding.weight.mul_(-1.5)
    return other


def test_embeddings_and_the_decoders_text_can_come_from_two_clips(tiny, tiny_text_model):
    """unCLIP's embeddings from one CLIP, the decoder's token states from another (the preset's
    `clip` and `text_encoder`): each part reads the CLIP it was trained with."""
    from pipelines.models.diffusion import text_states

    text_clip = _other_text_encoder(tiny.clip)
    dec = um.UnCLIPDecoder(um.DecoderConfig(block_out_channels=(32, 32), n_head=2, prediction_type="v_prediction",
                                            text_cond=True))
    dec.init_from_diffusion(tiny_text_model)
    models = {"unclip_prior": tiny.prior, "unclip_decoder": dec.eval(), "vqgan": tiny.vqgan, "clip": tiny.clip,
              "text_encoder": text_clip}
    parts = engine.parts_from(models)
    assert parts.clip is tiny.clip and parts.text_clip is text_clip
    e = torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)
    captions = ["a red circle", "a blue star on the left"]
    states = parts.decoder_cond(e, captions)[:, 128:]
    assert torch.equal(states, text_states(dec, text_clip, captions).flatten(1))
    assert not torch.allclose(states, text_states(dec, tiny.clip, captions).flatten(1))
    assert torch.equal(parts.decoder_null(2)[:, 128:], text_states(dec, text_clip, ["", ""]).flatten(1))
    # the prior's conditioning, ranking and variations stay in the embedding CLIP's space
    assert torch.equal(parts.prompt_cond(captions), um.encode_prompt(tiny.clip, captions, tiny.prior.config.text_len))
    assert torch.equal(parts.image_embedding([_circle()]), um.UnCLIPParts(tiny.prior, dec, tiny.vqgan,
                                                                              tiny.clip).image_embedding([_circle()]))
    assert parts.pool_key is tiny.clip
    # the preset's roles: the built-in preset names a text encoder, and the engine takes it
    import types
    preset = engine.load_preset("shapes")
    assert engine.ENGINE_SPEC.components(preset)["text_encoder"] == preset.components["text_encoder"]
    one = types.SimpleNamespace(name="one", components={k: v for k, v in preset.components.items() if k != "text_encoder"})
    assert "text_encoder" not in engine.ENGINE_SPEC.components(one)
    # without a text encoder, the one CLIP serves both
    shared = engine.parts_from({k: v for k, v in models.items() if k != "text_encoder"})
    assert shared.clip is tiny.clip and shared.text_clip is tiny.clip
    events = list(engine.sample(_req(batch=2), parts, CPU))
    assert isinstance(events[-1], Final) and len(events[-1].images) == 2


def test_the_presets_unclip_models_name_the_clips_the_preset_gives_them():
    """The committed prior and decoder were trained with the VQGAN and CLIPs the shapes preset hands
    them: the embeddings from `clip`, the decoder's token states from `text_encoder` where the preset
    has one (else `clip`)."""
    preset = engine.load_preset("shapes")
    specs = engine.ENGINE_SPEC.components(preset)
    embedding = specs["clip"].location
    text = specs.get("text_encoder", specs["clip"]).location
    prior = json.loads((WEIGHTS / specs["unclip_prior"].location / "config.json").read_text())
    decoder = json.loads((WEIGHTS / specs["unclip_decoder"].location / "config.json").read_text())
    assert prior["clip"] == embedding
    assert (decoder.get("image_clip") or decoder["clip"]) == embedding and decoder["clip"] == text
    assert decoder["vqgan"] == specs["vqgan"].location


def test_decoder_training_from_the_diffusion_model_with_text(tmp_path, tiny_text_model, tiny):
    from pipelines.models.diffusion import save_pretrained as save_diffusion
    from lab.train import unclip as train

    save_diffusion(tiny_text_model, tmp_path / "diffusion")
    out, run = tmp_path / "decoder", tmp_path / "run"
    args = ["decoder", "--out", str(out), "--run-dir", str(run), "--batch", "4", "--log-every", "1",
            "--sample-every", "100", "--ckpt-every", "1", "--grid-steps", "2", "--steps", "2",
            "--init-diffusion", str(tmp_path / "diffusion"), "--text-cond"]
    train.main(args)
    dec = um.from_pretrained(out, "decoder")
    assert dec.config.text_cond and dec.config.prediction_type == "v_prediction"
    assert dec.config.block_out_channels == (32, 32)
    assert torch.allclose(dec.latent_std, tiny_text_model.latent_std, atol=1e-3)
    assert "--init-diffusion" in json.loads((out / "train.json").read_text())["command"]
    with pytest.raises(SystemExit, match="drop --cache"):
        train.main(args + ["--cache", "16"])
    # the token states from another CLIP (--text-clip), the embeddings from --clip: both recorded
    from pipelines.models.clip import save_clip
    from pipelines.models.diffusion import text_states as states_of

    save_clip(_other_text_encoder(tiny.clip), tmp_path / "text-clip")
    out_tc = tmp_path / "decoder_tc"
    train.main(["decoder", "--out", str(out_tc), "--run-dir", str(tmp_path / "run_tc"), "--batch", "4", "--steps", "1",
                "--sample-every", "100", "--grid-steps", "2", "--init-diffusion", str(tmp_path / "diffusion"),
                "--text-cond", "--text-clip", str(tmp_path / "text-clip")])
    dec_tc = um.from_pretrained(out_tc, "decoder")
    assert (dec_tc.config.clip, dec_tc.config.image_clip) == ("text-clip", "shapes-clip")
    assert dec.config.image_clip == ""                         # one CLIP for both: nothing extra to record
    assert not torch.allclose(states_of(dec_tc, tiny.clip, ["a red circle"]),
                              states_of(dec_tc, _other_text_encoder(tiny.clip), ["a red circle"]))
    with pytest.raises(SystemExit, match="--text-clip is for the decoder"):
        train.main(["prior", "--out", str(tmp_path / "p"), "--steps", "1", "--text-clip", str(tmp_path / "text-clip")])
    # a text model reading the token embeddings, trained top-left-first: the decoder reads its text the same
    # way (the same cross-attention widths, the same caption form), and starts as that model
    import dataclasses

    from pipelines.models.diffusion import LatentDiffusion, text_states, with_text_inputs
    wide = with_text_inputs(tiny_text_model, ("last", "embed"))
    wide = LatentDiffusion(dataclasses.replace(wide.config, top_left_first=True))
    wide.load_state_dict(with_text_inputs(tiny_text_model, ("last", "embed")).state_dict())
    torch.nn.init.normal_(wide.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight, std=0.2)
    save_diffusion(wide.eval(), tmp_path / "wide")
    out2 = tmp_path / "decoder_wide"
    train.main(["decoder", "--out", str(out2), "--run-dir", str(tmp_path / "run2"), "--batch", "4", "--steps", "1",
                "--sample-every", "100", "--grid-steps", "2", "--init-diffusion", str(tmp_path / "wide"), "--text-cond",
                "--lr", "0"])
    dec = um.from_pretrained(out2, "decoder").eval()
    assert dec.config.text_inputs == ("last", "embed") and dec.config.top_left_first
    clip = tiny.clip
    caption = ["a red circle below a blue square"]
    assert torch.equal(text_states(dec, clip, caption), text_states(dec, clip, ["a blue square above a red circle"]))
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.allclose(dec.unet.state_dict()[key], wide.unet.state_dict()[key], atol=1e-3)  # half-precision export


# -- previews an artist can read ---------------------------------------------------------------------


def test_the_last_decoder_preview_is_the_result(tiny):
    evs = list(engine.sample(_req(steps=5, batch=2), tiny, "cpu"))
    final = evs[-1]
    last = [e for e in evs if isinstance(e, Step) and "x0_pred" in e.previews][-1]
    result = np.concatenate([np.asarray(im) for im in final.images], axis=1)
    assert np.array_equal(np.asarray(last.previews["x0_pred"]), result)
    assert np.array_equal(np.asarray(last.previews["x_t"]), result)


def test_a_run_stopped_in_the_decoder_previews_the_picture_it_keeps(tiny):
    decoder_steps = {"n": 0}
    evs = []

    def stop():
        decoder_steps["n"] += bool(evs and evs[-1].stage == "decoder")
        return decoder_steps["n"] >= 2

    for ev in engine.sample(_req(steps=20, preview_every=50), tiny, "cpu", stop):
        evs.append(ev)
    final = evs[-1]
    last = [e for e in evs if isinstance(e, Step) and "x0_pred" in e.previews][-1]
    assert final.stopped and final.meta["steps_done"] < 20 and last.step == final.meta["steps_done"]
    assert np.array_equal(np.asarray(last.previews["x0_pred"]), np.asarray(final.images[0]))
