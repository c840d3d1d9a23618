"""The typed engine behind every config key: conversion and range/choice checks (coerce, check_value, also for
tune/'s search-space files through parse_record), dotted overrides, did-you-mean for mistyped keys, the
cross-field checks (validate) and the config a run trains with (resolve_config, keep_schedule).

An unknown key or an out-of-range value raises ConfigError naming the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import fields
from typing import Any, Mapping, get_args, get_origin, get_type_hints

import yaml

from .. import datasets
from ..errors import ConfigError
from .schema import (MAX_INITIAL_EMA_SHARE, SECTIONS, Config, all_keys, default_huber_c, noise_distribution,
                     section_classes)


# Names other trainers use for a field here, so that "optim.learning_rate" still finds "optim.lr".
_NAME_ALIASES = {"learning_rate": "lr", "steps": "total_steps", "max_steps": "total_steps", "batch": "batch_size"}


def suggest_keys(key: str, limit: int = 2) -> list[str]:
    """Known dotted keys nearest to a mistyped one: the same field name in another section ("train.lr" ->
    "optim.lr"), else the closest spellings of the field name (own section first), else of the whole key."""
    keys = all_keys()
    section, _, name = key.rpartition(".")
    name = _NAME_ALIASES.get(name, name)
    same = [k for k in keys if k.split(".", 1)[1] == name and k != key]
    if same:
        return same[:limit]
    names = difflib.get_close_matches(name, {k.split(".", 1)[1] for k in keys}, n=limit, cutoff=0.7)
    near = sorted((k for k in keys if k.split(".", 1)[1] in names),
                  key=lambda k: (k.split(".", 1)[0] != section, names.index(k.split(".", 1)[1])))
    own = [k for k in near if k.split(".", 1)[0] == section]
    return (own or near)[:limit] or difflib.get_close_matches(key, keys, n=limit, cutoff=0.8)


def _did_you_mean(key: str) -> str:
    close = suggest_keys(key)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _field_of(key: str):
    if "." not in key:
        raise ConfigError(f"config key {key!r} must be dotted, like 'loss.huber_c'{_did_you_mean(key)}")
    section, name = key.split(".", 1)
    classes = section_classes()
    if section not in classes:
        raise ConfigError(f"unknown config section {section!r} in key {key!r}{_did_you_mean(key)} "
                          f"(sections: {', '.join(classes)})")
    for f in fields(classes[section]):
        if f.name == name:
            return classes[section], f
    allowed = ", ".join(f"{section}.{f.name}" for f in fields(classes[section]))
    raise ConfigError(f"unknown config key {key!r}{_did_you_mean(key)} (allowed in {section!r}: {allowed})")


def _parse_scalar(text: str) -> Any:
    """CLI values are parsed as YAML scalars/lists: 0.03, true, none, [1,2]."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def coerce(key: str, value: Any) -> Any:
    """Convert `value` to the type of `key` and check its allowed range or choices."""
    cls, f = _field_of(key)
    return check_value(key, get_type_hints(cls)[f.name], f.metadata, value)


def check_value(key: str, hint: Any, meta: Mapping, value: Any) -> Any:
    """The typed engine behind every config key (and every search-space field): convert `value` to `hint` (bool,
    int, float, str, a tuple of ints, or Optional of one) and check meta's choices or range; `key` names it in
    the error."""
    given = value
    if isinstance(value, str) and hint is not str:
        value = _parse_scalar(value)
    optional = get_origin(hint) is not None and type(None) in get_args(hint)
    base = next((a for a in get_args(hint) if a is not type(None)), hint) if optional else hint
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "auto") and optional):
        if optional:
            return None
        raise ConfigError(f"{key} may not be empty")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, (bool, int)) or value not in (0, 1, True, False):
                raise ValueError
            value = bool(value)
        elif base is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        elif base is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif base is tuple:
            if isinstance(value, int) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                example = meta.get("example", "[1,2]")
                raise ConfigError(f"{key} must be a list of integers such as {example} (YAML list syntax; on the "
                                  f"command line quote it: --set '{key}=[...]'), got {given!r}")
            value = tuple(value)
        elif base is str:
            value = str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be of type {base.__name__}, got {value!r}") from None
    if base is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}; got {value!r}")
    if "range" in meta:
        lo, hi, lo_open, hi_open = meta["range"]
        bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
            hi is not None and (value > hi or (hi_open and value == hi))
        )
        if bad:
            lo_s = "-inf" if lo is None else lo
            hi_s = "inf" if hi is None else hi
            interval = f"{'(' if lo_open else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
            raise ConfigError(f"{key} must be in {interval}, got {value!r}")
    return value


