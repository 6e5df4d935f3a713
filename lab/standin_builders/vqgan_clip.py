"""Stand-ins for the taming-transformers VQGANs that the VQGAN+CLIP presets download from heibox.

Each is a randomly initialised VQGAN written exactly as the real share folder serves it (our notes:
shared/reference/taming_vqgan.md sections 1, 6 and 7, and taming_state_dict_keys.tsv):

- `last.ckpt`: a `torch.save` zip pickle of PyTorch Lightning 1.0's checkpoint dict (`epoch`, `global_step`,
  `pytorch-lightning_version`, `callbacks` keyed by the ModelCheckpoint *class*, `optimizer_states`,
  `lr_schedulers`, `state_dict`), its `state_dict` holding taming's key names in taming's order: encoder,
  decoder, `loss.*` (LPIPS + PatchGAN discriminator for the f16 models: n_layers 3 for f16 1024, 2 for
  f16 16384; none for the Gumbel f8, whose yaml has DummyLoss), quantize, quant_conv, post_quant_conv;
- `model.yaml`: the original file's keys, order and block style (target VQModel or GumbelVQ, lossconfig,
  the Gumbel temperature scheduler), written by PyYAML as the originals were.

Only the sizes shrink: ch 32, one ResnetBlock per level, 32-dim latents and codes, a discriminator and LPIPS
sixteen times narrower. The codebook sizes (1024, 16384, 8192), ch_mult, attn_resolutions and resolution
stay the real ones, so the factor (16 or 8), the attention placement and the quantizer are what the
downloads have. `render_yaml(real=True)` gives the real configs (the Gumbel one is 745 bytes, as the
downloaded file).

The callbacks key makes loading go through the same `weights_only=True` allow-list as a real Lightning
checkpoint: pickling it needs the class importable by name, so `_lightning_stub()` puts stub modules in
`sys.modules` for the duration of the save only.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from lab.standins import URLS

HEIBOX = "https://heibox.uni-heidelberg.de/d/{share}/files/?p=%2F{path}&dl=1"


def heibox_urls(share: str) -> dict[str, str]:
    """The ckpt and config download links of a taming share folder (`ckpts/last.ckpt`, `configs/model.yaml`)."""
    return {"ckpt": HEIBOX.format(share=share, path="ckpts%2Flast.ckpt"),
            "config": HEIBOX.format(share=share, path="configs%2Fmodel.yaml")}


@dataclass(frozen=True)
class Upstream:
    """One public taming VQGAN: its share folder and what its model.yaml says."""
    name: str
    share: str
    target: str                     # VQModel or GumbelVQ
    n_embed: int
    ch_mult: tuple[int, ...]
    attn_resolutions: tuple[int, ...]
    monitor: bool                   # `monitor: val/rec_loss` present
    loss: dict = field(default_factory=dict)   # lossconfig params of VQLPIPSWithDiscriminator; {} = DummyLoss
    seed: int = 0

    @property
    def urls(self) -> dict[str, str]:
        return heibox_urls(self.share)


MODELS = [
    Upstream("vqgan_imagenet_f16_16384", "a7530b09fed84f80a887", "VQModel", 16384, (1, 1, 2, 2, 4), (16,), True,
             dict(disc_conditional=False, disc_in_channels=3, disc_start=0, disc_weight=0.75, disc_num_layers=2,
                  codebook_weight=1.0), seed=16384),
    Upstream("vqgan_imagenet_f16_1024", "8088892a516d4e3baf92", "VQModel", 1024, (1, 1, 2, 2, 4), (16,), False,
             dict(disc_conditional=False, disc_in_channels=3, disc_start=250001, disc_weight=0.8,
                  codebook_weight=1.0), seed=1024),
    Upstream("vqgan_gumbel_f8", "2e5662443a6b4307b470", "GumbelVQ", 8192, (1, 1, 2, 4), (32,), True, {}, seed=8192),
]

# the stand-in's sizes (the real ones: ch 128, num_res_blocks 2, z_channels = embed_dim = 256)
TINY = dict(ch=32, num_res_blocks=1, z_channels=32, embed_dim=32)
REAL = dict(ch=128, num_res_blocks=2, z_channels=256, embed_dim=256)
NARROW = 16                         # the loss modules' channels are divided by this


def config_doc(m: Upstream, real: bool = False) -> dict:
    """model.yaml as a dict, keys in the original order."""
    size = REAL if real else TINY
    params: dict = {}
    if m.target == "GumbelVQ":
        params["kl_weight"] = 1.0e-08
    params["embed_dim"] = size["embed_dim"]
    params["n_embed"] = m.n_embed
    if m.monitor:
        params["monitor"] = "val/rec_loss"
    if m.target == "GumbelVQ":
        params["temperature_scheduler_config"] = {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9, "lr_max": 0.9,
                       "lr_min": 1.0e-06}}
    params["ddconfig"] = {
        "double_z": False, "z_channels": size["z_channels"], "resolution": 256, "in_channels": 3, "out_ch": 3,
        "ch": size["ch"], "ch_mult": list(m.ch_mult), "num_res_blocks": size["num_res_blocks"],
        "attn_resolutions": list(m.attn_resolutions), "dropout": 0.0}
    if m.loss:
        params["lossconfig"] = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                                "params": dict(m.loss)}
    else:
        params["lossconfig"] = {"target": "taming.modules.losses.vqperceptual.DummyLoss"}
    return {"model": {"base_learning_rate": 4.5e-06, "target": f"taming.models.vqgan.{m.target}", "params": params}}


def render_yaml(m: Upstream, real: bool = False) -> str:
    import yaml

    return yaml.safe_dump(config_doc(m, real), sort_keys=False, default_flow_style=False)


def _lpips_keys() -> dict[str, torch.Tensor]:
    """LPIPS (VGG16 slices + lin layers) under `loss.perceptual_loss.`: taming's names, narrow shapes."""
    out: dict[str, torch.Tensor] = {
        "loss.perceptual_loss.scaling_layer.shift": torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1),
        "loss.perceptual_loss.scaling_layer.scale": torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)}
    vgg = {1: [(0, 64), (2, 64)], 2: [(5, 128), (7, 128)], 3: [(10, 256), (12, 256), (14, 256)],
           4: [(17, 512), (19, 512), (21, 512)], 5: [(24, 512), (26, 512), (28, 512)]}
    c_in = 3
    for s, convs in vgg.items():
        for idx, c in convs:
            c //= NARROW
            out[f"loss.perceptual_loss.net.slice{s}.{idx}.weight"] = torch.randn(c, c_in, 3, 3) * 0.1
            out[f"loss.perceptual_loss.net.slice{s}.{idx}.bias"] = torch.zeros(c)
            c_in = c
    for i, c in enumerate((64, 128, 256, 512, 512)):
        out[f"loss.perceptual_loss.lin{i}.model.1.weight"] = torch.rand(1, c // NARROW, 1, 1)
    return out


def _discriminator_keys(n_layers: int) -> dict[str, torch.Tensor]:
    """NLayerDiscriminator (PatchGAN) under `loss.discriminator.main.`: conv, then (conv, BatchNorm) per layer."""
    out: dict[str, torch.Tensor] = {}
    ndf = 64 // NARROW

    def conv(k, c_out, c_in, bias):
        out[f"loss.discriminator.main.{k}.weight"] = torch.randn(c_out, c_in, 4, 4) * 0.02
        if bias:
            out[f"loss.discriminator.main.{k}.bias"] = torch.zeros(c_out)

    def batchnorm(k, c):
        out.update({f"loss.discriminator.main.{k}.weight": torch.ones(c),
                    f"loss.discriminator.main.{k}.bias": torch.zeros(c),
                    f"loss.discriminator.main.{k}.running_mean": torch.zeros(c),
                    f"loss.discriminator.main.{k}.running_var": torch.ones(c),
                    f"loss.discriminator.main.{k}.num_batches_tracked": torch.tensor(0)})

    conv(0, ndf, 3, True)                   # main.1 is the LeakyReLU
    k, c = 2, ndf
    for n in range(1, n_layers + 1):        # the last of these has stride 1
        c_next = ndf * min(2 ** n, 8)
        conv(k, c_next, c, False)
        batchnorm(k + 1, c_next)
        k, c = k + 3, c_next
    conv(k, 1, c, True)
    return out


def state_dict(m: Upstream) -> OrderedDict:
    """The tiny model's tensors with taming's loss keys, in taming's order (encoder, decoder, loss, the rest)."""
    from pipelines.models import vqgan_files
    from pipelines.models.vqgan import VQGAN

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "model.yaml"
        cfg_path.write_text(render_yaml(m))
        cfg = vqgan_files.config_from_taming_yaml(cfg_path)
    torch.manual_seed(m.seed)
    model_sd = VQGAN(cfg).state_dict()
    loss = {}
    if m.loss:
        loss = {**_lpips_keys(), **_discriminator_keys(m.loss.get("disc_num_layers", 3))}
    sd = OrderedDict()
    for k, v in model_sd.items():
        if k.startswith(("quantize.", "quant_conv.", "post_quant_conv.")) and loss:
            sd.update(loss)
            loss = {}
        sd[k] = v.detach().clone()
    return sd


@contextlib.contextmanager
def _lightning_stub():
    """`pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint` importable by name while pickling:
    the inert class the loader allows, in stub modules that are removed afterwards."""
    from pipelines.models.vqgan_files import _LIGHTNING_GLOBALS

    cls = next(c for c in _LIGHTNING_GLOBALS if c.__name__ == "ModelCheckpoint")
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        for n in names:
            sys.modules[n] = types.ModuleType(n)
        sys.modules[names[-1]].ModelCheckpoint = cls
        yield cls
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def write_checkpoint(m: Upstream, path: Path) -> None:
    """`last.ckpt` in Lightning 1.0's layout (the optimiser states are left out: only their place is kept)."""
    sd = state_dict(m)
    with _lightning_stub() as model_checkpoint:
        ckpt = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.0.8",
                "callbacks": {model_checkpoint: {"best_model_score": None, "best_model_path": ""}},
                "optimizer_states": [], "lr_schedulers": [], "state_dict": sd}
        torch.save(ckpt, path)


def build(m: Upstream, folder: Path, files: dict[str, Path]) -> None:
    """Write a preset's two URL files (`files`: role -> path in Atelier's URL cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(m, files["ckpt"])
    files["config"].write_text(render_yaml(m))


for _m in MODELS:
    URLS[_m.urls["ckpt"]] = partial(build, _m)
