"""Vary seed (pipelines/seeds.py) in every engine that samples: strength 0 is the seed's picture bit for bit,
a small strength a picture close to it, strength 1 the subseed's; the fields land in the PNG settings."""
import numpy as np
import pytest
import torch

from pipelines import dalle as dalle_engine
from pipelines import diffusion as diffusion_engine
from pipelines import unclip as unclip_engine
from pipelines import vqgan_clip as vqgan_engine
from pipelines.events import Step, generate
from pipelines.models.dalle import DALLE, DalleConfig, draw_codes
from pipelines.seeds import mixed_exponential, slerp, varied_randn


def _px(im) -> np.ndarray:
    return np.asarray(im.convert("RGB")).astype(np.float64)


def _same(a, b) -> bool:
    return all(np.array_equal(_px(x), _px(y)) for x, y in zip(a, b))


def _same_but_rounding(a, b) -> bool:
    """The same pictures where float sums may differ in their last bits (a batch of frames against one frame at a
    time): no value more than one grey level apart, and almost all equal."""
    d = [np.abs(_px(x) - _px(y)) for x, y in zip(a, b)]
    return len(a) == len(b) and all(x.max() <= 1 and x.mean() < 0.01 for x in d)


def _dist(a, b) -> float:
    return float(np.mean([np.abs(_px(x) - _px(y)).mean() for x, y in zip(a, b)]))


# -- the mixing itself ------------------------------------------------------------------------------------------


def test_slerp_hits_both_ends_exactly_and_keeps_the_noise_scale():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    assert slerp(0.0, a, b) is a and slerp(1.0, a, b) is b
    mid = slerp(0.5, a, b)
    assert mid.shape == a.shape and abs(float(mid.std()) - 1) < 0.15
    assert torch.allclose(slerp(1e-9, a, b), a, atol=1e-6)


def test_varied_noise_leaves_the_seeds_stream_alone():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(varied_randn((2, 5), g1, 9, 0.0), torch.randn((2, 5), generator=g2))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    varied_randn((2, 5), g1, 9, 0.3), torch.randn((2, 5), generator=g2)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))   # later draws unchanged
    g1 = torch.Generator().manual_seed(7)
    subseeds = torch.randn((2, 5), generator=torch.Generator().manual_seed(9))
    assert torch.equal(varied_randn((2, 5), g1, 9, 1.0), subseeds)


def test_mixed_exponentials_are_exponential_at_every_strength():
    g = torch.Generator().manual_seed(0)
    q, r = (torch.empty(200_000).exponential_(1, generator=g) for _ in range(2))
    assert mixed_exponential(q, r, 0.0) is q and mixed_exponential(q, r, 1.0) is r
    for t in (0.01, 0.3, 0.7):
        m = mixed_exponential(q, r, t)
        assert (m > 0).all() and abs(float(m.mean()) - 1) < 0.02 and abs(float(m.var()) - 1) < 0.05
        assert abs(float((m > 1).float().mean()) - np.exp(-1)) < 0.01      # the survival function of Exp(1)
    assert float((mixed_exponential(q, r, 0.01) - q).abs().median()) < 0.05   # a small strength moves q little


def test_dalle_draws_are_multinomials_at_strength_zero_and_its_exponential_race_otherwise():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(6, 1024) * 3, -1)
    probs[:, :300] = 0                                      # filtered codes (top-k) are never drawn
    for strength in (0.0, 1e-12):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        sub = torch.Generator().manual_seed(4)
        for _ in range(20):
            want = torch.multinomial(probs, 1, generator=g1)
            # strength 0 calls multinomial itself; a vanishing strength races the same exponentials
            assert torch.equal(draw_codes(probs, g2, sub, strength), want)
    assert (draw_codes(probs, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2), 0.5) >= 300).all()


# -- every engine -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusion_parts(registry):
    p = diffusion_engine.load_preset("shapes")
    return {role: registry.get(spec) for role, spec in diffusion_engine.ENGINE_SPEC.components(p).items()}


def _diffusion(parts, **kw):
    req = diffusion_engine.DiffusionRequest(**{"prompt": "a red circle above a blue square", "steps": 8,
                                               "preview_every": 0, "batch": 2, **kw})
    return generate(diffusion_engine.sample(req, parts["diffusion"], parts["vqgan"], parts["text_encoder"], "cpu"))


