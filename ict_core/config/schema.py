"""The run configuration's schema: frozen dataclasses, one default per field, and the one home of allowed values.

Every knob of a run lives here exactly once. The same dotted name ("loss.huber_c") is used by the command line
(`--set loss.huber_c=0.03`), by YAML presets, by the search spaces in tune/spaces/ and as the column name in the
Parquet result tables. A choice field's metadata lists its allowed values (choices() reads them; other modules
derive their lists from it), a numeric field's metadata its range. The typed engine that converts and checks
values is ict_core/config/engine.py; presets are ict_core/config/presets.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from .. import datasets


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
        from .engine import apply_overrides  # the engine builds on this schema

        return apply_overrides(self, overrides)

    def save(self, path: str | Path) -> None:
        from ..fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


SECTIONS = {f.name: f.type for f in fields(Config)}


def choices(section: type, name: str) -> tuple[str, ...]:
    """The allowed values of a choice field, e.g. choices(LossConfig, "metric"): the one list every other module
    derives its own from (schedule.py's shapes, precision.py's precisions, ...)."""
    return tuple(next(f for f in fields(section) if f.name == name).metadata["choices"])


def section_classes() -> dict[str, type]:
    """{section name: its dataclass}, in declaration order."""
    hints = get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


def all_keys() -> list[str]:
    """Every allowed dotted key, in declaration order."""
    keys = []
    for section, cls in section_classes().items():
        keys += [f"{section}.{f.name}" for f in fields(cls)]
    return keys


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


def curriculum_steps(cfg: Config) -> int:
    """K, the number of steps the discretization curriculum N(k) spans: train.curriculum_steps, or
    train.total_steps when that is 0."""
    return cfg.train.curriculum_steps or cfg.train.total_steps


