"""Run configuration, by job: schema.py (the dataclasses and the one home of every allowed value), engine.py
(conversion and checks, dotted overrides, did-you-mean, cross-field validation, the config a run trains with) and
presets.py (preset files, `base:`, load_config). `from ict_core.config import Config, load_config, ...` reads
them all from here.
"""
from ..errors import ConfigError
from .engine import (apply_overrides, check_value, coerce, data_resolution, keep_schedule, network_resolutions,
                     parse_overrides, parse_record, resolve_config, suggest_keys, validate)
from .presets import (PRESET_DIR, from_dict, list_presets, load_config, load_preset, preset_description,
                      preset_overrides)
from .schema import (HUBER_C_PER_SQRT_DIM, MAX_INITIAL_EMA_SHARE, NOISE_DISTRIBUTION, SECTIONS, Config,
                     CurriculumConfig, DataConfig, EvalConfig, LossConfig, NetworkConfig, OptimConfig, PrecondConfig,
                     TrainConfig, all_keys, choices, curriculum_steps, default_huber_c, in_range, noise_distribution,
                     one_of)

__all__ = [
    "ConfigError", "apply_overrides", "check_value", "coerce", "data_resolution", "keep_schedule",
    "network_resolutions", "parse_overrides", "parse_record", "resolve_config", "suggest_keys", "validate",
    "PRESET_DIR", "from_dict", "list_presets", "load_config", "load_preset", "preset_description", "preset_overrides",
    "HUBER_C_PER_SQRT_DIM", "MAX_INITIAL_EMA_SHARE", "NOISE_DISTRIBUTION", "SECTIONS", "Config", "CurriculumConfig",
    "DataConfig", "EvalConfig", "LossConfig", "NetworkConfig", "OptimConfig", "PrecondConfig", "TrainConfig",
    "all_keys", "choices", "curriculum_steps", "default_huber_c", "in_range", "noise_distribution", "one_of",
]
