"""The VQGAN+CLIP download presets, proven offline on tiny stand-ins (lab/standin_builders/vqgan_clip.py).

`lab.standins.build` writes each preset's taming checkpoint and model.yaml where a download would put them
(Atelier's URL cache under the hub cache) and the OpenAI CLIPs in the hub cache's layout; with
`huggingface_hub.constants.HF_HUB_CACHE` pointing there and the network off, each preset loads through
the registry exactly as the real files would, and the engine draws with it.
"""
import shutil

import pytest
import torch
from PIL import Image

from pipelines import vqgan_clip as E
from pipelines.engines import ENGINES
from pipelines.events import Final, Step
from pipelines.presets import list_presets, load_preset

FAST = dict(prompt="a red circle:1 | a blue square:0.5", iterations=3, preview_every=1, cutn=2)
# each preset at a small size of its own factor (the f8 one at sides no f16 model could take)
SIZES = {"imagenet": (48, 32), "imagenet-f16-1024": (32, 48), "gumbel-f8": (40, 24),
         "imagenet-vit-b16": (32, 32), "imagenet-vit-l14": (32, 16), "imagenet-b32-b16": (32, 32)}
EXPECT = {"imagenet": (16, 16384, "vq"), "imagenet-f16-1024": (16, 1024, "vq"), "gumbel-f8": (8, 8192, "gumbel"),
          "imagenet-vit-b16": (16, 16384, "vq"), "imagenet-vit-l14": (16, 16384, "vq"),
          "imagenet-b32-b16": (16, 16384, "vq")}
CLIPS = {"imagenet": "openai/clip-vit-base-patch32", "imagenet-f16-1024": "openai/clip-vit-base-patch32",
         "gumbel-f8": "openai/clip-vit-base-patch32", "imagenet-vit-b16": "openai/clip-vit-base-patch16",
         "imagenet-vit-l14": "openai/clip-vit-large-patch14", "imagenet-b32-b16": "openai/clip-vit-base-patch32"}
SECOND_CLIPS = {"imagenet-b32-b16": "openai/clip-vit-base-patch16"}   # presets whose loop answers to two CLIPs


def download_presets():
    return [p for p in list_presets() if ENGINES["vqgan_clip"].supports(p)
            and any(c.source in ("url", "hub") for c in p.components.values())]


def build(cache):
    from lab import standins

    standins.build(cache, only="heibox")
    standins.build(cache, only="openai/clip")
    return cache


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return build(tmp_path_factory.mktemp("standin-hub"))


def offline_registry(cache, monkeypatch):
    from huggingface_hub import constants

    from pipelines.registry import Registry

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return Registry(device="cpu", allow_network=False)


@pytest.fixture(scope="module")
def registry(hub):
    with pytest.MonkeyPatch.context() as mp:
        yield offline_registry(hub, mp)


def run(registry, preset, **kw):
    w, h = SIZES.get(preset, (32, 32))
    return list(E.run(E.VQGANCLIPRequest(**{"preset": preset, "width": w, "height": h, **FAST, **kw}), registry))


def test_standin_for_every_vqgan_clip_download_preset():
    from lab import standins

    standins._register()
    presets = {p.name: p for p in download_presets()}
    assert set(presets) == set(SIZES)
    for name, p in presets.items():
        vqgan, clip = p.components["vqgan"], p.components["clip"]
        assert vqgan.source == "url" and vqgan.location in standins.URLS, name
        assert vqgan.location.startswith("https://heibox.uni-heidelberg.de/d/") and set(vqgan.files) == {"ckpt", "config"}
        assert clip.source == "hub" and clip.location == CLIPS[name] and clip.location in standins.HUB
        assert p.components["clip_2"].location == SECOND_CLIPS[name] if name in SECOND_CLIPS else "clip_2" not in p.components
        assert "(downloads)" in p.label and p.download_mb > 300, name


