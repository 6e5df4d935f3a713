"""The VQGAN reproduces the original taming-transformers tensors (golden data, 1e-5)."""
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.models import vqgan as V
from pipelines.models import vqgan_files as VF
from tests.conftest import FIXTURES

TINY = FIXTURES / "taming_vqgan_tiny"
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    return load_file(str(TINY / "golden.safetensors"))


@pytest.fixture(scope="module")
def model():
    return VF.load_taming(TINY / "last.ckpt", TINY / "model.yaml")


def test_config_from_yaml():
    cfg = VF.config_from_taming_yaml(TINY / "model.yaml")
    assert (cfg.embed_dim, cfg.n_embed, cfg.ch, cfg.ch_mult, cfg.attn_resolutions) == (8, 64, 32, (2, 1), (16,))
    assert cfg.factor == 2


def test_loss_keys_dropped_and_model_keys_strict():
    sd = VF.load_checkpoint_state_dict(TINY / "last.ckpt")
    assert len(sd) == 157 and not any(k.startswith("loss.") for k in sd)
    # strict loading: every key of the module is in the file and vice versa
    assert set(sd) == set(V.VQGAN(VF.config_from_taming_yaml(TINY / "model.yaml")).state_dict())


def test_golden_encode_decode(model, golden):
    x = golden["x"]
    with torch.no_grad():
        enc_out = model.encoder(x)
        h = model.quant_conv(enc_out)
        z_q, qloss, idx = model.encode(x)
        dec = model.decode(z_q)
    torch.testing.assert_close(enc_out, golden["enc_out"], atol=ATOL, rtol=0)
    torch.testing.assert_close(h, golden["h"], atol=ATOL, rtol=0)
    torch.testing.assert_close(z_q, golden["z_q"], atol=ATOL, rtol=0)
    assert torch.equal(idx, golden["indices"])
    assert torch.equal(idx.view(2, 16, 16), golden["indices_bhw"])
    torch.testing.assert_close(qloss, golden["qloss"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.post_quant_conv(z_q), golden["post_quant"], atol=ATOL, rtol=0)
    torch.testing.assert_close(dec, golden["dec"], atol=ATOL, rtol=0)


def test_golden_decode_from_indices(model, golden):
    with torch.no_grad():
        z = model.quantize.lookup(golden["indices"], (2, 16, 16))
        dec = model.decode_indices(golden["indices_bhw"], (2, 16, 16))
    torch.testing.assert_close(z, golden["z_q_from_code"], atol=0, rtol=0)
    torch.testing.assert_close(dec, golden["dec_from_code"], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="0..63"):
        model.decode_indices(torch.full((1, 2, 2), 64), (1, 2, 2))


def test_lightning_checkpoint_loads_with_weights_only():
    sd = VF.load_checkpoint_state_dict(TINY / "lightning_callbacks_fixture.ckpt")
    ref = VF.load_checkpoint_state_dict(TINY / "last.ckpt")
    assert set(sd) == {"quantize.embedding.weight", "quant_conv.weight", "quant_conv.bias",
                       "post_quant_conv.weight", "post_quant_conv.bias"}
    for k, v in sd.items():
        assert torch.equal(v, ref[k])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_pickle_refused(tmp_path):
    p = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "payload": _Evil()}, p)
    with pytest.raises(ValueError, match="could not be loaded safely"):
        VF.load_checkpoint_state_dict(p)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes((TINY / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(ValueError, match="bad.ckpt"):
        VF.load_checkpoint_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        VF.load_checkpoint_state_dict(tmp_path / "nope.ckpt")


def test_safetensors_and_own_format_roundtrip(model, golden, tmp_path):
    # a taming state_dict stored as safetensors (with loss keys) loads the same
    sd = torch.load(TINY / "last.ckpt", weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    m2 = VF.load_taming(tmp_path / "w.safetensors", TINY / "model.yaml")
    VF.save_pretrained(m2, tmp_path / "own")
    m3 = VF.from_pretrained(tmp_path / "own")
    with torch.no_grad():
        torch.testing.assert_close(m3.decode(m3.encode(golden["x"])[0]), golden["dec"], atol=ATOL, rtol=0)


def test_real_architectures_match_reference_key_list():
    """The ImageNet f16 config builds exactly the keys and shapes of the real checkpoints."""
    import csv
    rows = list(csv.reader(open(FIXTURES / "taming_state_dict_keys.tsv"), delimiter="\t"))
    expected = {r[1]: r[2].replace(" ", "") for r in rows if r and r[0] in ("f16_both", "f16_16384")}
    with torch.device("meta"):
        m = V.VQGAN(V.VQGANConfig(n_embed=16384))
    got = {k: str(list(v.shape)).replace(" ", "") for k, v in m.state_dict().items()}
    assert got == expected
    assert sum(v.numel() for k, v in m.state_dict().items() if not k.startswith("quantize.")) == 71_879_555
    gumbel = {r[1]: r[2].replace(" ", "") for r in rows if r and r[0] == "gumbel_f8"}
    with torch.device("meta"):
        g = V.VQGAN(V.VQGANConfig(n_embed=8192, ch_mult=(1, 1, 2, 4), attn_resolutions=(32,), quantizer="gumbel"))
    assert {k: str(list(v.shape)).replace(" ", "") for k, v in g.state_dict().items()} == gumbel


def test_size_check_message(model):
    with pytest.raises(ValueError, match="multiples of 2"):
        model.encode(torch.zeros(1, 3, 31, 32))


def test_synth_matches_vqgan_clip_golden(model):
    """decode(vector_quantize(z)) through clamp_with_grad, value and gradient (vqgan_clip_ops goldens)."""
    from pipelines.vqgan_clip_ops import clamp_with_grad, vector_quantize

    g = load_file(str(FIXTURES / "vqgan_clip_ops" / "golden_ops.safetensors"))
    z = load_file(str(TINY / "golden.safetensors"))["h"].clone().requires_grad_(True)
    w = torch.linspace(-1, 1, 6144).reshape(2, 3, 32, 32)
    # 1. exactly as generate.py: the non-contiguous z_q straight into post_quant_conv
    z_q = vector_quantize(z.movedim(1, 3), model.codebook).movedim(3, 1)
    out = clamp_with_grad(model.decoder(model.post_quant_conv(z_q)).add(1).div(2), 0, 1)
    torch.testing.assert_close(out, g["synth_out"], atol=ATOL, rtol=0)
    (out * w).sum().backward()
    # the gradient sums 6144 weighted pixels back through the decoder (|grad| up to 3.9): float32 kernels of
    # another CPU (AVX-512 here, 1 thread) land up to 1.1e-5 away, so the bound also scales with the value
    torch.testing.assert_close(z.grad, g["synth_grad_z"], atol=ATOL, rtol=1e-5)
    # 2. our decode() makes z_q contiguous first; oneDNN then picks another kernel (|grad| up to 3.9)
    z.grad = None
    out = clamp_with_grad(model.decode(vector_quantize(z.movedim(1, 3), model.codebook).movedim(3, 1)).add(1).div(2), 0, 1)
    (out * w).sum().backward()
    torch.testing.assert_close(out, g["synth_out"], atol=ATOL, rtol=0)
    torch.testing.assert_close(z.grad, g["synth_grad_z"], atol=2e-5, rtol=0)
