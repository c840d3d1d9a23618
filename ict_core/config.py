"""Run configuration: frozen dataclasses, one default per field, dotted keys.

Every knob of a run lives here exactly once. The same dotted name ("loss.huber_c") is used by
the CLI (`--set loss.huber_c=0.03`), by YAML presets, by the search spaces in tune/spaces/ and
as the column name in the Parquet result tables. An unknown key or an out-of-range value raises
ConfigError naming the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_args, get_origin, get_type_hints

import yaml

from . import datasets
from .cli import BadInput

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(BadInput):
    """A configuration key or value that is not allowed."""


def _choice(*allowed: str) -> dict:
    return {"choices": allowed}


def _range(lo=None, hi=None, lo_open=False, hi_open=False) -> dict:
    return {"range": (lo, hi, lo_open, hi_open)}


# Public names of the two field-metadata helpers, for schemas read by parse_record outside this module.
one_of, in_range = _choice, _range


def _int_list(example: str) -> dict:
    return {"example": example}


@dataclass(frozen=True)
class DataConfig:
    # The data sets and their facts (channels, native size, whether they need data.path): ict_core/datasets.py.
    name: str = field(default="digits", metadata=_choice(*datasets.NAMES))
    # Side length in pixels; 0 keeps the data set's native size (digits 8, cifar10 32, imagenet64 64).
    # The "patches" data set has none and needs one of 8, 16, 32, 64.
    resolution: int = field(default=0, metadata=_range(0, 512))
    # Folder (cifar10: the extracted cifar-10-batches-py; imagenet64: the folder of .npz batches).
    path: str = ""
    hflip: bool = True  # random horizontal flips, applied only where the data set allows them
    holdout_fraction: float = field(default=0.1, metadata=_range(0.0, 0.5, hi_open=True))
    # Share of the pool that trains the "dataset" feature network and gives FD's reference statistics; the
    # generator never trains on it (docs/MEASUREMENT.md). digits and patches only: CIFAR-10 and ImageNet 64
    # take these images from their official held-out split instead.
    featnet_fraction: float = field(default=0.25, metadata=_range(0.05, 0.5))
    max_images: int = field(default=0, metadata=_range(0))  # 0 = all
    # Fixes the held-out split and patch positions. Kept apart from train.seed so that the seeds of one
    # configuration train on the same images and are scored by the same feature network.
    seed: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class NetworkConfig:
    """NCSN++-style U-Net. The tiny defaults train in seconds on a CPU; presets scale it up."""

    channels: int = field(default=32, metadata=_range(1))
    # One entry per U-Net level; level l works at resolution / 2^l, so the data resolution must divide by
    # 2^(len(channel_mult) - 1).
    channel_mult: tuple = field(default=(1, 2), metadata=_int_list("[1,2,2]"))
    num_blocks: int = field(default=1, metadata=_range(1))
    # Resolutions (pixels) of the levels that get self-attention; each must be one the network has.
    attn_resolutions: tuple = field(default=(), metadata=_int_list("[16] or []"))
    dropout: float = field(default=0.3, metadata=_range(0.0, 1.0, hi_open=True))
    fourier_scale: float = field(default=0.02, metadata=_range(0.0, lo_open=True))


@dataclass(frozen=True)
class PrecondConfig:
    """Constants of the EDM/iCT parameterization (docs/ALGORITHM.md, Constants)."""

    sigma_min: float = field(default=0.002, metadata=_range(0.0, lo_open=True))
    sigma_max: float = field(default=80.0, metadata=_range(0.0, lo_open=True))
    rho: float = field(default=7.0, metadata=_range(0.0, lo_open=True))
    sigma_data: float = field(default=0.5, metadata=_range(0.0, lo_open=True))


@dataclass(frozen=True)
class LossConfig:
    # consistency: CT/iCT (Song & Dhariwal 2023); diffusion: EDM denoising loss on the same network.
    objective: str = field(default="consistency", metadata=_choice("consistency", "diffusion"))
    teacher: str = field(default="none", metadata=_choice("none", "ema"))  # "ema" is the CT baseline
    ema_mu0: float = field(default=0.9, metadata=_range(0.0, 1.0, hi_open=True))
    metric: str = field(default="pseudo_huber", metadata=_choice("pseudo_huber", "l2"))
    # None means the paper's heuristic 0.00054 * sqrt(C*H*W), resolved once the data set is known.
    huber_c: float | None = field(default=None, metadata=_range(0.0))
    weighting: str = field(default="ict", metadata=_choice("ict", "uniform"))
    noise_schedule: str = field(default="lognormal", metadata=_choice("lognormal", "uniform"))
    # Noise distribution; None = the objective's own (NOISE_DISTRIBUTION below): iCT's (-1.1, 2.0) for
    # consistency, EDM's (-1.2, 1.2) for diffusion. A value set explicitly always wins.
    p_mean: float | None = field(default=None, metadata=_range(-10.0, 10.0))
    p_std: float | None = field(default=None, metadata=_range(0.0, 10.0, lo_open=True))


@dataclass(frozen=True)
class CurriculumConfig:
    """Discretization curriculum N(k) (ict_core.schedule). "adaptive" doubles N from s0 towards s1 whenever the
    training loss stops improving within a stage (schedule.Curriculum); its four adaptive_* keys apply to it only."""

    shape: str = field(
        default="exponential",
        metadata=_choice("exponential", "sqrt", "constant", "linear", "square", "cosine", "adaptive"),
    )
    s0: int = field(default=10, metadata=_range(1))
    s1: int = field(default=1280, metadata=_range(1))
    # Steps averaged into one observation of the loss; 0 = total_steps // 200 (at least 1).
    adaptive_every: int = field(default=0, metadata=_range(0))
    # Observations in the window whose fitted slope of ln(loss) is tested (a stage lasts >= window x every steps).
    adaptive_window: int = field(default=20, metadata=_range(2, 1000))
    # Consecutive stalled windows before N doubles.
    adaptive_patience: int = field(default=5, metadata=_range(1, 1000))
    # A window is stalled when ln(loss) falls by less than this over it (0.1: less than about 10%). Chosen on
    # digits preset, 1000 steps: 0.1 gave FD 16.3 / 26.4 (seeds 0 / 1) against the exponential curriculum's
    # 18.8 / 25.2; 0.02 gave 33.8 (seed 0: N stayed 11 until step 705).
    adaptive_threshold: float = field(default=0.1, metadata=_range(-1.0, 1.0))


@dataclass(frozen=True)
class OptimConfig:
    name: str = field(default="radam", metadata=_choice("radam", "adam"))
    lr: float = field(default=1e-4, metadata=_range(0.0, lo_open=True))
    beta1: float = field(default=0.9, metadata=_range(0.0, 1.0, hi_open=True))
    beta2: float = field(default=0.999, metadata=_range(0.0, 1.0, hi_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    grad_clip: float = field(default=0.0, metadata=_range(0.0))  # 0 = off


@dataclass(frozen=True)
class TrainConfig:
    total_steps: int = field(default=2000, metadata=_range(1))
    # K of the discretization curriculum N(k) (and of the adaptive curriculum's observation interval); 0 = total_steps.
    # A resume that changes total_steps keeps the run's K (N(k) past K stays at its final value) unless this is set.
    curriculum_steps: int = field(default=0, metadata=_range(0))
    batch_size: int = field(default=128, metadata=_range(1))  # global, split across DDP ranks
    seed: int = field(default=0, metadata=_range(0))
    # Evaluation EMA (never the teacher): ema_rate is the per-step rate once warmed up; for the first steps the
    # half-life is capped at ema_rampup * step (EDM's ramp-up; 0 = a constant rate). See ict_core/ema.py.
    ema_rate: float = field(default=0.99993, metadata=_range(0.0, 1.0))
    ema_rampup: float = field(default=0.05, metadata=_range(0.0, 1.0))
    # bf16: the network under autocast; bf16_stem: the same, with the input scaling, noise embedding and first
    # convolution kept in fp32 (benchmarks/precision.py measures both against fp32).
    precision: str = field(default="fp32", metadata=_choice("fp32", "bf16", "bf16_stem"))
    compile: bool = False
    channels_last: bool = False
    device: str = field(default="auto", metadata=_choice("auto", "cpu", "cuda"))
    num_threads: int = field(default=0, metadata=_range(0))  # torch CPU threads; 0 = leave as is
    log_every: int = field(default=100, metadata=_range(1))
    # Checkpoints are written at every evaluation; checkpoint_every > 0 adds checkpoints in between.
    checkpoint_every: int = field(default=0, metadata=_range(0))
    keep_checkpoints: int = field(default=2, metadata=_range(1))
    # Testing aid: the process calls os._exit(1) when it reaches this step for the first time (-1 = off).
    fault_step: int = field(default=-1, metadata=_range(-1))


@dataclass(frozen=True)
class EvalConfig:
    every: int = field(default=500, metadata=_range(0))  # 0 = only at the end
    num_samples: int = field(default=500, metadata=_range(2))
    sigma_mid: float = field(default=0.821, metadata=_range(0.0, lo_open=True))  # two-step sampling
    diffusion_steps: int = field(default=18, metadata=_range(2))  # Heun steps for the diffusion objective
    # Feature network for the Frechet distance: "auto" = Inception-v3 if inception_path is set and the data
    # are RGB at >= 32 px, otherwise a small classifier trained on the data set itself (cached).
    features: str = field(default="auto", metadata=_choice("auto", "inception", "dataset"))
    inception_path: str = ""  # local pt_inception-2015-12-05 weights file; required by eval.features=inception
    cache_dir: str = ""  # feature nets and reference statistics; "" = ~/.cache/ict_core
    grid: bool = True  # write a PNG grid of samples at each evaluation


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    precond: PrecondConfig = PrecondConfig()
    loss: LossConfig = LossConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    # ---- views -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Nested plain dict (tuples become lists), JSON- and YAML-safe."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def flat(self) -> dict[str, Any]:
        """Dotted view: {"loss.huber_c": ..., ...}."""
        out = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out

    def with_overrides(self, overrides: Mapping[str, Any] | list[str] | None) -> "Config":
        return apply_overrides(self, overrides)

    def save(self, path: str | Path) -> None:
        from .fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


SECTIONS = {f.name: f.type for f in fields(Config)}


def _section_classes() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def all_keys() -> list[str]:
    """Every allowed dotted key, in declaration order."""
    keys = []
    for section, cls in _section_classes().items():
        keys += [f"{section}.{f.name}" for f in fields(cls)]
    return keys


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
    classes = _section_classes()
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


# The evaluation EMA may hold at most this share of the initial weights at any evaluation (docs/MEASUREMENT.md).
MAX_INITIAL_EMA_SHARE = 0.01
NOISE_DISTRIBUTION = {"consistency": (-1.1, 2.0), "diffusion": (-1.2, 1.2)}  # (p_mean, p_std): iCT, EDM


def noise_distribution(loss_cfg: LossConfig) -> tuple[float, float]:
    """(p_mean, p_std) of the run: the values set, else the objective's own (iCT Sec. 3.5; EDM Table 1)."""
    p_mean, p_std = NOISE_DISTRIBUTION[loss_cfg.objective]
    return (p_mean if loss_cfg.p_mean is None else loss_cfg.p_mean,
            p_std if loss_cfg.p_std is None else loss_cfg.p_std)