@pytest.mark.parametrize("preset", sorted(SIZES))
def test_standin_preset_loads_like_the_download_and_draws(registry, preset):
    p = load_preset(preset)
    vqgan = registry.get(p.components["vqgan"])
    assert (vqgan.factor, vqgan.config.n_embed, vqgan.config.quantizer) == EXPECT[preset]
    evs = run(registry, preset)
    steps, final = [e for e in evs if isinstance(e, Step)], evs[-1]
    size = SIZES[preset]
    assert isinstance(final, Final) and not final.stopped and final.images[0].size == size
    assert [s.previews["current"].size for s in steps] == [size] * 3
    assert final.meta["preset"] == preset and final.meta["iterations_done"] == 3
    assert final.meta["models"]["clip"]["key"] == f"clip:hub:{CLIPS[preset]}"
    if preset in SECOND_CLIPS:
        assert final.meta["models"]["clip_2"]["key"] == f"clip:hub:{SECOND_CLIPS[preset]}"
        assert final.meta["models"]["clip_2"]["weights_id"]
    else:
        assert "clip_2" not in final.meta["models"]
    assert final.meta["models"]["vqgan"]["key"] == p.components["vqgan"].key
    assert final.meta["models"]["vqgan"]["weights_id"]          # the file in the URL cache, hashed


def test_standin_checkpoints_have_taming_layout(hub):
    """last.ckpt: Lightning's dict (callbacks keyed by the ModelCheckpoint class), taming's keys with the loss
    modules of each real file; model.yaml: the original target and f8/f16 ddconfig."""
    import yaml

    from lab.standin_builders.vqgan_clip import MODELS
    from lab.standins import url_folder
    from pipelines.models import vqgan_files as VF

    loss_keys = {"vqgan_imagenet_f16_16384": 33 + 16, "vqgan_imagenet_f16_1024": 33 + 22, "vqgan_gumbel_f8": 0}
    for m in MODELS:
        folder = url_folder(hub, m.urls["ckpt"])
        with torch.serialization.safe_globals(VF._LIGHTNING_GLOBALS):
            ckpt = torch.load(folder / "ckpt-last.ckpt", weights_only=True)
        assert {"epoch", "global_step", "pytorch-lightning_version", "callbacks", "optimizer_states",
                "lr_schedulers", "state_dict"} <= set(ckpt)
        assert [c.__name__ for c in ckpt["callbacks"]] == ["ModelCheckpoint"]
        sd = ckpt["state_dict"]
        assert sum(k.startswith("loss.") for k in sd) == loss_keys[m.name], m.name
        quantizer = {"quantize.proj.weight", "quantize.proj.bias", "quantize.embed.weight"} \
            if m.target == "GumbelVQ" else {"quantize.embedding.weight"}
        assert quantizer <= set(sd)
        doc = yaml.safe_load((folder / "config-model.yaml").read_text())["model"]
        assert doc["target"] == f"taming.models.vqgan.{m.target}"
        assert doc["params"]["ddconfig"]["ch_mult"] == ([1, 1, 2, 4] if m.target == "GumbelVQ" else [1, 1, 2, 2, 4])
        cfg = VF.config_from_taming_yaml(folder / "config-model.yaml")
        assert cfg.factor == (8 if m.target == "GumbelVQ" else 16) and cfg.n_embed == m.n_embed


def test_standin_gumbel_init_image(registry):
    """An init image encodes deterministically (argmax of the Gumbel logits) onto codebook rows, and drives the run."""
    vqgan = registry.get(load_preset("gumbel-f8").components["vqgan"])
    x = torch.linspace(-1, 1, 3 * 24 * 40).reshape(1, 3, 24, 40)
    with torch.no_grad():
        z1, _, idx1 = vqgan.encode(x)
        z2, _, idx2 = vqgan.encode(x)
        logits = vqgan.quantize.proj(vqgan.encode_latent(x))
    assert torch.equal(idx1, idx2) and torch.equal(z1, z2) and z1.shape == (1, 32, 3, 5)
    assert torch.equal(idx1, logits.argmax(1).reshape(-1))
    assert torch.equal(z1.permute(0, 2, 3, 1).reshape(-1, 32), vqgan.codebook[idx1])
    init = Image.new("RGB", (80, 48), (200, 40, 40))
    evs = run(registry, "gumbel-f8", init_image=init, init_weight=0.5)
    assert evs[-1].images[0].size == (40, 24) and "loss/init" in evs[0].metrics
    assert evs[-1].meta["settings"]["init_image"]                # its digest, for the PNG's settings


