"""Registry, presets and ZeroGPU helper: lazy shared loading, thread safety, memory budget,
clear errors for missing/corrupt/unreachable weights, and safe preset lookup. All offline."""
from __future__ import annotations

import importlib
import json
import logging
import shutil
import sys
import threading
import time
import types

import pytest
import torch
import torch.nn as nn

from pipelines import zerogpu
from pipelines.models import vqgan, vqgan_files
from pipelines.presets import (PRESETS_DIR, ComponentSpec, PresetError, is_offline_capable, list_presets,
                               load_preset, url_filename)
from pipelines.registry import ModelUnavailable, Registry, pick_device, weights_id
from tests.conftest import FIXTURES

TAMING = FIXTURES / "taming_vqgan_tiny"
LINEAR_BYTES = 16 * 16 * 4


# ---------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------


class CountingLoader:
    """A fake loader: nn.Linear(16, 16) (1 KiB), optionally slow, counting its calls per key."""

    def __init__(self, delay: float = 0.0, barrier: threading.Barrier | None = None):
        self.delay, self.barrier = delay, barrier
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, spec, registry):
        with self._lock:
            self.calls.append(spec.key)
        if self.barrier is not None:
            self.barrier.wait()  # raises BrokenBarrierError unless the other load runs at the same time
        time.sleep(self.delay)
        return nn.Linear(16, 16, bias=False)

    def count(self, spec) -> int:
        return self.calls.count(spec.key)


def fake(name: str) -> ComponentSpec:
    return ComponentSpec("fake", "builtin", name)


def keys(reg: Registry) -> set[str]:
    return {row["key"] for row in reg.status()}


@pytest.fixture
def weights(tmp_path):
    """A weights dir with the tiny taming VQGAN as a taming folder and as an Atelier folder."""
    wd = tmp_path / "weights"
    (wd / "tiny-taming").mkdir(parents=True)
    for name in ("last.ckpt", "model.yaml"):
        shutil.copy(TAMING / name, wd / "tiny-taming" / name)
    vqgan_files.save_pretrained(vqgan_files.load_taming(TAMING / "last.ckpt", TAMING / "model.yaml"), wd / "tiny-atelier")
    return wd


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIP (hidden 32, 1 layer, 32 px) saved in the transformers layout."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from pipelines.models.clip import CLIP, save_clip
    from lab.train.clip import train_tokenizer

    tok = train_tokenizer(n_captions=200)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    wd = tmp_path_factory.mktemp("clipweights")
    save_clip(CLIP(model, tok), wd / "tiny-clip")
    return wd


# ---------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------


def test_list_presets_reads_the_real_files():
    presets = list_presets()
    assert presets[0].name == "shapes"  # builtin-only first
    shapes, imagenet = presets[0], next(p for p in presets if p.name == "imagenet")
    assert shapes.label == "Built-in shapes (offline, 32 px)"
    assert shapes.components["vqgan"] == ComponentSpec("vqgan", "builtin", "shapes-vqgan")
    assert shapes.components["clip"].key == "clip:builtin:shapes-clip-factored"
    assert shapes.components["text_encoder"].key == "clip:builtin:shapes-clip"   # the diffusion model reads it
    # every default names a field of the engine's request, and the size suits the f4 VQGAN
    import dataclasses

    from pipelines.vqgan_clip import VQGANCLIPRequest
    fields = {f.name for f in dataclasses.fields(VQGANCLIPRequest)}
    for p in presets:
        assert set(p.defaults.get("vqgan_clip", {})) <= fields, p.name
    assert (shapes.defaults["vqgan_clip"]["width"], shapes.defaults["vqgan_clip"]["height"]) == (32, 32)
    assert is_offline_capable(shapes) and not is_offline_capable(imagenet)
    v = imagenet.components["vqgan"]
    assert v.source == "url" and set(v.files) == {"ckpt", "config"} and v.label == "last.ckpt"
    assert url_filename(v.files["config"]) == "model.yaml"
    assert imagenet.components["clip"] == ComponentSpec("clip", "hub", "openai/clip-vit-base-patch32")
    assert imagenet.defaults["vqgan_clip"]["augments"] == ["Af", "Pe", "Ji", "Er"]
    assert load_preset("shapes") == shapes and shapes.path == PRESETS_DIR / "shapes.json"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "..", "", "shapes.json", "x" * 65, "a\\b", "é"])
