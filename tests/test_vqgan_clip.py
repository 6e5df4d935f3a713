"""The VQGAN+CLIP engine end to end on the built-in shapes preset (32 px, tiny models)."""
import math

import numpy as np
import pytest
from PIL import Image

from pipelines import media
from pipelines import vqgan_clip as E
from pipelines.events import Final, Step, generate

FAST = dict(iterations=6, cutn=4, preview_every=2)


def req(**kw):
    return E.VQGANCLIPRequest(**{"prompt": "a red circle:1 | on a blue background:0.5", **FAST, **kw})


def events(registry, **kw):
    return list(E.run(req(**kw), registry))


def test_events_previews_and_final(registry):
    evs = events(registry)
    steps = [e for e in evs if isinstance(e, Step)]
    final = evs[-1]
    assert isinstance(final, Final) and not final.stopped
    assert [s.step for s in steps] == list(range(1, 7)) and all(s.total == 6 for s in steps)
    # previews at iterations 0, 2, 4 and the last one
    assert sum("current" in s.previews for s in steps) == 4
    assert steps[0].previews["current"].size == (32, 32)
    assert final.images[0].size == (32, 32) and final.images[0].mode == "RGB"
    m = steps[0].metrics
    assert set(m) == {"loss", "loss/a red circle", "loss/on a blue background"}
    assert math.isclose(m["loss"], m["loss/a red circle"] + m["loss/on a blue background"], rel_tol=1e-5)
    meta = final.meta
    assert meta["settings"]["prompt"] == "a red circle:1 | on a blue background:0.5"
    assert meta["iterations_done"] == 6 and meta["preset"] == "shapes"
    assert {"vqgan", "clip"} <= set(meta["models"])


