"""VQGAN checkpoints: Atelier's own folders (config.json + model.safetensors) and the original
taming-transformers files (model.yaml + last.ckpt), for the model in `pipelines/models/vqgan.py`.

Original checkpoints load with `torch.load(weights_only=True)`: no arbitrary pickled object is
ever run (see `load_checkpoint_state_dict`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from pipelines.models.vqgan import VQGAN, VQGANConfig


MODEL_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
TARGETS = {"VQModel": "vq", "GumbelVQ": "gumbel"}          # taming's model.target class -> VQGANConfig.quantizer
_QUANTIZER_KEYS = {"quantize.embedding.weight": "VQModel", "quantize.embed.weight": "GumbelVQ"}


def config_from_taming_yaml(path: str | Path) -> VQGANConfig:
    """Read a taming model.yaml; only target, embed_dim, n_embed and ddconfig matter."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    try:
        model = doc["model"]
        target, params = model["target"], model["params"]
        if target.endswith("Net2NetTransformer"):  # a transformer checkpoint: use its first stage
            model = params["first_stage_config"]
            target, params = model["target"], model["params"]
        dd = params["ddconfig"]
        kind = TARGETS.get(str(target).rsplit(".", 1)[-1])
        if kind is None:
            raise ValueError(f"{Path(path).name}: unsupported model target {target!r} (VQModel or GumbelVQ)")
        return VQGANConfig(
            embed_dim=params["embed_dim"], n_embed=params["n_embed"], z_channels=dd["z_channels"],
            resolution=dd["resolution"], in_channels=dd["in_channels"], out_ch=dd["out_ch"], ch=dd["ch"],
            ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
            attn_resolutions=tuple(dd["attn_resolutions"]), dropout=dd.get("dropout", 0.0),
            double_z=dd.get("double_z", False), quantizer=kind,
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{Path(path).name} is not a taming model.yaml (missing {e})") from None


def _inert(module: str, name: str) -> type:
    """An empty class standing in for a pickled global that holds no weights."""
    return type(name, (), {"__module__": module})


# Globals that Lightning-era checkpoints reference outside their tensors. Allowing these inert
# stand-ins lets weights_only=True load them; anything else is refused (never unpickled).
_LIGHTNING_GLOBALS = [
    _inert("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    _inert("pytorch_lightning.callbacks.early_stopping", "EarlyStopping"),
    _inert("pytorch_lightning.callbacks.lr_monitor", "LearningRateMonitor"),
]


def load_checkpoint_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a taming .ckpt/.pt or a .safetensors file, `loss.*` and optimiser state dropped.

    .ckpt files are read with `torch.load(weights_only=True)`: arbitrary pickled objects are refused,
    and only the Lightning callback classes above are admitted, as inert placeholders.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            with torch.serialization.safe_globals(_LIGHTNING_GLOBALS):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # UnpicklingError for unknown globals, RuntimeError for a broken zip
            raise ValueError(f"{path.name} could not be loaded safely: {str(e).splitlines()[0]}") from None
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(sd, dict):
            raise ValueError(f"{path.name} holds no state_dict")
    if any(k.startswith("first_stage_model.") for k in sd):  # Net2NetTransformer checkpoints
        sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    return {k: v for k, v in sd.items() if k.startswith(MODEL_PREFIXES)}


def mismatch(sd: dict[str, torch.Tensor], model: VQGAN, ckpt_name: str, yaml_name: str) -> str | None:
    """Why a checkpoint's tensors do not fit the model its yaml describes, in one sentence (None: they fit)."""
    want = model.state_dict()
    held = {_QUANTIZER_KEYS[k] for k in sd if k in _QUANTIZER_KEYS}
    meant = "GumbelVQ" if model.config.quantizer == "gumbel" else "VQModel"
    if len(held) == 1 and meant not in held:
        return (f"{ckpt_name} holds a {held.pop()} but {yaml_name} describes a {meant}: "
                "the checkpoint and the yaml are not one model's files")
    missing = sorted(set(want) - set(sd))
    unknown = sorted(set(sd) - set(want))
    shaped = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    if not (missing or unknown or shaped):
        return None
    parts = []
    if shaped:
        k = shaped[0]
        parts.append(f"{len(shaped)} tensors of another shape, such as {k}: {list(sd[k].shape)} in the checkpoint, "
                     f"{list(want[k].shape)} in the yaml")
    if missing:
        parts.append(f"{len(missing)} missing, such as {missing[0]}")
    if unknown:
        parts.append(f"{len(unknown)} the yaml's model does not have, such as {unknown[0]}")
    return f"{ckpt_name} does not fit the model {yaml_name} describes ({'; '.join(parts)})"


def load_taming(ckpt_path: str | Path, yaml_path: str | Path) -> VQGAN:
    """Load an original taming-transformers VQGAN (`last.ckpt` or `.safetensors` + `model.yaml`), strictly.
    A checkpoint that does not fit its yaml (a GumbelVQ's tensors with a VQModel's yaml, another codebook
    size) is a ValueError whose message says so in one line."""
    model = VQGAN(config_from_taming_yaml(yaml_path))
    sd = load_checkpoint_state_dict(ckpt_path)
    why = mismatch(sd, model, Path(ckpt_path).name, Path(yaml_path).name)
    if why:
        raise ValueError(why)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def save_pretrained(model: VQGAN, directory: str | Path) -> None:
    """Write `config.json` + `model.safetensors`: the config travels with the weights."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(asdict(model.config), indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(directory / "model.safetensors"))


def from_pretrained(directory: str | Path) -> VQGAN:
    """Load an Atelier VQGAN folder, or a taming folder holding model.yaml + a .ckpt/.safetensors."""
    directory = Path(directory)
    if (directory / "config.json").is_file():
        cfg = VQGANConfig(**json.loads((directory / "config.json").read_text()))
        model = VQGAN(cfg)
        model.load_state_dict(load_checkpoint_state_dict(directory / "model.safetensors"), strict=True)
        return model.eval()
    yamls = sorted(directory.glob("**/*.yaml"))
    weights = sorted([*directory.glob("**/*.ckpt"), *directory.glob("**/*.safetensors")])
    if not yamls or not weights:
        raise FileNotFoundError(f"{directory} has neither config.json nor a taming model.yaml + checkpoint")
    return load_taming(weights[0], yamls[0])