def test_load_preset_rejects_unsafe_names(name):
    with pytest.raises(PresetError, match="Invalid preset name"):
        load_preset(name)


def test_load_preset_unknown_and_symlink_escape(tmp_path):
    d = tmp_path / "presets"
    d.mkdir()
    shutil.copy(PRESETS_DIR / "shapes.json", d / "shapes.json")
    outside = tmp_path / "evil.json"
    outside.write_text(json.dumps({"name": "evil", "label": "x", "components": {"a": {"kind": "k", "path": "/"}}}))
    (d / "evil.json").symlink_to(outside)
    with pytest.raises(PresetError, match="Unknown preset 'nope'.*available: evil, shapes"):
        load_preset("nope", d)
    with pytest.raises(PresetError, match="Unknown preset 'evil'"):
        load_preset("evil", d)  # resolves outside the folder
    assert load_preset("shapes", d).name == "shapes"


def _bad(**over):
    data = {"name": "bad", "label": "Bad", "components": {"vqgan": {"kind": "vqgan", "builtin": "w"}}}
    data.update(over)
    return data


@pytest.mark.parametrize("data, problem", [
    ("{not json", "cannot read"),
    ({"name": "bad", "label": "Bad"}, "missing key \"components\""),
    (_bad(components={"vqgan": {"kind": "vqgan"}}), "exactly one of"),
    (_bad(components={"vqgan": {"kind": "vqgan", "builtin": "w", "hub": "a/b"}}), "exactly one of"),
    (_bad(components={"vqgan": {"kind": "vqgan", "builtin": "../w"}}), "folder name"),
    (_bad(components={"vqgan": {"kind": "vqgan", "builtin": "a/b"}}), "folder name"),
    (_bad(components={"vqgan": {"kind": "vqgan", "url": {"ckpt": "ftp://x"}}}), "http"),
    (_bad(components={"vqgan": {"builtin": "w"}}), "kind"),
    (_bad(name="other"), "file is 'bad.json'"),
    (_bad(defaults=[]), "defaults"),
])
def test_malformed_presets_name_file_and_problem(tmp_path, data, problem):
    (tmp_path / "bad.json").write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(PresetError) as e:
        load_preset("bad", tmp_path)
    assert "bad.json" in str(e.value) and problem in str(e.value)
    assert list_presets(tmp_path) == []  # skipped, with a warning


def test_two_presets_naming_the_same_builtin_share_one_instance(tmp_path):
    for name in ("one", "two"):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"name": name, "label": name, "components": {"m": {"kind": "fake", "builtin": "same"}}}))
    one, two = load_preset("one", tmp_path), load_preset("two", tmp_path)
    assert one.components["m"].key == two.components["m"].key
    loader = CountingLoader()
    reg = Registry(device="cpu", loaders={"fake": loader})
    assert reg.get(one.components["m"]) is reg.get(two.components["m"])
    assert len(loader.calls) == 1


