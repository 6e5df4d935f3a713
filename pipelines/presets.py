"""Presets: JSON files in `presets/` naming each pipeline's components and default settings.

A preset is plain data; this module never imports torch. A component names where its
weights come from, with exactly one source:

    {"kind": "vqgan", "builtin": "shapes-vqgan"}              # presets/weights/shapes-vqgan/
    {"kind": "vqgan", "path": "/data/vqgan_f16"}               # a local folder or file
    {"kind": "clip",  "hub": "openai/clip-vit-base-patch32"}   # + optional "files", "revision"
    {"kind": "vqgan", "url": {"ckpt": "https://...", "config": "https://..."}}

`ComponentSpec.key` identifies the weights, so two presets naming the same weights share one
loaded instance in the registry (`pipelines/registry/`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
SOURCES = ("builtin", "path", "hub", "url")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COMPONENT_KEYS = {"kind", "files", "revision", *SOURCES}


class PresetError(ValueError):
    """A preset that cannot be found or read; the message names the file and the problem."""


@dataclass(frozen=True)
class ComponentSpec:
    kind: str                   # loader kind: "vqgan", "clip", ...
    source: str                 # one of SOURCES
    location: str               # builtin folder name, local path, hub repo id, or the ckpt URL
    files: Mapping[str, str] = field(default_factory=dict, hash=False)  # role -> file name (hub/path) or URL (url)
    revision: str | None = None  # hub only

    @property
    def key(self) -> str:
        """Identity of the weights: `kind:source:location`, plus revision and files when given."""
        key = f"{self.kind}:{self.source}:{self.location}"
        if self.revision:
            key += f"@{self.revision}"
        if self.files and self.source != "url":  # url files are already pinned by location (the ckpt URL)
            key += "#" + hashlib.sha256(json.dumps(dict(self.files), sort_keys=True).encode()).hexdigest()[:8]
        return key

    @property
    def label(self) -> str:
        """A short human name for messages: the folder, repo id or file name."""
        return url_filename(self.location) if self.source == "url" else self.location


def url_filename(url: str) -> str:
    """The file name a URL serves: the last path part, or a `p=` query (Seafile/heibox share links)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query).get("p")
    name = PurePosixPath(unquote(query[0] if query else parts.path)).name
    return name or parts.netloc or url


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    components: Mapping[str, ComponentSpec]
    defaults: Mapping[str, Mapping]
    path: Path
    download_mb: float = 0.0     # what the first use downloads (0: nothing, or unknown for a local path)

    @property
    def menu_label(self) -> str:
        """The label with what the first use downloads: "Stable Diffusion 1.5, 512 px (downloads 4.2 GB)"."""
        if is_offline_capable(self) or not self.download_mb:
            return self.label
        return f"{self.label.removesuffix(' (downloads)')} (downloads {_size(self.download_mb)})"

    @property
    def downloads(self) -> str:
        """What using it costs the first time, in a few words: "offline" or "downloads about 1.6 GB"."""
        if is_offline_capable(self):
            return "offline"
        mb = self.download_mb
        return f"downloads about {_size(mb)} on first use" if mb else "downloads on first use"


