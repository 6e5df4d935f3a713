"""DALL-E Mega / Mini as min-dalle publishes them (pipelines/models/dalle_bart.py), on the tiny stand-in of
kuprel/min-dalle that lab/standins.py writes in the upstream layout, loaded through the registry from a hub
cache as the real download would be; and parity with the min-dalle package on the same weights."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import dalle as E
from pipelines import media
from pipelines.events import Final, Step, generate
from pipelines.models import dalle_bart as D
from pipelines.presets import ComponentSpec, load_preset
from pipelines.registry import ModelUnavailable, Registry

PROMPT = "a painting of a red cat on the blue sky"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache holding the stand-ins of kuprel/min-dalle and of the CLIP the presets rerank with;
    the hub client looks there for this module's tests."""
    from huggingface_hub import constants

    from lab import standins

    cache = tmp_path_factory.mktemp("standin-hub")
    standins.build(cache, only="kuprel/min-dalle")
    standins.build(cache, only="openai/clip-vit-base-patch32")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def snapshot(hub):
    return standin_snapshot(hub)


def standin_snapshot(cache):
    from lab.standins import hub_snapshot

    return hub_snapshot(cache, "kuprel/min-dalle")


@pytest.fixture(scope="module")
def registry(hub):
    return Registry(device="cpu", allow_network=False)


def models(registry, preset="dalle-mega"):
    parts = E.ENGINE_SPEC.components(load_preset(preset))
    return registry.get(parts["dalle"]), registry.get(parts["vqgan"]), registry.get(parts["clip"])


def req(**kw):
    return E.DalleRequest(**{**E.ENGINE_SPEC.defaults(load_preset("dalle-mega")), "preset": "dalle-mega",
                             "prompt": PROMPT, "candidates": 3, **kw})


# -- the stand-in, through the registry ------------------------------------------------------------


def test_standin_is_min_dalles_layout_and_loads_through_the_registry(registry, snapshot):
    assert {p.name for p in snapshot.iterdir()} == {
        *D.MEGA_FILES.values(), *D.MINI_FILES.values(), *D.DETOKENIZER_FILES.values()}
    stored = torch.load(snapshot / "decoder.pt", weights_only=True)
    assert stored["lm_head.weight"].dtype == torch.float16            # the BARTs are stored in float16
    assert "layers.0.glu.ln0.bias" in stored and "layers.0.glu.ln0.weight" not in stored   # scale-free norm
    mega, vqgan, _ = models(registry, "dalle-mega")
    mini, mini_vqgan, _ = models(registry, "dalle-mini")
    assert isinstance(mega, D.DalleBart) and isinstance(vqgan, D.Detokenizer) and mini_vqgan is vqgan
    assert (mega.config.heads, mega.config.image_vocab, mega.config.grid, mega.config.text_len) == (2, 16415, 16, 64)
    assert (mini.config.heads, mini.config.image_vocab, mini.config.decoder_layers) == (1, 16384, 1)
    assert torch.equal(mega.decoder.layers[0].glu.ln0.weight, torch.ones(128))   # read as a scale of 1
    assert torch.allclose(mega.decoder.lm_head.weight, stored["lm_head.weight"].float())
    assert next(mega.parameters()).dtype == torch.float32
    rows = {r["kind"]: r for r in registry.status()}
    assert rows["min_dalle"]["weights_id"] and rows["min_dalle_vqgan"]["weights_id"]


def test_standin_kv_cache_sampler_matches_teacher_forcing(registry):
    model, _, _ = models(registry)
    text, _ = model.text([PROMPT, "a dog"])
    *_, codes = model.sample(text, top_k=1)              # greedy: each code is the argmax given the codes before
    assert codes.shape == (2, 256) and int(codes.max()) < D.N_CODES
    assert torch.equal(model(text, codes).argmax(-1), codes)
    prefix = codes[:, :40]
    seen = [c.shape[1] for c in model.sample(text, top_k=1, prefix_codes=prefix)]
    assert seen == list(range(41, 257))
    *_, again = model.sample(text, top_k=1, prefix_codes=prefix)
    assert torch.equal(again, codes)                     # the prefix read in one pass continues the same way


def test_standin_tokenizer_pads_truncates_and_reads_lower_case_ascii(registry):
    model, _, _ = models(registry)
    ids, kept = model.text(["A Cat", "", "cat " * 70])
    vocab = model.text.vocab
    assert ids[0, :5].tolist() == [vocab["<s>"], vocab[D.WORD_START + "a"], vocab[D.WORD_START + "cat"],
                                   vocab["</s>"], D.PAD_ID]
    assert ids[1, :3].tolist() == [vocab["<s>"], vocab["</s>"], D.PAD_ID] and kept[:2] == [None, None]
    assert ids.shape == (3, 64) and kept[2] == " ".join(["cat"] * 63)   # <s> and 63 words; the end is cut off
    assert model.text.encode("café ☕ cat")[0] == model.text.encode("caf cat")[0]