def test_key_distinguishes_files_and_revision():
    a = ComponentSpec("vqgan", "hub", "o/r", {"ckpt": "a.ckpt", "config": "a.yaml"})
    b = ComponentSpec("vqgan", "hub", "o/r", {"ckpt": "b.ckpt", "config": "b.yaml"})
    assert a.key != b.key and a.key.startswith("vqgan:hub:o/r#")
    assert ComponentSpec("clip", "hub", "o/r", revision="v1").key == "clip:hub:o/r@v1"
    assert hash(a) == hash(ComponentSpec("vqgan", "hub", "o/r", {"ckpt": "a.ckpt", "config": "a.yaml"}))


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def test_lazy_load_and_sharing():
    loader = CountingLoader()
    reg = Registry(device="cpu", loaders={"fake": loader})
    assert reg.status() == [] and loader.calls == []  # nothing at construction
    m = reg.get(fake("a"))
    assert loader.count(fake("a")) == 1 and isinstance(m, nn.Linear)
    assert reg.get(fake("a")) is m and loader.count(fake("a")) == 1
    assert not m.training and not any(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("folder", ["tiny-taming", "tiny-atelier"])
def test_builtin_vqgan_loads_from_taming_and_atelier_folders(weights, folder):
    reg = Registry(device="cpu", weights_dir=weights)
    assert reg.status() == []
    model = reg.get(ComponentSpec("vqgan", "builtin", folder))
    assert isinstance(model, vqgan.VQGAN) and model.config.n_embed == 64 and not model.training
    ref = vqgan_files.load_taming(TAMING / "last.ckpt", TAMING / "model.yaml").state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    (row,) = reg.status()
    main = weights / folder / ("last.ckpt" if folder == "tiny-taming" else "model.safetensors")
    assert row["weights_id"] == weights_id(main) and len(row["weights_id"]) == 12
    assert row["key"] == f"vqgan:builtin:{folder}" and row["dtype"] == "float32" and row["device"] == "cpu"


def test_path_source_accepts_a_lone_checkpoint(weights):
    reg = Registry(device="cpu")
    model = reg.get(ComponentSpec("vqgan", "path", str(weights / "tiny-taming" / "last.ckpt")))
    assert isinstance(model, vqgan.VQGAN)


def test_tiny_clip_loads_and_status_rows(clip_dir):
    from pipelines.models.clip import CLIP

    reg = Registry(device="cpu", weights_dir=clip_dir)
    spec = ComponentSpec("clip", "builtin", "tiny-clip")
    with reg.use(spec) as (clip,):
        assert isinstance(clip, CLIP) and clip.image_size == 32
        assert clip.encode_text(["a red circle"]).shape == (1, 16)
        (row,) = reg.status()
        assert row["in_use"] == 1 and row["kind"] == "clip" and row["dtype"] == "float32"
        assert row["size_mb"] > 0 and row["last_used_s_ago"] >= 0 and row["offloaded"] is False
    assert reg.status()[0]["in_use"] == 0
    assert set(reg.status()[0]) >= {"key", "kind", "device", "dtype", "size_mb", "in_use", "last_used_s_ago"}


@pytest.mark.parametrize("layers", [1, 3])
def test_clip_image_embedding_equals_transformers_with_its_gradient(clip_dir, layers):
    """encode_image's own pass over the vision tower (the last layer for the class token only) gives
    transformers' get_image_features and the same gradient to the pixels; in training mode it is transformers'."""
    import torch.nn.functional as F

    from pipelines.models.clip import load_clip

    clip = load_clip(clip_dir / "tiny-clip")
    if layers > 1:  # a deeper tower with fresh weights, so that the class-token-only layer sits after others
        from transformers import CLIPConfig, CLIPModel

        cfg = clip.model.config.to_dict()
        cfg["vision_config"]["num_hidden_layers"] = layers
        torch.manual_seed(1)
        clip.model = CLIPModel(CLIPConfig(**{k: cfg[k] for k in ("text_config", "vision_config", "projection_dim")}))
        clip.model.eval()
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def embedding_and_grad(fn):
        x = pixels.clone().requires_grad_(True)
        e = fn(x)
        (e * torch.linspace(-1, 1, e.shape[1])).sum().backward()
        return e.detach(), x.grad

    def reference(x):
        normed = (x - clip.mean) / clip.std
        return clip.model.get_image_features(pixel_values=normed).pooler_output

    ours, ours_grad = embedding_and_grad(clip.encode_image)
    ref, ref_grad = embedding_and_grad(reference)
    assert torch.allclose(ours, ref, atol=1e-5) and torch.allclose(ours_grad, ref_grad, atol=1e-6)
    assert F.cosine_similarity(ours_grad.flatten(), ref_grad.flatten(), dim=0) > 0.9999
    clip.model.train()
    called = []
    handle = clip.model.vision_model.register_forward_hook(lambda *a: called.append(1))
    clip.encode_image(pixels)
    handle.remove()
    assert called == [1]            # training runs transformers' own forward (dropout and all)


def test_clip_attention_in_bfloat16_on_cpu_matches_float32(clip_dir, monkeypatch):
    """Under bfloat16 autocast on a CPU the image pass runs on a cached bfloat16 copy of the tower, its attention
    as explicit matrix products around a float32 softmax (torch's fused kernel is 3-4x slower backward there): the
    embedding and its pixel gradient stay within bfloat16 rounding of the float32 pass, the copy follows weights
    that change, and float32 still uses the fused kernel."""
    import torch.nn.functional as F

    from pipelines.models import clip as C

    clip = C.load_clip(clip_dir / "tiny-clip")
    clip.model.requires_grad_(False)
    pixels = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fused = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: fused.append(1) or sdpa(*a, **kw))

    def embedding_and_grad(dtype):
        x = pixels.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
            e = clip.encode_image(x)
        (e * torch.linspace(-1, 1, e.shape[1])).sum().backward()
        return e.detach(), x.grad

    e32, g32 = embedding_and_grad(torch.float32)
    assert fused                                   # float32: torch's fused kernel
    fused.clear()
    e16, g16 = embedding_and_grad(torch.bfloat16)
    assert not fused                               # bfloat16 on a CPU: the explicit products
    assert F.cosine_similarity(e16, e32).min() > 0.999
    assert F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0) > 0.995
    with torch.no_grad():                          # the bfloat16 copy of the tower follows an in-place update
        clip.model.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(1.5)
    e32b, _ = embedding_and_grad(torch.float32)
    e16b, _ = embedding_and_grad(torch.bfloat16)
    assert F.cosine_similarity(e32b, e32).min() < 0.99 and F.cosine_similarity(e16b, e32b).min() > 0.999
    q, k, v = torch.randn(3, 2, 4, 9, 8, generator=torch.Generator().manual_seed(1)).bfloat16()
    assert torch.allclose(C._attention(q, k, v, 0.35).float(), sdpa(q.float(), k.float(), v.float(), scale=0.35),
                          atol=2e-2)