def _size(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def _component(role: str, d: Any, where: str) -> ComponentSpec:
    """Validate one component entry; `where` prefixes every error."""
    where = f"{where}: component '{role}'"
    if not isinstance(d, dict):
        raise PresetError(f"{where} must be an object")
    unknown = set(d) - _COMPONENT_KEYS
    if unknown:
        raise PresetError(f"{where} has unknown keys {sorted(unknown)}")
    kind = d.get("kind")
    if not isinstance(kind, str) or not kind:
        raise PresetError(f"{where} needs a \"kind\"")
    sources = [s for s in SOURCES if s in d]
    if len(sources) != 1:
        raise PresetError(f"{where} must have exactly one of {', '.join(SOURCES)} (found {len(sources)})")
    source = sources[0]
    value, files, revision = d[source], d.get("files", {}), d.get("revision")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise PresetError(f"{where}: \"files\" must map names to strings")
    if revision is not None and (source != "hub" or not isinstance(revision, str)):
        raise PresetError(f"{where}: \"revision\" is a string, for \"hub\" sources only")
    if source == "url":
        if files:
            raise PresetError(f"{where}: a \"url\" source lists its files itself")
        if not isinstance(value, dict) or "ckpt" not in value or not all(
                isinstance(u, str) and u.startswith(("https://", "http://")) for u in value.values()):
            raise PresetError(f"{where}: \"url\" must map \"ckpt\" (and e.g. \"config\") to http(s) URLs")
        return ComponentSpec(kind, "url", value["ckpt"], dict(value))
    if not isinstance(value, str) or not value.strip():
        raise PresetError(f"{where}: \"{source}\" must be a non-empty string")
    if source == "builtin" and (".." in value or "/" in value or "\\" in value):
        raise PresetError(f"{where}: builtin \"{value}\" must be a folder name under presets/weights/")
    return ComponentSpec(kind, source, value, dict(files), revision)


def parse_preset(data: Any, path: Path) -> Preset:
    """A Preset from decoded JSON; `path` names the file in errors."""
    where = str(path)
    if not isinstance(data, dict):
        raise PresetError(f"{where}: a preset must be a JSON object")
    for k in ("name", "label", "components"):
        if k not in data:
            raise PresetError(f"{where}: missing key \"{k}\"")
    name, label = data["name"], data["label"]
    if not isinstance(name, str) or not _NAME_RE.match(name) or not isinstance(label, str):
        raise PresetError(f"{where}: \"name\" must match {_NAME_RE.pattern} and \"label\" be a string")
    comps = data["components"]
    if not isinstance(comps, dict) or not comps:
        raise PresetError(f"{where}: \"components\" must be a non-empty object")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict) or not all(isinstance(v, dict) for v in defaults.values()):
        raise PresetError(f"{where}: \"defaults\" must map pipeline names to objects")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PresetError(f"{where}: \"description\" must be a string")
    download_mb = data.get("download_mb", 0)
    if not isinstance(download_mb, (int, float)) or isinstance(download_mb, bool) or download_mb < 0:
        raise PresetError(f"{where}: \"download_mb\" must be a number of megabytes, 0 or more")
    components = {role: _component(role, d, where) for role, d in comps.items()}
    return Preset(name, label, description, components, defaults, Path(path), float(download_mb))


def _read(path: Path) -> Preset:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PresetError(f"{path}: cannot read the preset ({e})") from None
    preset = parse_preset(data, path)
    if preset.name != path.stem:
        raise PresetError(f"{path}: \"name\" is '{preset.name}' but the file is '{path.stem}.json'")
    return preset


def is_offline_capable(preset: Preset) -> bool:
    """True when every component comes from this machine (builtin or path), so nothing downloads."""
    return all(c.source in ("builtin", "path") for c in preset.components.values())


def _builtin_only(preset: Preset) -> bool:
    return all(c.source == "builtin" for c in preset.components.values())


def list_presets(directory: Path | str = PRESETS_DIR) -> list[Preset]:
    """Every readable preset in `directory`, builtin-only ones first, then by name; bad files are logged."""
    presets = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            presets.append(_read(path))
        except PresetError as e:
            log.warning("Skipping preset: %s", e)
    return sorted(presets, key=lambda p: (not _builtin_only(p), p.name))


def load_preset(name: str, directory: Path | str = PRESETS_DIR) -> Preset:
    """The preset `<directory>/<name>.json`; the name cannot point outside `directory`."""
    directory = Path(directory).resolve()
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PresetError(f"Invalid preset name {name!r}: use letters, digits, '-' and '_' (at most 64).")
    path = (directory / f"{name}.json").resolve()
    if not path.is_relative_to(directory) or not path.is_file():  # resolve() also exposes symlinks out
        available = ", ".join(sorted(p.stem for p in directory.glob("*.json"))) or "none"
        raise PresetError(f"Unknown preset '{name}' (available: {available}).")
    return _read(path)