def test_diffusion_vary_seed(diffusion_parts):
    base = _diffusion(diffusion_parts, seed=0).images
    assert _same(base, _diffusion(diffusion_parts, seed=0, subseed=5, subseed_strength=0.0).images)
    other = _diffusion(diffusion_parts, seed=5).images
    small = _diffusion(diffusion_parts, seed=0, subseed=5, subseed_strength=0.05)
    assert 0 < _dist(base, small.images) < _dist(base, other) / 4
    assert small.meta["settings"]["subseed"] == 5 and small.meta["settings"]["subseed_strength"] == 0.05
    assert _same(other, _diffusion(diffusion_parts, seed=0, subseed=5, subseed_strength=1.0).images)
    # image to image varies the noise added to the init as well
    init = base[0]
    i2i = [_diffusion(diffusion_parts, seed=0, init_image=init, strength=0.8, subseed=5, subseed_strength=s).images
           for s in (0.0, 0.5)]
    assert _same(_diffusion(diffusion_parts, seed=0, init_image=init, strength=0.8).images, i2i[0])
    assert not _same(i2i[0], i2i[1])


@pytest.fixture(scope="module")
def unclip_parts(registry):
    p = unclip_engine.load_preset("shapes")
    specs = unclip_engine.ENGINE_SPEC.components(p)
    return unclip_engine.parts_from({role: registry.get(spec) for role, spec in specs.items()})


def _unclip(parts, **kw):
    req = unclip_engine.UnCLIPRequest(**{"prompt": "a red circle above a blue square", "prior_steps": 4, "steps": 6,
                                         "preview_every": 0, **kw})
    return generate(unclip_engine.sample(req, parts, torch.device("cpu")))


def test_unclip_vary_seed_moves_the_prior_and_the_decoder(unclip_parts):
    base = _unclip(unclip_parts, seed=0, batch=2)
    assert _same(base.images, _unclip(unclip_parts, seed=0, batch=2, subseed=5, subseed_strength=0.0).images)
    other = _unclip(unclip_parts, seed=5, batch=2)
    small = _unclip(unclip_parts, seed=0, batch=2, subseed=5, subseed_strength=0.05)
    assert 0 < _dist(base.images, small.images) < _dist(base.images, other.images) / 2
    assert _same(other.images, _unclip(unclip_parts, seed=0, batch=2, subseed=5, subseed_strength=1.0).images)
    # an interpolation's shared noise varies too, in one piece as in bounded ones
    blend = dict(mode="interpolate", prompt="a red circle", prompt_b="a blue star", frames=3, seed=0, subseed=5)
    whole = _unclip(unclip_parts, **blend, subseed_strength=0.3)
    assert not _same(whole.images, _unclip(unclip_parts, **blend, subseed_strength=0.0).images)
    req = unclip_engine.UnCLIPRequest(**{"prior_steps": 4, "steps": 6, "preview_every": 0, **blend,
                                         "subseed_strength": 0.3})
    pieces, state = None, None
    while True:
        events = list(unclip_engine.sample(req, unclip_parts, torch.device("cpu"), resume=state, max_steps=6))
        if not hasattr(events[-1], "state"):
            pieces = events[-1]
            break
        state = events[-1].state
    # the whole run decodes its 3 frames as one batch, the pieces one frame each: float32 sums may round apart
    assert _same_but_rounding(whole.images, pieces.images)


def _vqgan(registry, **kw):
    req = vqgan_engine.VQGANCLIPRequest(**{"prompt": "a red circle:1 | on a blue background:0.5", "iterations": 12,
                                           "cutn": 4, "preview_every": 1, "precision": "float32", **kw})
    return list(vqgan_engine.run(req, registry))