def test_clip_image_pass_follows_weights_that_change(clip_dir):
    """The folded MLP and fused query/key/value weights are cached per layer; new weights (an in-place update,
    a loaded state dict) are used at once, and weights that train get their gradient."""
    from pipelines.models.clip import load_clip

    clip = load_clip(clip_dir / "tiny-clip")
    clip.model.requires_grad_(False)   # frozen, as the registry hands it out: the cache is in use
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def reference():
        return clip.model.get_image_features(pixel_values=(pixels - clip.mean) / clip.std).pooler_output

    before = clip.encode_image(pixels)
    layer = clip.model.vision_model.encoder.layers[0]
    with torch.no_grad():
        layer.mlp.fc1.weight.mul_(1.5)
        layer.self_attn.k_proj.bias.add_(0.3)
    after = clip.encode_image(pixels)
    assert not torch.allclose(before, after, atol=1e-4) and torch.allclose(after, reference(), atol=1e-5)
    state = {k: v * 0.9 if k.endswith("fc2.weight") else v for k, v in clip.model.state_dict().items()}
    clip.model.load_state_dict(state)
    assert torch.allclose(clip.encode_image(pixels), reference(), atol=1e-5)
    layer.mlp.fc1.weight.requires_grad_(True)
    clip.encode_image(pixels).sum().backward()
    assert layer.mlp.fc1.weight.grad is not None and layer.mlp.fc1.weight.grad.abs().sum() > 0


def test_describe_for_run_metadata(weights):
    reg = Registry(device="cpu", weights_dir=weights)
    spec = ComponentSpec("vqgan", "builtin", "tiny-taming")
    other = ComponentSpec("clip", "builtin", "not-loaded")
    with reg.use(spec):
        info = reg.describe(spec, other)
    assert info == {"vqgan": {"key": spec.key, "weights_id": weights_id(weights / "tiny-taming" / "last.ckpt"),
                              "dtype": "float32"},
                    "clip": {"key": other.key, "weights_id": None, "dtype": None}}
    json.dumps(info)
    # by role, for engines with two components of one kind
    assert reg.describe(clip=other, text_encoder=other) == {"clip": info["clip"], "text_encoder": info["clip"]}


def test_unload_one_or_all():
    loader = CountingLoader()
    reg = Registry(device="cpu", loaders={"fake": loader})
    reg.get(fake("a")), reg.get(fake("b"))
    reg.unload(fake("a").key)
    assert keys(reg) == {fake("b").key}
    reg.unload()
    assert reg.status() == []
    reg.get(fake("a"))
    assert loader.count(fake("a")) == 2  # reloaded lazily


# ---------------------------------------------------------------------------
# thread safety
# ---------------------------------------------------------------------------


def test_concurrent_gets_load_once():
    loader = CountingLoader(delay=0.2)
    reg = Registry(device="cpu", loaders={"fake": loader})
    start, results = threading.Barrier(8), []

    def worker():
        start.wait()
        results.append(reg.get(fake("a")))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert loader.count(fake("a")) == 1