def test_seed_reproduces_the_whole_run(registry):
    a = generate(E.run(req(seed=7), registry)).images[0]
    b = generate(E.run(req(seed=7), registry)).images[0]
    c = generate(E.run(req(seed=8), registry)).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_optimisation_lowers_the_loss(registry):
    evs = events(registry, prompt="a red circle", iterations=30, lr=0.2, preview_every=0)
    losses = [e.metrics["loss"] for e in evs if isinstance(e, Step)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cutout_noise_reaches_the_cutouts(registry):
    """cut_noise is the cutouts' noise: without noise or augmentations every cutout is the picture itself (4 of
    them score as 1); with noise the same first picture scores otherwise; the setting is kept in the metadata.
    float32: "auto" picks bfloat16 by the cutouts' pixel count, so 4 cutouts and 1 would round differently."""
    quiet = dict(augments=(), cut_noise=0.0, preview_every=0, precision="float32")
    a = [e.metrics["loss"] for e in events(registry, **quiet) if isinstance(e, Step)]
    noisy = [e.metrics["loss"] for e in events(registry, **{**quiet, "cut_noise": 0.5}) if isinstance(e, Step)]
    assert a[0] != noisy[0]           # the same first picture, scored through noisy cutouts
    loss = events(registry, **{**quiet, "cutn": 1})[0].metrics["loss"]
    assert math.isclose(a[0], loss, rel_tol=1e-4)   # 4 identical cutouts score as 1
    assert generate(E.run(req(cut_noise=0.03), registry)).meta["settings"]["cut_noise"] == 0.03


def test_negative_weight_gives_negative_term(registry):
    m = events(registry, prompt="a red circle | a blue square:-1")[0].metrics
    assert m["loss/a blue square"] < 0 < m["loss/a red circle"]


def test_repeated_prompt_texts_keep_every_term(registry):
    m = events(registry, prompt="a red circle:1 | a red circle:-0.5")[0].metrics
    assert m["loss/a red circle (2)"] == pytest.approx(-0.5 * m["loss/a red circle"], rel=1e-5)
    assert m["loss"] == pytest.approx(0.5 * m["loss/a red circle"], rel=1e-5)


def test_stop_keeps_what_was_made(registry):
    seen = []
    evs = E.run(req(iterations=50), registry, should_stop=lambda: len(seen) >= 3)
    for ev in evs:
        seen.append(ev)
    final = seen[-1]
    assert isinstance(final, Final) and final.stopped
    assert final.meta["iterations_done"] == 3 and final.images[0].size == (32, 32)


def test_story_phases_switch(registry):
    evs = events(registry, prompt="a red circle ^ a green square", change_prompt_every=3)
    steps = [e for e in evs if isinstance(e, Step)]
    assert "loss/a red circle" in steps[2].metrics and "loss/a green square" in steps[3].metrics
    assert steps[3].notice and "a green square" in steps[3].notice


def test_image_noise_and_init_prompts(registry):
    target = Image.new("RGB", (40, 24), (220, 38, 38))
    init = Image.new("RGB", (64, 64), (35, 85, 220))
    evs = events(registry, prompt="a red circle", image_prompts=(E.ImagePrompt(target, 0.5, name="target"),),
                 noise_prompts=((3, 0.2),), init_image=init, init_weight=1.0)
    m = evs[0].metrics
    assert {"loss/target", "loss/noise 3", "loss/init"} <= set(m)
    # the init image starts the run: the first preview is the encoded blue image
    first = np.asarray(evs[0].previews["current"]).reshape(-1, 3).mean(0)
    assert first[2] > first[0] + 60
    assert evs[-1].meta["settings"]["init_image"] == media.image_digest(init)


@pytest.mark.parametrize("kw, words", [
    (dict(prompt=""), "Enter a prompt"),
    (dict(prompt="a:b:c"), "not a number"),
    (dict(prompt="a red circle:heavy"), "not a number"),
    (dict(prompt="a:0 | b:0"), "zero"),
    (dict(prompt="x" * 10_000), "limit"),
    (dict(width=0), "Width"),
    (dict(width=-32), "Width"),
    (dict(width=100_000), "Width"),
    (dict(width=30), "multiple of 4"),
    (dict(height=float("nan")), "Height"),
    (dict(iterations=0), "Iterations"),
    (dict(lr=float("nan")), "Learning rate"),
    (dict(optimiser="SGD9"), "Optimiser"),
    (dict(cut_method="nope"), "Cutout method"),
    (dict(augments=("Zz",)), "augmentation"),
    (dict(cutn=0), "Cutouts"),
    (dict(seed=-1), "Seed"),
    (dict(precision="float8"), "Precision must be one of auto, float32, bfloat16"),
    (dict(starts=0), "Random starts"),
    (dict(starts=17), "Random starts"),
    (dict(starts=2, starts_for=0), "Keep the best start"),
    (dict(cut_noise=-0.1), "Cutout noise"),
    (dict(cut_noise=float("nan")), "Cutout noise"),
    (dict(cut_noise=5), "Cutout noise"),
])
def test_bad_input_clear_message(registry, kw, words):
    with pytest.raises(ValueError, match=words):
        next(E.run(req(**kw), registry))


def test_precision_runs_the_decoder_and_clip_in_that_dtype_and_keeps_the_result(registry, monkeypatch):
    """bfloat16 autocast reaches the decoder's and CLIP's layers, the optimisation does as well as in float32,
    and "auto" keeps the 32 px built-in preset in float32 (too small to gain) unless its images are 64 px+."""
    import torch

    from pipelines import registry as R
    from pipelines.presets import load_preset

    pre = load_preset("shapes")
    vqgan, clip = registry.get(pre.components["vqgan"]), registry.get(pre.components["clip"])
    seen = []
    hooks = [vqgan.decoder.conv_out.register_forward_hook(lambda m, i, o: seen.append(("decoder", o.dtype))),
             clip.model.visual_projection.register_forward_hook(lambda m, i, o: seen.append(("clip", o.dtype)))]
    runs = {}
    try:
        for precision in ("float32", "bfloat16"):
            seen.clear()
            evs = events(registry, prompt="a red circle", iterations=30, lr=0.2, preview_every=0, precision=precision)
            runs[precision] = [e.metrics["loss"] for e in evs if isinstance(e, Step)]
            dtype = getattr(torch, precision)
            assert evs[-1].meta["precision"] == {"decoder": precision, "clip": precision}
            assert {d for _, d in seen[:-1]} == {dtype}     # every pass but the final decode, which is float32
            assert seen[-1] == ("decoder", torch.float32)
    finally:
        for h in hooks:
            h.remove()
    first, last = np.mean(runs["float32"][:5]), np.mean(runs["float32"][-5:])
    assert np.mean(runs["bfloat16"][-5:]) < first - 0.8 * (first - last)   # bfloat16 gets 80 % of the way or more

    cpu = torch.device("cpu")
    monkeypatch.setattr("pipelines.registry.runtime.native_bfloat16", lambda device: True)
    assert R.compute_dtype(cpu, "auto", 32 * 32) == torch.float32 and R.compute_dtype(cpu, "auto", 64 * 64) == torch.bfloat16
    assert events(registry, precision="auto", cutn=2)[-1].meta["precision"] == {"decoder": "float32", "clip": "float32"}
    assert events(registry, precision="auto", cutn=16)[-1].meta["precision"] == {"decoder": "float32", "clip": "bfloat16"}
    assert events(registry, precision="auto", width=64, height=64)[-1].meta["precision"]["decoder"] == "bfloat16"
    monkeypatch.setattr("pipelines.registry.runtime.native_bfloat16", lambda device: False)
    assert R.compute_dtype(cpu, "auto", 256 * 256) == torch.float32 and R.compute_dtype(cpu, "bfloat16") == torch.bfloat16


def test_absurd_iterations_are_capped_with_a_notice(registry):
    ev = next(E.run(req(iterations=10**9), registry))
    assert ev.notice and "capped" in ev.notice and ev.total == E.MAX_ITERATIONS


def test_settings_in_png_reproduce_the_image(registry, tmp_path):
    final = generate(E.run(req(seed=3), registry))
    paths = media.save_png(final.images[0], tmp_path / "out.png", final.meta, enlarged_min_side=256)
    assert len(paths) == 2 and Image.open(paths[1]).size == (256, 256)
    meta = media.read_meta(paths[1])
    again = generate(E.run(E.ENGINE_SPEC.request_from_settings(meta["settings"]), registry)).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(paths[0]).convert("RGB")))


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli.png"
    from pipelines.__main__ import main

    rc = main(["vqgan_clip", "a red circle:1 | on a blue background:0.5", "--iterations", "4", "--cutn", "4",
                 "--preview-every", "1", "--video", "--out", str(out), "--threads", "1"])
    assert rc == 0
    assert out.exists() and (tmp_path / "cli.mp4").exists()
    assert media.read_meta(out)["settings"]["iterations"] == 4
    assert main(["vqgan_clip", "a:b:c", "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().out


def _pieces(registry, request, max_steps):
    """A run in bounded pieces, each resumed from the last one's Pause (as a ZeroGPU Space runs it)."""
    out, state = [], None
    while True:
        evs = list(E.run(request, registry, resume=state, max_steps=max_steps))
        out += [e for e in evs if isinstance(e, Step)]
        if isinstance(evs[-1], Final):
            return out, evs[-1]
        state = evs[-1].state


def test_random_starts_keep_the_one_clip_likes_best(registry):
    """starts: the random starts run side by side, then the one with the lowest CLIP loss goes on alone (a
    notice names it and every start's loss; the metadata keeps it); previews show the leading start and the last
    is the result; a run in pieces, paused before and after the pick, makes the same picture."""
    r = req(prompt="a red circle on a blue background", starts=3, starts_for=4, iterations=8, preview_every=1,
            precision="float32")
    evs = list(E.run(r, registry))
    final = evs[-1]
    notes = [e.notice for e in evs if isinstance(e, Step) and e.notice]
    assert len(notes) == 1 and notes[0].startswith("Kept random start ") and " of 3 after 4 iterations" in notes[0]
    kept = int(notes[0].split()[3])
    losses = [float(v) for v in notes[0].split("(CLIP losses ")[1].rstrip(").").split(", ")]
    assert len(losses) == 3 and losses[kept - 1] == min(losses)
    assert final.meta["kept_start"] == kept and final.meta["settings"]["starts"] == 3
    last = [e for e in evs if isinstance(e, Step)][-1].previews["current"]
    assert np.array_equal(np.asarray(last), np.asarray(final.images[0]))
    steps, whole = _pieces(registry, r, 3)      # pauses after iterations 3 (3 starts) and 6 (one)
    assert np.array_equal(np.asarray(whole.images[0]), np.asarray(final.images[0]))
    assert whole.meta["kept_start"] == kept
    # one start is the single-picture loop itself; an init image is one start (with a notice)
    one = generate(E.run(req(seed=3), registry)).images[0]
    assert np.array_equal(np.asarray(one), np.asarray(generate(E.run(req(seed=3, starts=1), registry)).images[0]))
    init = Image.new("RGB", (32, 32), (200, 30, 30))
    evs = list(E.run(req(init_image=init, starts=4), registry))
    assert any("one start runs" in (e.notice or "") for e in evs if isinstance(e, Step))
    assert "kept_start" not in evs[-1].meta


def test_a_clip_ensemble_is_the_weighted_mean_of_its_members(registry):
    """CLIPEnsemble: unit-norm embeddings whose cosine is the weighted mean of the members' cosines, pictures
    resized for a member of another input size, and bad weights refused."""
    import torch
    import torch.nn.functional as F

    from pipelines.models.clip import CLIPEnsemble
    from pipelines.presets import load_preset

    pre = load_preset("shapes")
    a, b = registry.get(pre.components["clip"]), registry.get(pre.components["text_encoder"])
    ens = CLIPEnsemble([a, b], weights=[3, 1])
    pixels = torch.rand(3, 3, 32, 32)
    texts = ["a red circle", "a blue square at the top", "a small green star"]
    img, txt = ens.encode_image(pixels), ens.encode_text(texts)
    assert img.shape == (3, a.embed_dim + b.embed_dim) == (3, ens.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)

    def cos(m):
        return F.normalize(m.encode_image(pixels), dim=-1) @ F.normalize(m.encode_text(texts), dim=-1).t()

    assert torch.allclose(img @ txt.t(), 0.75 * cos(a) + 0.25 * cos(b), atol=1e-5)
    assert ens.members == (a, b) and not any(isinstance(v, torch.nn.Module) for v in vars(ens).values())
    bigger = CLIPEnsemble([a, b]).encode_image(F.interpolate(pixels, size=64))   # each member resizes to its own size
    assert bigger.shape == (3, ens.embed_dim)
    with pytest.raises(ValueError, match="positive weight"):
        CLIPEnsemble([a, b], weights=[1, 0])


def test_a_presets_second_clip_judges_beside_the_first(registry, monkeypatch):
    """A preset naming `clip_2` runs the loop against both CLIPs (its metadata names both); without one, the
    loop's CLIP is the preset's `clip` alone."""
    import dataclasses

    from pipelines import presets
    from pipelines.models.clip import CLIPEnsemble

    base = presets.load_preset("shapes")
    two = dataclasses.replace(base, name="shapes-two", components={
        k: v for k, v in {**base.components, "clip_2": base.components["text_encoder"]}.items()
        if k in ("vqgan", "clip", "clip_2")})
    one = dataclasses.replace(two, name="shapes-one", components={k: v for k, v in two.components.items() if k != "clip_2"})
    monkeypatch.setattr(E, "load_preset", lambda name: {"shapes-two": two, "shapes-one": one}[name])
    used = []
    real = E.optimise
    monkeypatch.setattr(E, "optimise", lambda req, vqgan, clip, *a: used.append(clip) or real(req, vqgan, clip, *a))
    final = generate(E.run(req(preset="shapes-two"), registry))
    assert isinstance(used[-1], CLIPEnsemble) and len(used[-1].members) == 2
    assert {"clip", "clip_2"} <= set(final.meta["models"])
    assert final.meta["models"]["clip_2"]["key"] == base.components["text_encoder"].key
    generate(E.run(req(preset="shapes-one"), registry))
    assert not isinstance(used[-1], CLIPEnsemble) and "clip_2" not in E.ENGINE_SPEC.components(one)


def test_the_second_clips_weight_sets_its_say_and_zero_leaves_it_out(registry, monkeypatch):
    """`clip_2_weight` is the second CLIP's weight against the first's 1 (the ensemble's shares follow it, the
    PNG settings carry it); at 0 the first CLIP steers alone and the second is neither loaded nor named; a
    weight outside 0..100 is refused with its name."""
    from pipelines.models.clip import CLIPEnsemble
    from pipelines.presets import load_preset

    assert "clip_2" in E.ENGINE_SPEC.components(load_preset("shapes"))
    used = []
    real = E.optimise
    monkeypatch.setattr(E, "optimise", lambda req, vqgan, clip, *a: used.append(clip) or real(req, vqgan, clip, *a))
    final = generate(E.run(req(clip_2_weight=0.5), registry))
    assert isinstance(used[-1], CLIPEnsemble)
    assert used[-1].scales == pytest.approx([(1 / 1.5) ** 0.5, (0.5 / 1.5) ** 0.5])
    assert final.meta["settings"]["clip_2_weight"] == 0.5 and "clip_2" in final.meta["models"]
    asked = []
    real_use = registry.use
    monkeypatch.setattr(registry, "use", lambda *specs: asked.append(specs) or real_use(*specs))
    final = generate(E.run(req(clip_2_weight=0), registry))
    assert load_preset("shapes").components["clip_2"] not in asked[-1]
    assert not isinstance(used[-1], CLIPEnsemble) and used[-1] is registry.get(load_preset("shapes").components["clip"])
    assert "clip_2" not in final.meta["models"]
    for bad in (-1, 101, float("nan"), "half"):
        with pytest.raises(ValueError, match="Second CLIP's weight"):
            generate(E.run(req(clip_2_weight=bad), registry))
