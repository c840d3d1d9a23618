"""Preset files: the shipped ones in ict_core/presets/ and any .yaml path, each a mapping of (nested or dotted)
overrides on the schema's defaults, with `base:` inheriting another preset first. load_config is the one entry
point: defaults <- preset <- overrides.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import ConfigError
from .engine import apply_overrides, coerce, parse_overrides
from .schema import Config

PRESET_DIR = Path(__file__).parent.parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_description(name: str) -> str:
    """The comment lines at the top of a shipped preset, joined into one line."""
    lines = []
    for line in (PRESET_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def _is_path(name_or_path: str) -> bool:
    return bool(Path(name_or_path).suffix) or "/" in name_or_path or "\\" in name_or_path


def _preset_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A shipped preset's file, or a .yaml path (relative to the including preset's folder for a `base:`)."""
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        if not path.is_file():
            what = "is a folder, not a .yaml file" if path.is_dir() else "does not exist"
            shipped = path.stem if path.stem in list_presets() else None
            hint = f"; the shipped preset of that name is --preset {shipped}" if shipped else ""
            where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
            raise ConfigError(f"preset file {str(path)!r} {what}{where}{hint}")
        return path
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(name_or_path, list_presets(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown preset {name_or_path!r}; {hint}available: {', '.join(list_presets())} "
                          f"(or a path to a .yaml file; --list-presets describes them)")
    return path


def preset_overrides(name_or_path: str, _relative_to: Path | None = None, _seen: tuple = ()) -> dict[str, Any]:
    """The dotted overrides a preset sets, its `base:` chain resolved (the base first, the file's own keys on top).

    `base:` names a shipped preset ("cifar10") or a .yaml path relative to the preset's own folder."""
    path = _preset_path(str(name_or_path), _relative_to)
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"preset {path}: `base:` chain runs in a circle: {chain}")
    try:
        with path.open() as stream:  # a stream, so that YAML's error names the file
            tree = yaml.safe_load(stream) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {path} is not valid YAML: {err}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"preset {path} must be a mapping of config keys, got {type(tree).__name__}")
    tree = dict(tree)
    out: dict[str, Any] = {}
    if "base" in tree:
        base = tree.pop("base")
        if not isinstance(base, str) or not base:
            raise ConfigError(f"preset {path}: base must name a preset or a .yaml path, got {base!r}")
        out.update(preset_overrides(base, path.parent, (*_seen, path.resolve())))
    try:
        own = parse_overrides(tree)
        for key, value in own.items():
            coerce(key, value)
    except ConfigError as err:
        raise ConfigError(f"preset {path}: {err}") from None
    out.update(own)
    return out


def load_preset(name_or_path: str | None) -> Config:
    """A preset is a YAML file of (nested or dotted) overrides on the defaults above: a shipped preset's name
    ("digits") or a path to a .yaml file. A `base:` key inherits another preset's values first."""
    if not name_or_path:
        return Config()
    flat = preset_overrides(name_or_path)
    try:
        return apply_overrides(Config(), flat)
    except ConfigError as err:
        raise ConfigError(f"preset {_preset_path(name_or_path)}: {err}") from None


def load_config(preset: str | None = None, overrides=None) -> Config:
    """The one entry point: defaults <- preset YAML <- overrides."""
    return apply_overrides(load_preset(preset), overrides)


def from_dict(tree: Mapping[str, Any]) -> Config:
    """Inverse of Config.to_dict() / Config.flat()."""
    return apply_overrides(Config(), dict(tree))