def test_different_keys_load_concurrently():
    loader = CountingLoader(barrier=threading.Barrier(2, timeout=5))  # both loads must overlap
    reg = Registry(device="cpu", loaders={"fake": loader})
    errors = []

    def worker(name):
        try:
            reg.get(fake(name))
        except Exception as e:  # BrokenBarrierError if the loads were serialised
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and keys(reg) == {fake("a").key, fake("b").key}


# ---------------------------------------------------------------------------
# memory budget
# ---------------------------------------------------------------------------


def test_lru_eviction_on_cpu():
    loader = CountingLoader()
    reg = Registry(device="cpu", budget_bytes=2 * LINEAR_BYTES + 100, loaders={"fake": loader})
    a, b, c = fake("a"), fake("b"), fake("c")
    reg.get(a), reg.get(b)
    reg.get(c)
    assert keys(reg) == {b.key, c.key}  # a was least recently used
    reg.get(b)  # touch b: c is now the LRU one
    reg.get(a)
    assert keys(reg) == {a.key, b.key}
    assert loader.count(a) == 2 and loader.count(b) == 1 and loader.count(c) == 1


def test_models_in_use_are_never_evicted(caplog):
    loader = CountingLoader()
    reg = Registry(device="cpu", budget_bytes=2 * LINEAR_BYTES + 100, loaders={"fake": loader})
    a, b, c = fake("a"), fake("b"), fake("c")
    with reg.use(a) as (ma,):
        reg.get(b)
        reg.get(c)  # a is the LRU but in use: b goes
        assert keys(reg) == {a.key, c.key}
        with caplog.at_level(logging.WARNING, logger="pipelines.registry"):
            with reg.use(b, c) as mods:  # three in use, over budget: kept, with a warning
                assert len(mods) == 2 and keys(reg) == {a.key, b.key, c.key}
        assert "every model left is in use" in caplog.text
        assert reg.get(a) is ma
    assert loader.count(a) == 1


def test_offload_to_cpu_path_via_seam(monkeypatch):
    """The GPU path on a CPU machine: offload_device set, every move recorded through `_move`."""
    loader = CountingLoader()
    reg = Registry(device="cpu", budget_bytes=2 * LINEAR_BYTES + 100, loaders={"fake": loader})
    assert reg.offload_device is None  # default on CPU: evict
    offload = torch.device("cpu")
    reg.offload_device = offload
    moves = []
    original = reg._move
    monkeypatch.setattr(reg, "_move", lambda m, device, dtype=None: moves.append((m, device)) or original(m, device, dtype))
    a, b, c = fake("a"), fake("b"), fake("c")
    ma = reg.get(a)
    reg.get(b)
    reg.get(c)
    rows = {r["key"]: r for r in reg.status()}
    assert set(rows) == {a.key, b.key, c.key}  # offloaded, not dropped
    assert rows[a.key]["offloaded"] and not rows[b.key]["offloaded"] and not rows[c.key]["offloaded"]
    assert (ma, offload) in moves
    moves.clear()
    assert reg.get(a) is ma  # moved back, same object, no reload
    assert moves[0] == (ma, reg.device)
    rows = {r["key"]: r for r in reg.status()}
    assert not rows[a.key]["offloaded"] and rows[b.key]["offloaded"]  # b is now the LRU one
    assert len(loader.calls) == 3
    with reg.use(b, c):  # both come back; a (idle) goes out
        rows = {r["key"]: r for r in reg.status()}
        assert rows[a.key]["offloaded"] and not rows[b.key]["offloaded"]


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_missing_builtin_folder(tmp_path):
    reg = Registry(device="cpu", weights_dir=tmp_path)
    with pytest.raises(ModelUnavailable) as e:
        reg.get(ComponentSpec("vqgan", "builtin", "shapes-vqgan"))
    msg = str(e.value)
    assert "'shapes-vqgan' are missing or damaged" in msg and str(tmp_path / "shapes-vqgan") in msg


def test_corrupt_safetensors(weights):
    f = weights / "tiny-atelier" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    reg = Registry(device="cpu", weights_dir=weights)
    with pytest.raises(ModelUnavailable, match=r"missing or damaged \(.*model\.safetensors: "):
        reg.get(ComponentSpec("vqgan", "builtin", "tiny-atelier"))
    assert reg.status() == []