# -- the engine and the command line ------------------------------------------------------------


def test_standin_engine_previews_row_by_row_and_ranks_by_clip(registry):
    evs = list(E.run(req(), registry))
    steps = [e for e in evs if isinstance(e, Step) and e.stage == "sample"]
    final = evs[-1]
    assert [s.step for s in steps] == list(range(1, 257)) and all(s.total == 256 for s in steps)
    rows = [s for s in steps if "partial" in s.previews]
    assert [s.step for s in rows] == list(range(16, 257, 16))       # a preview after each row of 16 codes
    # three 32 px candidates (the stand-in's VQGAN is f2); after 3 rows all but the top 6 px are grey
    sheet = np.asarray(rows[2].previews["partial"])
    assert sheet.shape == (32, 3 * 32 + 2 * 2, 3)
    for k in range(3):
        tile = sheet[:, k * 34:k * 34 + 32]
        assert (tile[6:] == 128).all() and not (tile[:6] == 128).all()
    last = np.asarray(rows[-1].previews["partial"])
    assert not any((last[30:, k * 34:k * 34 + 32] == 128).all() for k in range(3))   # the last row is written
    assert isinstance(final, Final) and not final.stopped and len(final.images) == 3
    scores = final.meta["clip_scores"]
    assert scores == sorted(scores, reverse=True) and sorted(final.meta["order"]) == [0, 1, 2]
    assert {"min_dalle", "min_dalle_vqgan", "clip"} == set(final.meta["models"])
    assert final.meta["settings"]["top_k"] == 256 and final.meta["settings"]["guidance"] == 16.0
    _, _, clip = models(registry)
    with torch.no_grad():  # the scores are CLIP's, in the order of the pictures shown
        x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)
                         for im in final.images])
        sim = clip.similarity(x, [PROMPT])[:, 0]
    assert np.allclose(sim.numpy(), scores, atol=0.02)


def test_standin_seed_reproduces_and_stop_keeps_what_was_made(registry):
    a = generate(E.run(req(seed=5, rerank=False), registry)).images
    b = generate(E.run(req(seed=5, rerank=False), registry)).images
    c = generate(E.run(req(seed=6, rerank=False), registry)).images
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    seen = []
    for ev in E.run(req(), registry, should_stop=lambda: len(seen) >= 40):
        seen.append(ev)
    final = seen[-1]
    assert final.stopped and final.meta["tokens_done"] == 40 and len(final.images) == 3
    assert final.meta["clip_scores"] is None                      # half-written pictures are not ranked
    assert (np.asarray(final.images[0])[6:] == 128).all()         # rows 3.. (2 px each) were never written


def test_standin_cli_writes_pngs_with_settings_and_a_video(hub, tmp_path, capsys):
    import signal

    from pipelines.__main__ import main

    out = tmp_path / "cat.png"
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        assert main(["dalle", "a cat", "--preset", "dalle-mega", "--candidates", "2", "--video",
                     "--out", str(out)]) == 0
    finally:
        signal.signal(signal.SIGINT, ctrl_c)      # the command line takes Ctrl-C over; give it back to pytest
    pngs = sorted(tmp_path.glob("cat_[0-9].png"))
    assert len(pngs) == 2 and (tmp_path / "cat.mp4").stat().st_size > 0
    meta = media.read_meta(pngs[0])
    assert meta["settings"]["preset"] == "dalle-mega" and meta["settings"]["top_k"] == 256 and meta["rank"] == 1
    assert E.ENGINE_SPEC.request_from_settings(meta["settings"]).guidance == 16.0
    assert "CLIP scores, best first" in capsys.readouterr().out


# -- bad input: one clear sentence, nothing else disturbed --------------------------------------------


def _copy_without(snapshot, folder, missing=(), replace=None):
    """min-dalle's local layout (Mega's file names) in `folder`, leaving out or replacing some files."""
    import shutil

    folder.mkdir()
    for name in [*D.MEGA_FILES.values(), *D.DETOKENIZER_FILES.values()]:
        if name not in missing:
            shutil.copy(snapshot / (replace or {}).get(name, name), folder / name)
    return folder


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and text.endswith("."), text
    return text