def test_vqgan_clip_vary_seed_mixes_the_random_start(registry):
    base = _vqgan(registry, seed=0)
    assert _same(base[-1].images, _vqgan(registry, seed=0, subseed=9, subseed_strength=0.0)[-1].images)
    small = _vqgan(registry, seed=0, subseed=9, subseed_strength=0.01)
    assert small[0].previews["current"].tobytes() == base[0].previews["current"].tobytes()   # the same codes
    assert not _same(base[-1].images, small[-1].images)
    # the optimisation amplifies any change (a code that flips), so "close" holds on average over seeds
    near, far = [], []
    for seed in range(1, 6):
        mine = _vqgan(registry, seed=seed, preview_every=0)[-1].images
        near.append(_dist(mine, _vqgan(registry, seed=seed, subseed=100 + seed, subseed_strength=0.01,
                                       preview_every=0)[-1].images))
        far.append(_dist(mine, _vqgan(registry, seed=seed + 50, preview_every=0)[-1].images))
    assert np.mean(near) < np.mean(far) / 2
    # strength 1 starts where the subseed starts (the cutouts' draws stay the seed's, as a sampler's noise does)
    full = _vqgan(registry, seed=0, subseed=9, subseed_strength=1.0)
    assert full[0].previews["current"].tobytes() == _vqgan(registry, seed=9)[0].previews["current"].tobytes()
    assert full[-1].meta["settings"]["subseed"] == 9 and full[-1].meta["settings"]["subseed_strength"] == 1.0
    init = _vqgan(registry, seed=0, init_image=base[-1].images[0], subseed_strength=0.5)
    assert any("no effect" in (e.notice or "") for e in init if isinstance(e, Step))


@pytest.fixture(scope="module")
def dalle_parts():
    from tokenizers import Tokenizer

    from pipelines.models.vqgan_files import from_pretrained as load_vqgan
    from pipelines.presets import PRESETS_DIR

    tokenizer = Tokenizer.from_file(str(PRESETS_DIR / "weights" / "shapes-clip" / "tokenizer.json"))
    torch.manual_seed(0)
    model = DALLE(DalleConfig(text_vocab=tokenizer.get_vocab_size(), n_layer=1, n_embd=32, n_head=2), tokenizer).eval()
    return model, load_vqgan(PRESETS_DIR / "weights" / "shapes-vqgan")


def _codes(model, **kw):
    text, _ = model.text(["a large yellow diamond above a small blue circle"])
    gen = torch.Generator().manual_seed(kw.pop("seed"))
    *_, codes = model.sample(text.expand(4, -1), generator=gen, **kw)
    return codes


def test_dalle_vary_seed_moves_a_few_codes(dalle_parts):
    model, vqgan = dalle_parts
    base = _codes(model, seed=0)
    sub = lambda t: dict(subgenerator=torch.Generator().manual_seed(5), subseed_strength=t)  # noqa: E731
    assert torch.equal(base, _codes(model, seed=0, **sub(0.0)))
    assert torch.equal(_codes(model, seed=5), _codes(model, seed=0, **sub(1.0)))
    other = float((base == _codes(model, seed=5)).float().mean())
    small = float((base == _codes(model, seed=0, **sub(0.1))).float().mean())
    assert other < 0.2 < 0.6 < small < 1          # most codes stay the seed's, some move
    # through the engine: strength 0 is today's candidates, and the fields are in the settings
    req = dalle_engine.DalleRequest(prompt="a red circle", candidates=2, rerank=False, seed=3)
    plain = generate(dalle_engine.sample(req, model, vqgan))
    off = generate(dalle_engine.sample(req.replace(subseed=8, subseed_strength=0.0), model, vqgan))
    full = generate(dalle_engine.sample(req.replace(subseed=8, subseed_strength=1.0), model, vqgan))
    assert _same(plain.images, off.images)
    assert _same(full.images, generate(dalle_engine.sample(req.replace(seed=8), model, vqgan)).images)
    assert full.meta["settings"]["subseed"] == 8


@pytest.mark.parametrize("engine, kw", [
    (diffusion_engine, {}), (unclip_engine, {}), (dalle_engine, {"prompt": "a red circle"}),
    (vqgan_engine, {"prompt": "a red circle"}),
])
def test_bad_subseeds_are_clear_messages_and_settings_load_back(engine, kw, tmp_path):
    spec = engine.ENGINE_SPEC
    for change, words in (({"subseed": -1}, "Subseed must be a whole number from 0"),
                          ({"subseed": 1.5}, "Subseed must be"),
                          ({"subseed_strength": 1.5}, "Subseed strength must be a number from 0 to 1"),
                          ({"subseed_strength": "abc"}, "Subseed strength must be a number")):
        with pytest.raises(ValueError, match=words):
            spec.check(spec.request(**{**kw, **change}), {}, "cpu")
    req = spec.request(**kw, subseed=12345678901, subseed_strength=0.25)
    back = spec.request_from_settings(spec.settings(req))
    assert back.subseed == 12345678901 and back.subseed_strength == 0.25