def test_loader_errors_are_wrapped_and_not_cached():
    calls = []

    def flaky(spec, registry):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad header")
        return nn.Linear(2, 2)

    reg = Registry(device="cpu", loaders={"fake": flaky})
    with pytest.raises(ModelUnavailable, match="bad header"):
        reg.get(fake("a"))
    assert isinstance(reg.get(fake("a")), nn.Linear)
    with pytest.raises(ModelUnavailable, match="No loader for component kind 'vqgan'"):
        reg.get(ComponentSpec("vqgan", "builtin", "x"))


def test_hub_offline_fails_fast():
    reg = Registry(device="cpu")
    assert reg.allow_network is False  # HF_HUB_OFFLINE=1 from conftest
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as e:
        reg.get(ComponentSpec("clip", "hub", "openai/clip-vit-base-patch32"))
    assert time.monotonic() - t0 < 2
    msg = str(e.value)
    assert "'openai/clip-vit-base-patch32' from the Hugging Face Hub" in msg
    assert "cannot be reached (offline)" in msg and "built-in 'shapes' preset" in msg


def test_url_offline_fails_fast(tmp_path):
    spec = load_preset("imagenet").components["vqgan"]
    reg = Registry(device="cpu", allow_network=False)
    reg.url_cache_dir = tmp_path
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as e:
        reg.get(spec)
    assert time.monotonic() - t0 < 2
    msg = str(e.value)
    assert "'last.ckpt' from heibox.uni-heidelberg.de" in msg and "cannot be reached (offline)" in msg
    assert "built-in 'shapes' preset" in msg and list(tmp_path.iterdir()) == []


def test_url_download_then_offline_reuse(tmp_path):
    """file:// URLs exercise the download path without a network."""
    spec = ComponentSpec("vqgan", "url", (TAMING / "last.ckpt").as_uri(),
                         {"ckpt": (TAMING / "last.ckpt").as_uri(), "config": (TAMING / "model.yaml").as_uri()})
    online = Registry(device="cpu", allow_network=True)
    online.url_cache_dir = tmp_path
    assert isinstance(online.get(spec), vqgan.VQGAN)
    offline = Registry(device="cpu", allow_network=False)
    offline.url_cache_dir = tmp_path
    assert isinstance(offline.get(spec), vqgan.VQGAN)  # from the cache
    assert offline.status()[0]["weights_id"] == weights_id(TAMING / "last.ckpt")
    assert not list(tmp_path.glob("**/*.part"))


def test_url_unreachable(tmp_path):
    spec = ComponentSpec("vqgan", "url", (tmp_path / "gone.ckpt").as_uri(),
                         {"ckpt": (tmp_path / "gone.ckpt").as_uri(), "config": (TAMING / "model.yaml").as_uri()})
    reg = Registry(device="cpu", allow_network=True)
    reg.url_cache_dir = tmp_path / "cache"
    with pytest.raises(ModelUnavailable, match="cannot be reached"):
        reg.get(spec)
    assert not list((tmp_path / "cache").glob("**/*.part"))


# ---------------------------------------------------------------------------
# devices, hashing, ZeroGPU
# ---------------------------------------------------------------------------


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cpu.*cuda.*mps"):
        pick_device("bogus")
    monkeypatch.setenv("ATELIER_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu") and Registry().device == torch.device("cpu")
    monkeypatch.setenv("ATELIER_DEVICE", "bogus")
    with pytest.raises(ValueError):
        pick_device()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            pick_device("cuda")


def test_budget_from_env(monkeypatch):
    monkeypatch.setenv("ATELIER_MEMORY_BUDGET_GB", "1.5")
    assert Registry(device="cpu").budget_bytes == int(1.5 * 2**30)
    monkeypatch.delenv("ATELIER_MEMORY_BUDGET_GB")
    assert Registry(device="cpu").budget_bytes is None


def test_weights_id_hashes_head_tail_and_size(tmp_path):
    f = tmp_path / "w.bin"
    data = bytearray(range(256)) * 4  # 1 KiB, chunk 100: head + tail + size only
    f.write_bytes(data)
    base = weights_id(f, chunk=100)
    data[500] ^= 1
    f.write_bytes(data)
    assert weights_id(f, chunk=100) == base  # the middle is not read
    data[0] ^= 1
    f.write_bytes(data)
    assert weights_id(f, chunk=100) != base
    f.write_bytes(bytes(data) + b"x")
    assert weights_id(f, chunk=100) != base
    assert weights_id(f) != weights_id(f, chunk=100)  # small files: whole content