def test_standin_bad_files_are_one_sentence_and_disturb_nothing(registry, snapshot, tmp_path):
    no_decoder = _copy_without(snapshot, tmp_path / "no-decoder", missing=("decoder.pt",))
    with pytest.raises(ModelUnavailable) as e:
        registry.get(ComponentSpec("min_dalle", "path", str(no_decoder)))
    assert "decoder.pt: file not found" in _one_line(e.value)
    swapped = _copy_without(snapshot, tmp_path / "swapped", replace={"decoder.pt": "encoder.pt"})
    with pytest.raises(ModelUnavailable) as e:
        registry.get(ComponentSpec("min_dalle", "path", str(swapped)))
    assert "decoder.pt: no tensor 'layers.0.encoder_attn.q_proj.weight'" in _one_line(e.value)
    wrong = _copy_without(snapshot, tmp_path / "wrong", replace={"detoker.pt": "encoder.pt"})
    with pytest.raises(ModelUnavailable) as e:
        registry.get(ComponentSpec("min_dalle_vqgan", "path", str(wrong)))
    assert "detoker.pt: no tensor 'embedding.weight'" in _one_line(e.value)
    junk = _copy_without(snapshot, tmp_path / "junk")
    (junk / "encoder.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailable) as e:
        registry.get(ComponentSpec("min_dalle", "path", str(junk)))
    assert "encoder.pt: not a torch file of tensors" in _one_line(e.value)
    # the same files in a good folder load, and the preset still runs after all of that
    good = registry.get(ComponentSpec("min_dalle", "path", str(_copy_without(snapshot, tmp_path / "good"))))
    assert good.config == models(registry)[0].config
    assert not any(bad in row["key"] for row in registry.status() for bad in ("no-decoder", "swapped", "wrong", "junk"))
    assert len(generate(E.run(req(candidates=1, rerank=False), registry)).images) == 1


def test_standin_missing_hub_file_offline_is_one_line(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from lab.standins import REVISION

    partial = tmp_path / "partial-hub"
    repo = partial / "models--kuprel--min-dalle"
    for name in ("refs", f"snapshots/{REVISION}"):
        (repo / name).mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    for name in D.MEGA_FILES.values():
        if name != "decoder.pt":
            (repo / "snapshots" / REVISION / name).symlink_to(standin_snapshot(hub) / name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(partial))
    with pytest.raises(ModelUnavailable) as e:
        generate(E.run(req(), Registry(device="cpu", allow_network=False)))
    assert "'kuprel/min-dalle' from the Hugging Face Hub, which cannot be reached (offline)" in _one_line(e.value)


@pytest.mark.parametrize("kw, words", [
    (dict(init_image=Image.new("RGB", (64, 64))), "This preset cannot complete images"),
    (dict(top_k=16385), "Top-k must be a whole number from 1 to 16384"),
    (dict(prompt=" "), "Enter a prompt"),
])
def test_standin_bad_settings_are_clear_messages(registry, kw, words):
    with pytest.raises(ValueError, match=words):
        next(E.run(req(rerank=False, **kw), registry))


def test_standin_long_prompt_is_a_notice(registry):
    evs = list(E.run(req(prompt="cat " * 80, candidates=1, rerank=False), registry))
    notes = [e.notice for e in evs if isinstance(e, Step) and e.notice]
    assert len(notes) == 1 and "text context (64 tokens)" in notes[0] and isinstance(evs[-1], Final)


# -- parity with the min-dalle package on the same weights ---------------------------------------------


@pytest.fixture(scope="module")
def min_dalle():
    """The min-dalle package (requirements-dev.txt). Importing it turns autograd off and takes every CPU
    thread for the whole process, so both are put back."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        import min_dalle
        import min_dalle.models
        import min_dalle.text_tokenizer
    except ImportError:
        pytest.skip("the min-dalle package is not installed (pip install -r requirements-dev.txt)")
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
    return min_dalle


class _KeepTokens(torch.nn.Module):
    """Stands in for min-dalle's detokenizer inside MinDalle: keeps the tokens it is given."""

    def forward(self, is_seamless, tokens):
        self.tokens = tokens.clone()
        return torch.zeros(512, 512, 3)


def _upstream(min_dalle, folder, model, mega):
    """min-dalle's own MinDalle over min-dalle's classes built at the stand-in's sizes, with its files."""
    cfg, names = model.config, D.hub_files(mega)
    encoder = min_dalle.models.DalleBartEncoder(
        layer_count=cfg.encoder_layers, embed_count=cfg.embed, attention_head_count=cfg.heads,
        text_vocab_count=cfg.text_vocab, text_token_count=cfg.text_len, glu_embed_count=cfg.glu, device="cpu")
    decoder = min_dalle.models.DalleBartDecoder(
        image_vocab_count=cfg.image_vocab, embed_count=cfg.embed, attention_head_count=cfg.heads,
        glu_embed_count=cfg.glu, layer_count=cfg.decoder_layers, device="cpu")
    encoder.load_state_dict(torch.load(folder / names["encoder"], weights_only=True), strict=False)  # as MinDalle
    decoder.load_state_dict(torch.load(folder / names["ckpt"], weights_only=True), strict=False)
    vocab = json.loads((folder / names["vocab"]).read_text())
    merges = (folder / names["merges"]).read_text().split("\n")[1:-1]
    upstream = min_dalle.MinDalle.__new__(min_dalle.MinDalle)   # its __init__ would download the real models
    upstream.__dict__.update(
        device="cpu", dtype=torch.float32, is_mega=mega, is_reusable=True, is_verbose=False,
        text_token_count=cfg.text_len, layer_count=cfg.decoder_layers, embed_count=cfg.embed,
        tokenizer=min_dalle.text_tokenizer.TextTokenizer(vocab, merges),
        encoder=encoder.eval(), decoder=decoder.eval(), detokenizer=_KeepTokens())
    return upstream


@pytest.mark.parametrize("preset, mega", [("dalle-mega", True), ("dalle-mini", False)])
def test_standin_parity_with_min_dalle_text_encoder_logits_and_tokens(min_dalle, registry, snapshot, preset, mega):
    model = models(registry, preset)[0]
    upstream = _upstream(min_dalle, snapshot, model, mega)
    for text in (PROMPT, "The DOG, in a Sky!", "zebra #9", "cat " * 70):
        assert model.text.encode(text)[0] == upstream.tokenizer.tokenize(text)[:64]
    text, _ = model.text(["", PROMPT])      # min-dalle's two rows: the empty text, then the prompt
    with torch.no_grad():
        state = upstream.encoder(text)
        assert torch.allclose(model.encoder(text), state, atol=1e-4)
        # the first code's scores of both rows, from min-dalle's decoder and from ours
        theirs, _ = upstream.decoder(
            attention_mask=text.ne(1)[:, None, None, :], encoder_state=state,
            attention_state=torch.zeros(model.config.decoder_layers, 4, 256, model.config.embed),
            prev_tokens=torch.full((1, 1), D.START_CODE), token_index=torch.tensor([0]))
        ours = model.decoder(torch.full((2, 1), D.START_CODE), model.decoder.start(model.encoder(text), text))
        assert torch.allclose(ours, theirs, atol=1e-4)
    # the codes of four candidates: min-dalle seeds torch's global generator, Atelier its own
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # min-dalle's torch.cuda.amp.autocast is deprecated
        for _ in upstream.generate_raw_image_stream(PROMPT, seed=7, grid_size=2, temperature=1.0, top_k=64,
                                                    supercondition_factor=16):
            pass
    prompt_ids = model.text([PROMPT])[0].expand(4, -1)
    *_, codes = model.sample(prompt_ids, temperature=1.0, top_k=64, guidance=16.0,
                             generator=torch.Generator().manual_seed(7))
    assert torch.equal(codes, upstream.detokenizer.tokens)


def test_standin_parity_with_min_dalle_detokenizer_at_full_size(min_dalle, tmp_path):
    """min-dalle's VQGAN is hardcoded at its real size: a random one of that size, saved as detoker.pt,
    decodes a fixed grid as min-dalle does (up to GroupNorm's epsilon: taming's 1e-6 here, 1e-5 there)."""
    torch.manual_seed(0)
    upstream = min_dalle.models.VQGanDetokenizer().eval()
    torch.save(upstream.state_dict(), tmp_path / "detoker.pt")
    ours = D.load_detokenizer(tmp_path / "detoker.pt")
    cfg = ours.config
    assert (ours.factor, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions, cfg.n_embed) == (
        16, 128, (1, 1, 2, 2, 4), 2, (16,), 16384)
    codes = torch.randint(0, 16384, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = upstream(False, codes)                                      # (256, 256, 3) in 0..255
        mine = ours.decode_indices(codes, (1, 16, 16))[0].add(1).mul(127.5).permute(1, 2, 0)
    assert theirs.shape == mine.shape == (256, 256, 3)
    assert (mine - theirs).abs().max() < 0.5 and theirs.std() > 1


def test_standin_dalle_presets_are_offered_only_in_the_dalle_tab():
    """min-dalle's VQGAN is a decoder only: the VQGAN+CLIP tab, which must encode and optimise, does not list them."""
    from pipelines.engines import ENGINES
    from pipelines.presets import load_preset

    for name in ("dalle-mega", "dalle-mini"):
        assert [e.name for e in ENGINES.values() if e.supports(load_preset(name))] == ["dalle"]
    with pytest.raises(ValueError, match="has no VQGAN\\+CLIP models"):
        ENGINES["vqgan_clip"].components(load_preset("dalle-mega"))