def test_standin_wrong_layout_is_one_clear_line_and_the_rest_still_works(tmp_path, monkeypatch):
    from lab.standin_builders.vqgan_clip import MODELS
    from lab.standins import url_folder
    from pipelines.registry import ModelUnavailable

    cache = build(tmp_path / "hub")
    by_name = {m.name: url_folder(cache, m.urls["ckpt"]) for m in MODELS}
    # the ImageNet 16384 preset gets the Gumbel f8 checkpoint; the f16 1024 one a yaml of 2048 codes
    shutil.copy(by_name["vqgan_gumbel_f8"] / "ckpt-last.ckpt", by_name["vqgan_imagenet_f16_16384"] / "ckpt-last.ckpt")
    (by_name["vqgan_imagenet_f16_1024"] / "config-model.yaml").write_text(
        (by_name["vqgan_imagenet_f16_1024"] / "config-model.yaml").read_text().replace("n_embed: 1024", "n_embed: 2048"))
    registry = offline_registry(cache, monkeypatch)
    for preset, words in (("imagenet", ("holds a GumbelVQ", "describes a VQModel")),
                          ("imagenet-f16-1024", ("does not fit", "quantize.embedding.weight: [1024, 32] in the checkpoint, [2048, 32] in the yaml"))):
        for _ in range(2):                                        # a failed load is not cached: the same line again
            with pytest.raises(ModelUnavailable) as e:
                run(registry, preset)
            msg = str(e.value)
            assert "\n" not in msg and msg.count(". ") == 0 and all(w in msg for w in words), msg
    # nothing else disturbed: the intact preset and its CLIP load and draw in the same registry
    assert run(registry, "gumbel-f8")[-1].images[0].size == SIZES["gumbel-f8"]


def test_standin_2048_request_is_one_sentence_before_any_download(hub, monkeypatch):
    registry = offline_registry(hub, monkeypatch)
    for preset in ("imagenet", "gumbel-f8"):
        with pytest.raises(ValueError) as e:
            list(E.run(E.VQGANCLIPRequest(preset=preset, prompt="a cat", width=2048, height=2048), registry))
        assert str(e.value) == ("Width and height may be at most 256 pixels on this CPU (512 on a GPU); "
                                "2048x2048 was asked for.")
    assert registry.status() == []                                 # refused before anything loaded
    with pytest.raises(ValueError, match=r"^Width and height may be at most 512 pixels on a GPU; 2048x2048"):
        E.check_size(E.VQGANCLIPRequest(width=2048, height=2048), "cuda")
    E.check_size(E.VQGANCLIPRequest(width=512, height=512), "cuda")
    with pytest.raises(ValueError, match="at most 256 pixels"):
        E.check_size(E.VQGANCLIPRequest(width=512, height=256), "cpu")
    # sides come in the VQGAN's own steps: 8 for the f8 model, 16 for the f16 ones
    with pytest.raises(ValueError, match=r"multiple of 8 for this VQGAN \(got 100; try 96\)"):
        run(registry, "gumbel-f8", width=100)
    with pytest.raises(ValueError, match=r"multiple of 16 for this VQGAN \(got 40; try 32\)"):
        run(registry, "imagenet", width=40)
    # and the registry serves the next run as if nothing happened
    assert run(registry, "gumbel-f8")[-1].images[0].size == SIZES["gumbel-f8"]