def test_zerogpu_decorator_is_identity_off_zerogpu():
    """Without the spaces package, or with it (the tests install it) but not on ZeroGPU: the function itself."""
    def f():
        return 1

    assert zerogpu.gpu(f) is f
    assert zerogpu.gpu(duration=60)(f) is f
    assert zerogpu.gpu()(f) is f


def test_zerogpu_uses_spaces_when_present(monkeypatch):
    calls = []

    def GPU(fn=None, **kwargs):
        calls.append((fn, kwargs))
        if fn is None:
            return lambda g: ("wrapped", g, kwargs)
        return ("wrapped", fn, kwargs)

    def f():
        return 1

    try:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
            m.setenv("SPACE_ID", "someone/atelier")
            mod = importlib.reload(zerogpu)
            assert mod.ON_SPACES is True
            assert mod.gpu(f) == ("wrapped", f, {})
            assert mod.gpu(duration=60)(f) == ("wrapped", f, {"duration": 60})
            # the module's own GPU call, decorated at import with a duration from the request, then the two above
            assert calls == [(None, {"duration": mod.call_seconds}), (f, {}), (None, {"duration": 60})]
    finally:
        importlib.reload(zerogpu)
    assert zerogpu.gpu(f) is f and zerogpu.ON_SPACES is False


def test_hub_preset_without_network_fails_fast_even_when_allowed(monkeypatch, tmp_path):
    """With the network allowed but down, the probe answers before the hub client's retries."""
    import time

    import pipelines.registry as R
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr("pipelines.registry.weights._reachable", lambda host, port=443, timeout=3.0: False)
    reg = R.Registry(device="cpu", allow_network=True)
    t0 = time.monotonic()
    with pytest.raises(R.ModelUnavailable, match="cannot be reached \\(no network\\).*built-in 'shapes' preset"):
        reg.get(ComponentSpec("clip", "hub", "openai/clip-vit-base-patch32"))
    assert time.monotonic() - t0 < 2


# ---------------------------------------------------------------------------
# out of memory
# ---------------------------------------------------------------------------


def test_out_of_memory_in_a_run_is_a_clear_error_and_frees_idle_models():
    from pipelines.registry import DeviceOutOfMemory

    loader = CountingLoader()
    reg = Registry(device="cpu", loaders={"fake": loader})
    reg.get(fake("idle"))
    with pytest.raises(DeviceOutOfMemory, match="Out of memory on cpu.*smaller"):
        with reg.use(fake("a")):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert keys(reg) == {fake("a").key}            # the idle one was unloaded, the run's model kept
    with reg.use(fake("a"), fake("idle")) as (a, idle):   # and the next run works
        assert a is not None and idle is not None
    assert loader.count(fake("idle")) == 2


def test_out_of_memory_while_loading_is_a_clear_error():
    from pipelines.registry import DeviceOutOfMemory

    def oom(spec, registry):
        raise torch.OutOfMemoryError("CUDA out of memory")

    reg = Registry(device="cpu", loaders={"fake": oom})
    with pytest.raises(DeviceOutOfMemory, match="Out of memory"):
        reg.get(fake("a"))
    assert reg.status() == []


def test_the_diffusion_engine_takes_the_presets_text_encoder_instead_of_its_clip():
    """The built-in diffusion model reads the token states of the CLIP it was trained with (the preset's
    `text_encoder`); the preset's `clip`, which sees shapes, is neither loaded nor counted for it."""
    from pipelines.engines import ENGINES
    from pipelines.presets import load_preset

    shapes = load_preset("shapes")
    specs = ENGINES["diffusion"].components(shapes)
    assert specs["text_encoder"] == shapes.components["text_encoder"] and "clip" not in specs
    assert ENGINES["vqgan_clip"].components(shapes)["clip"] == shapes.components["clip"]
    assert ENGINES["dalle"].components(shapes)["clip"] == shapes.components["clip"]
    unclip = ENGINES["unclip"].components(shapes)
    assert unclip["clip"] == shapes.components["clip"] and unclip["text_encoder"] == shapes.components["text_encoder"]