# The a of the paper's c = a sqrt(d) (iCT Sec. 3.3); analysis/c_scaling.py fits it and the exponent 0.5.
HUBER_C_PER_SQRT_DIM = 0.00054


def default_huber_c(dim: int) -> float:
    """The paper's heuristic c = 0.00054 sqrt(d), d = C*H*W (iCT Sec. 3.3; 0.0299 on CIFAR-10). The one place
    this rule lives: loss.huber_c = null resolves to it (resolve_config), and so do searches and analysis."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer (C*H*W), got {dim!r}")
    return HUBER_C_PER_SQRT_DIM * math.sqrt(dim)


# Words a search space may write instead of a number, each resolved once the data set's d = C*H*W is known
# (per stratum): loss.huber_c "paper" = default_huber_c(d), and "paper*2", "paper/4", ... that times or over a power
# of two (a factor-2 grid centred on the paper's c at every d: the c_ladder space). The only place such a word is
# understood.
NAMED_VALUES = {("loss.huber_c", "paper"): default_huber_c}
NAMED_VALUES.update({("loss.huber_c", f"paper{op}{2 ** k}"): (lambda dim, f=(2.0 ** k if op == "*" else 0.5 ** k):
                                                               f * default_huber_c(dim))
                     for k in range(1, 5) for op in "*/"})


def is_named_value(key: str, value: Any) -> bool:
    """True when `value` is a word of NAMED_VALUES for `key` (e.g. loss.huber_c: paper)."""
    return isinstance(value, str) and (key, value) in NAMED_VALUES


def resolve_named_value(key: str, value: Any, dim: int) -> Any:
    """The number a named value stands for at data dimension `dim`; any other value unchanged."""
    return float(NAMED_VALUES[key, value](dim)) if is_named_value(key, value) else value


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


def curriculum_steps(cfg: Config) -> int:
    """K, the number of steps the discretization curriculum N(k) spans: train.curriculum_steps, or
    train.total_steps when that is 0."""
    return cfg.train.curriculum_steps or cfg.train.total_steps


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
        from .inception import WEIGHTS_HINT

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
