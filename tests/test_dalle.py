"""The DALL-E model, sampler, engine and trainer, on a tiny random GPT over the built-in VQGAN and CLIP."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import dalle as E
import shapes
from pipelines import media
from pipelines.events import Final, Step, generate
from pipelines.models.clip import load_clip
from pipelines.models.dalle import DALLE, DalleConfig, TextTokenizer, filter_logits, from_pretrained, save_pretrained
from pipelines.models.vqgan_files import from_pretrained as load_vqgan
from pipelines.presets import PRESETS_DIR

WEIGHTS = PRESETS_DIR / "weights"
CAPTION = "a large yellow diamond above a small blue circle"


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(WEIGHTS / "shapes-clip" / "tokenizer.json"))  # the same BPE the trainer learns


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = DalleConfig(text_vocab=tokenizer.get_vocab_size(), n_layer=1, n_embd=32, n_head=2)
    return DALLE(cfg, tokenizer).eval()


@pytest.fixture(scope="module")
def vqgan():
    return load_vqgan(WEIGHTS / "shapes-vqgan")


@pytest.fixture(scope="module")
def clip():
    return load_clip(WEIGHTS / "shapes-clip")


def req(**kw):
    return E.DalleRequest(**{"prompt": CAPTION, "candidates": 4, **kw})


# -- model ----------------------------------------------------------------------------------


def test_text_rows_are_fixed_length_and_truncation_is_reported(model):
    ids, kept = model.text(["a red circle", "a red circle " * 12])
    assert ids.shape == (2, model.config.text_len)
    assert kept[0] is None and kept[1].startswith("a red circle a red")
    assert ids[0, 5:].eq(model.config.pad_id).all()          # start, 3 words, end, then padding
    assert model.text.tokens("a small green square to the left of a large purple cross")[1:-1] == [
        w + "</w>" for w in "a small green square to the left of a large purple cross".split()]


def test_sequence_layout_keeps_vocabularies_apart(model):
    cfg = model.config
    assert cfg.sep_id == cfg.text_vocab and cfg.image_offset == cfg.text_vocab + 1
    assert cfg.vocab_size == cfg.text_vocab + 1 + cfg.n_codes and cfg.block_size == cfg.text_len + 64
    text, _ = model.text([CAPTION])
    logits = model(text, torch.randint(0, cfg.n_codes, (1, 64)))
    assert logits.shape == (1, 64, cfg.n_codes)  # image positions score image codes only


def test_kv_cache_sampler_matches_the_full_forward_pass(model):
    text, _ = model.text(["a red circle", "a blue star at the top"])
    *_, codes = model.sample(text, top_k=1)  # greedy: each code is the argmax given the codes before
    assert codes.shape == (2, 64) and codes.min() >= 0 and codes.max() < model.config.n_codes
    assert torch.equal(model(text, codes).argmax(-1), codes)


def test_sampler_continues_a_prefix_and_guidance_runs(model):
    text, _ = model.text(["a red circle"] * 3)
    prefix = torch.randint(0, 1024, (3, 24))
    seen = [c.shape[1] for c in model.sample(text, prefix_codes=prefix, guidance=3.0,
                                             generator=torch.Generator().manual_seed(0))]
    assert seen == list(range(25, 65))
    *_, codes = model.sample(text, prefix_codes=prefix, guidance=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes[:, :24], prefix)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.01)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_logits(logits)).any()


def test_save_and_load_round_trip(model, tmp_path):
    save_pretrained(model, tmp_path)
    assert {"config.json", "model.safetensors", "dalle.json", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    back = from_pretrained(tmp_path)
    assert back.config == model.config
    text, _ = model.text([CAPTION])
    codes = torch.randint(0, 1024, (1, 64))
    assert torch.allclose(back(text, codes), model(text, codes), atol=1e-5)


# -- engine -----------------------------------------------------------------------------------


def test_engine_previews_row_by_row_and_ranks_by_clip(model, vqgan, clip):
    evs = list(E.sample(req(), model, vqgan, clip))
    steps = [e for e in evs if isinstance(e, Step) and e.stage == "sample"]
    final = evs[-1]
    assert [s.step for s in steps] == list(range(1, 65)) and all(s.total == 64 for s in steps)
    rows = [s for s in steps if "partial" in s.previews]
    assert [s.step for s in rows] == [8, 16, 24, 32, 40, 48, 56, 64]
    # four 32 px candidates side by side; after 3 rows the lower 5 rows of every tile are plain grey
    sheet = np.asarray(rows[2].previews["partial"])
    assert sheet.shape == (32, 4 * 32 + 3 * 2, 3)
    for k in range(4):
        tile = sheet[:, k * 34:k * 34 + 32]
        assert (tile[12:] == 128).all() and not (tile[:12] == 128).all()
    assert isinstance(final, Final) and not final.stopped and len(final.images) == 4
    scores = final.meta["clip_scores"]
    assert scores == sorted(scores, reverse=True) and sorted(final.meta["order"]) == [0, 1, 2, 3]
    with torch.no_grad():  # the scores are CLIP's, in the order of the images shown
        x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)
                         for im in final.images])
        sim = clip.similarity(x, [CAPTION])[:, 0]
    assert np.allclose(sim.numpy(), scores, atol=0.02)


def test_seed_reproduces_the_candidates(model, vqgan):
    a = generate(E.sample(req(seed=3, rerank=False), model, vqgan)).images
    b = generate(E.sample(req(seed=3, rerank=False), model, vqgan)).images
    c = generate(E.sample(req(seed=4, rerank=False), model, vqgan)).images
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_stop_keeps_what_was_made(model, vqgan, clip):
    seen = []
    for ev in E.sample(req(), model, vqgan, clip, should_stop=lambda: len(seen) >= 10):
        seen.append(ev)
    final = seen[-1]
    assert final.stopped and final.meta["tokens_done"] == 10 and len(final.images) == 4
    assert final.meta["clip_scores"] is None  # half-written pictures are not ranked
    assert (np.asarray(final.images[0])[8:] == 128).all()  # rows not written yet stay grey


def test_image_completion_keeps_the_top_rows(model, vqgan, monkeypatch):
    image = shapes.render(shapes.parse_caption("a large red square at the top on a white background"), 32, 0)
    given = {}
    sample = model.sample

    def spy(text, **kw):
        given.update(kw)
        return sample(text, **kw)

    monkeypatch.setattr(model, "sample", spy)
    evs = list(E.sample(req(init_image=image, keep_rows=4, rerank=False), model, vqgan))
    first = evs[0]
    assert first.step == 0 and "partial" in first.previews  # the kept rows before anything is written
    steps = [e for e in evs if isinstance(e, Step) and e.step > 0]
    assert steps[0].total == 32 and steps[-1].step == 32
    kept = np.asarray(first.previews["partial"])[:, :32]
    assert (kept[16:] == 128).all() and not (kept[:16] == 128).all()
    # every candidate starts with the first 4 rows of the image's own codes
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    codes = vqgan.encode(x)[2].view(1, 64)
    assert given["prefix_codes"].shape == (4, 32) and (given["prefix_codes"] == codes[:, :32]).all()


@pytest.mark.parametrize("kw, words", [
    (dict(temperature=0), "Temperature must be a number above 0"),
    (dict(temperature=-1), "Temperature"),
    (dict(temperature=float("nan")), "Temperature"),
    (dict(top_k=0), "Top-k must be a whole number from 1 to 1024"),
    (dict(top_k=1025), "Top-k"),
    (dict(top_p=0), "Top-p must be a number above 0 and at most 1"),
    (dict(top_p=1.5), "Top-p"),
    (dict(top_p=-0.1), "Top-p"),
    (dict(candidates=0), "Candidates must be a whole number from 1 to 64"),
    (dict(candidates=10_000), "Candidates"),
    (dict(guidance=float("inf")), "Guidance"),
    (dict(prompt="  "), "Enter a prompt"),
    (dict(init_image=Image.new("RGB", (40, 32))), "must be square \\(got 40x32\\)"),
    (dict(init_image=Image.new("RGB", (32, 32)), keep_rows=8), "Rows to keep"),
])
def test_bad_input_is_a_clear_message(model, vqgan, kw, words):
    with pytest.raises(ValueError, match=words):
        next(E.sample(req(rerank=False, **kw), model, vqgan))


def test_long_prompt_and_odd_image_modes_are_notices(model, vqgan):
    img = Image.new("RGBA", (64, 64), (220, 38, 38, 128))
    evs = list(E.sample(req(prompt="a red circle " * 10, init_image=img, candidates=1, rerank=False), model, vqgan))
    notes = [e.notice for e in evs if isinstance(e, Step) and e.notice]
    assert len(notes) == 3
    assert "longer than the model's text context (24 tokens)" in notes[0]
    assert "RGBA mode" in notes[1] and "resized" in notes[2]
    assert isinstance(evs[-1], Final)


def test_settings_round_trip_through_png(model, vqgan, tmp_path):
    final = generate(E.sample(req(seed=9, top_k=50, top_p=0.9, rerank=False, candidates=2), model, vqgan))
    path = media.save_png(final.images[0], tmp_path / "x.png", final.meta)[0]
    back = E.ENGINE_SPEC.request_from_settings(media.read_meta(path)["settings"])
    assert back == req(seed=9, top_k=50, top_p=0.9, rerank=False, candidates=2)


# -- through the registry, the eval plug-in and the trainer ------------------------------------


@pytest.fixture(scope="module")
def registry(model, tmp_path_factory):
    from pipelines.registry import Registry

    weights = tmp_path_factory.mktemp("weights")
    for name in ("shapes-vqgan", "shapes-clip", "shapes-clip-factored"):   # the preset's CLIP ranks
        (weights / name).symlink_to(WEIGHTS / name)
    save_pretrained(model, weights / "shapes-dalle")
    return Registry(device="cpu", weights_dir=weights)


def test_run_through_the_registry_and_presets_without_dalle(registry):
    final = generate(E.run(req(candidates=2), registry))
    assert final.meta["preset"] == "shapes" and {"dalle", "vqgan", "clip"} <= set(final.meta["models"])
    with pytest.raises(ValueError, match="no DALL-E model"):
        next(E.run(req(preset="imagenet"), registry))


def test_eval_plugin_returns_n_samples(registry):
    from lab.eval.engines import ENGINES

    best = ENGINES["dalle"](registry, "shapes", "a red circle", 0, 2, {"candidates": 2})
    plain = ENGINES["dalle"](registry, "shapes", "a red circle", 0, 3, {"rerank": False})
    assert len(best) == 2 and len(plain) == 3 and best[0].size == (32, 32)


def test_trainer_runs_resumes_and_exports(tmp_path):
    from lab.train import dalle as train

    out, run = tmp_path / "out", tmp_path / "run"
    common = ["--out", str(out), "--run-dir", str(run), "--batch", "4", "--layers", "1", "--width", "32",
              "--heads", "2", "--log-every", "1", "--sample-every", "2", "--ckpt-every", "1",
              "--tokenizer-captions", "300", "--eval-scenes", "8"]
    train.main(common + ["--steps", "2"])
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2 and (run / "samples_000002.png").exists()
    first_vocab = json.loads((run / "tokenizer.json").read_text())["model"]["vocab"]
    train.main(common + ["--steps", "3", "--resume"])
    # the resumed run reads its words with the same ids as the first (the BPE trainer's numbering varies)
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] == first_vocab
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    rec = json.loads((out / "train.json").read_text())
    assert "lab.train.dalle" in rec["command"] and rec["seed"] == 0 and rec["sequences_seen"] == 12
    assert set(rec["metrics"]) == {"val_loss_seen", "val_loss_heldout"}
    assert all(math.isfinite(v) for v in rec["metrics"].values())
    model = from_pretrained(out)
    assert model.config.n_layer == 1 and model.text(["a red circle"])[0].shape == (1, 24)


def test_training_batches_exclude_held_out_pairs_and_state_true_parts():
    from lab.train.dalle import make_batch, partial_caption

    rng = np.random.default_rng(0)
    _, scenes = make_batch(200, rng)
    assert not any((o.color, o.shape) in shapes.HELD_OUT for s in scenes for o in s.objects)
    for s in scenes[:50]:
        short = shapes.parse_caption(partial_caption(s, rng))
        assert [(o.color, o.shape) for o in short.objects] == [(o.color, o.shape) for o in s.objects]
        assert short.background in (None, s.background) and short.relation == s.relation


def test_built_in_weights_are_small_and_recorded():
    folder = WEIGHTS / "shapes-dalle"
    assert (folder / "model.safetensors").stat().st_size < 10 * 2**20
    rec = json.loads((folder / "train.json").read_text())
    assert "lab.train.dalle" in rec["command"] and "seed" in rec