def parse_record(cls: type, tree: Any, where: str, what: str = "key") -> Any:
    """A frozen dataclass instance from a mapping, by the same typed engine as Config: an unknown key fails
    naming it and the allowed keys; bool/int/float/str fields go through check_value with their metadata;
    fields typed dict, list or Any are only checked to be a mapping, a list, or left as given."""
    if tree is None:
        tree = {}
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{where or 'the file'} must be a mapping, got {type(tree).__name__} {tree!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    prefix = f"{where}." if where else ""
    for key in tree:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown {what}; allowed: {', '.join(names)}")
    values = {}
    for f in fields(cls):
        if f.name not in tree:
            continue
        value, hint = tree[f.name], hints[f.name]
        optional = get_origin(hint) is not None and type(None) in get_args(hint)
        base = next((a for a in get_args(hint) if a is not type(None)), hint) if optional else hint
        if value is None and optional:
            values[f.name] = None
        elif base in (dict, list):
            if value is None:
                value = base()
            if not isinstance(value, base):
                kind = "a mapping" if base is dict else "a list"
                raise ConfigError(f"{prefix}{f.name} must be {kind}, got {type(value).__name__} {value!r}")
            values[f.name] = value
        elif base is Any:
            values[f.name] = value
        else:
            values[f.name] = check_value(f"{prefix}{f.name}", hint, f.metadata, value)
    return cls(**values)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted in SECTIONS:
            out.update(_flatten(value, dotted + "."))
        elif isinstance(value, Mapping) and not prefix:
            close = difflib.get_close_matches(str(key), list(SECTIONS), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config section {key!r}{hint} (allowed: {', '.join(SECTIONS)})")
        else:
            out[dotted] = value
    return out


def parse_overrides(overrides: Mapping[str, Any] | list[str] | None) -> dict[str, Any]:
    """Accept {"loss.huber_c": 0.03}, nested {"loss": {"huber_c": 0.03}} or ["loss.huber_c=0.03"]."""
    if overrides is None:
        return {}
    if isinstance(overrides, (list, tuple)):
        parsed = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value, e.g. loss.huber_c=0.03")
            key, value = item.split("=", 1)
            parsed[key.strip()] = value.strip()
        return parsed
    return _flatten(overrides)


def apply_overrides(cfg: Config, overrides) -> Config:
    flat = parse_overrides(overrides)
    sections = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        section, name = key.split(".", 1) if "." in key else (key, "")
        sections.setdefault(section, {})[name] = coerce(key, value)
    new_sections = {}
    for name, changes in sections.items():
        if changes:
            new_sections[name] = dataclasses.replace(getattr(cfg, name), **changes)
    out = dataclasses.replace(cfg, **new_sections)
    validate(out)
    return out


def resolve_config(cfg: Config, dim: int | None = None) -> Config:
    """The config a run trains with: every value that depends on the data or the objective filled in.

    loss.huber_c = null -> default_huber_c(d); loss.p_mean / loss.p_std = null -> the objective's own
    (noise_distribution). `dim` is d = C*H*W of the loaded data set; None takes it from ict_core.datasets.
    Values set explicitly are kept.
    """
    if cfg.loss.huber_c is None:
        if dim is None:
            dim = datasets.dataset_dim(cfg.data.name, cfg.data.resolution)[1]
        cfg = apply_overrides(cfg, {"loss.huber_c": float(default_huber_c(dim))})
    if cfg.loss.p_mean is None or cfg.loss.p_std is None:
        p_mean, p_std = noise_distribution(cfg.loss)
        cfg = apply_overrides(cfg, {"loss.p_mean": p_mean, "loss.p_std": p_std})
    return cfg


def keep_schedule(cfg: Config, saved: dict) -> tuple[Config, str]:
    """The config a resume continues with, and a note on its curriculum. `saved` is the checkpoint's config (a
    Config.to_dict() tree). A changed train.total_steps keeps the saved K (the curriculum does not stretch, and
    N(k) does not jump, under the steps already trained); an explicit train.curriculum_steps wins and the note
    says that the schedule changes."""
    train = saved.get("train") or {}
    if "total_steps" not in train:
        return cfg, ""
    old_k = int(train.get("curriculum_steps") or train["total_steps"])
    if cfg.train.curriculum_steps == 0:
        if old_k == cfg.train.total_steps:
            return cfg, ""
        kept = apply_overrides(cfg, {"train.curriculum_steps": old_k})
        return kept, (f"train.total_steps {train['total_steps']} -> {cfg.train.total_steps}: the curriculum keeps "
                      f"its K = {old_k} steps (N(k) past step {old_k} stays at its final value); to stretch it over "
                      f"the new length instead, resume with --set train.curriculum_steps={cfg.train.total_steps}")
    if cfg.train.curriculum_steps != old_k:
        return cfg, (f"train.curriculum_steps={cfg.train.curriculum_steps} changes the curriculum's K from {old_k}: "
                     f"N(k) of the steps to come follows the new schedule")
    return cfg, ""


def _validate_measurement(cfg: Config) -> None:
    """Checks that keep the evaluation honest (docs/MEASUREMENT.md)."""
    if cfg.eval.features == "inception" and not cfg.eval.inception_path:
        from ..inception import WEIGHTS_HINT

        raise ConfigError(f"eval.features=inception needs eval.inception_path (FID is computed in Inception-v3 "
                          f"features); {WEIGHTS_HINT}")
    first_eval = min(cfg.eval.every or cfg.train.total_steps, cfg.train.total_steps)
    if cfg.train.ema_rampup == 0 and cfg.train.ema_rate ** first_eval >= MAX_INITIAL_EMA_SHARE:
        raise ConfigError(
            f"train.ema_rampup=0 keeps a constant evaluation-EMA rate train.ema_rate={cfg.train.ema_rate}, which still "
            f"holds {cfg.train.ema_rate ** first_eval:.1%} of the initial weights at the first evaluation (step "
            f"{first_eval}); allowed: below {MAX_INITIAL_EMA_SHARE:.0%}. Set train.ema_rampup > 0 (e.g. 0.05) or a "
            f"lower train.ema_rate")
    if cfg.data.holdout_fraction + cfg.data.featnet_fraction >= 0.9:
        raise ConfigError(f"data.holdout_fraction + data.featnet_fraction must leave at least 10% of the images for "
                          f"training, got {cfg.data.holdout_fraction} + {cfg.data.featnet_fraction}")


def validate(cfg: Config) -> None:
    """Cross-field checks that a single key's range cannot express."""
    if cfg.curriculum.s1 < cfg.curriculum.s0:
        raise ConfigError(f"curriculum.s1 must be >= curriculum.s0, got s0={cfg.curriculum.s0}, s1={cfg.curriculum.s1}")
    if cfg.precond.sigma_max <= cfg.precond.sigma_min:
        raise ConfigError(
            f"precond.sigma_max must exceed precond.sigma_min, got {cfg.precond.sigma_max} <= {cfg.precond.sigma_min}"
        )
    if not cfg.network.channel_mult or any(m < 1 for m in cfg.network.channel_mult):
        raise ConfigError(f"network.channel_mult must be a non-empty list of positive ints, got {cfg.network.channel_mult}")
    data = datasets.spec(cfg.data.name)
    if data.resolutions and cfg.data.resolution not in data.resolutions:
        raise ConfigError(f"data.resolution must be one of {', '.join(map(str, data.resolutions))} for "
                          f"data.name={data.name}, got {cfg.data.resolution}")
    if data.needs_path and not cfg.data.path:
        raise ConfigError(f"data.path must name a local folder for data.name={cfg.data.name} (see README, Data sets)")
    _validate_measurement(cfg)
    _validate_architecture(cfg)


def data_resolution(cfg: Config) -> int:
    """Side length of the training images in pixels: data.resolution, or the data set's native size if 0."""
    return datasets.spec(cfg.data.name).resolution(cfg.data.resolution)


def network_resolutions(channel_mult, resolution: int) -> list[int]:
    """The resolution of each U-Net level, top to bottom (network.py: level l works at resolution / 2^l)."""
    return [resolution >> level for level in range(len(channel_mult))]


def _validate_architecture(cfg: Config) -> None:
    """The U-Net must fit the data: every level halves the resolution, and attention goes where a level is."""
    net = cfg.network
    resolution = data_resolution(cfg)
    where = (f"{resolution} px (data.name={cfg.data.name}"
             + (" at its native size)" if not cfg.data.resolution else f", data.resolution={resolution})"))
    mult = "[" + ",".join(map(str, net.channel_mult)) + "]"
    levels = len(net.channel_mult)
    if resolution % 2 ** (levels - 1):
        max_levels = 1
        while resolution % 2 ** max_levels == 0:
            max_levels += 1
        raise ConfigError(
            f"network.channel_mult={mult} has {levels} levels, each halving the resolution, so the data resolution "
            f"must be divisible by 2^{levels - 1} = {2 ** (levels - 1)}; the data are {where}. Use at most {max_levels} levels "
            f"here (e.g. network.channel_mult=[{','.join(map(str, net.channel_mult[:max_levels]))}]) or another "
            f"data.resolution"
        )
    have = network_resolutions(net.channel_mult, resolution)
    missing = [r for r in net.attn_resolutions if r not in have]
    if missing:
        listed = "[" + ",".join(map(str, net.attn_resolutions)) + "]"
        raise ConfigError(
            f"network.attn_resolutions={listed} names {', '.join(map(str, missing))} px, which the network does not "
            f"have: at {where} with network.channel_mult={mult} its levels are {', '.join(map(str, have))} px. "
            f"Pick from those, or [] for no attention"
        )


