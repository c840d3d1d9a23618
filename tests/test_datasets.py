"""One home per fact: the data-set registry drives config, loading and tune/; huber_c's rule lives in one function."""
from __future__ import annotations

import math
from dataclasses import fields

import pytest

from ict_core import data, datasets
from ict_core.cli import train as cli
from ict_core.config import ConfigError, DataConfig, default_huber_c, load_config, resolve_config
from tune.named_values import is_named_value, resolve_named_value


def test_config_choices_and_unknown_name_error_come_from_the_registry():
    meta = {f.name: f.metadata for f in fields(DataConfig)}
    assert tuple(meta["name"]["choices"]) == datasets.NAMES == tuple(datasets.DATASETS)
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"data.name": "mnist"})
    assert "'mnist'" in str(err.value)
    for name in datasets.NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="data.name must be one of digits, patches"):
        datasets.spec("mnist")


def test_validation_reads_needs_path_and_resolutions_from_the_registry():
    for name, spec in datasets.DATASETS.items():
        overrides = {"data.name": name, "data.resolution": spec.resolutions[0] if spec.resolutions else 0}
        if spec.needs_path:
            with pytest.raises(ConfigError, match=f"data.path must name a local folder for data.name={name}"):
                load_config(overrides=overrides)
            overrides["data.path"] = "somewhere"
        load_config(overrides=overrides)
    with pytest.raises(ConfigError, match="data.resolution must be one of 8, 16, 32, 64 for data.name=patches"):
        load_config(overrides={"data.name": "patches", "data.resolution": 12})


def test_every_entry_names_a_loader_and_a_loaded_set_matches_its_entry():
    for spec in datasets.DATASETS.values():
        assert callable(getattr(data, spec.loader, None)), spec
    loaded = data.load_dataset(load_config(overrides={"data.name": "digits"}).data)
    spec = datasets.spec("digits")
    assert (loaded.channels, loaded.resolution, loaded.dim, loaded.key) == (spec.channels, spec.native_resolution,
                                                                           spec.dim(), spec.key())
    assert datasets.dataset_dim("digits", 16) == ("digits-16", 256)
    assert datasets.dataset_dim("patches", 32) == ("patches-32", 3072)


def test_huber_c_rule_values():
    assert default_huber_c(64) == 0.00054 * 8
    assert default_huber_c(3 * 32 * 32) == pytest.approx(0.0299298, abs=1e-7)
    assert default_huber_c(3 * 64 * 64) == pytest.approx(0.0597, abs=1e-3)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="dim must be a positive integer"):
            default_huber_c(bad)


def test_resolve_config_fills_derived_values_and_keeps_set_ones():
    cfg = resolve_config(load_config(overrides={"data.name": "patches", "data.resolution": 16}))
    assert cfg.loss.huber_c == 0.00054 * math.sqrt(768)
    assert (cfg.loss.p_mean, cfg.loss.p_std) == (-1.1, 2.0)
    diffusion = resolve_config(load_config(overrides={"loss.objective": "diffusion", "loss.p_std": 1.5}))
    assert (diffusion.loss.huber_c, diffusion.loss.p_mean, diffusion.loss.p_std) == (0.00054 * 8, -1.2, 1.5)
    explicit = load_config(overrides={"loss.huber_c": 0.03, "loss.p_mean": 0.0, "loss.p_std": 1.0})
    assert resolve_config(explicit) == explicit
    # the loaded data set's d, where the trainer passes it, gives the same value
    assert resolve_config(load_config(), dim=64) == resolve_config(load_config())


def test_search_and_trial_rows_use_the_same_rule():
    from tune.space_schema import dataset_dim
    from tune.trial import resolved_flat

    cfg = load_config(overrides={"data.name": "patches", "data.resolution": 32})
    assert dataset_dim(cfg) == ("patches-32", 3072)
    assert resolved_flat(cfg)["loss.huber_c"] == resolve_config(cfg).loss.huber_c == default_huber_c(3072)
    # the one named value a search space may write, resolved by config alone
    assert is_named_value("loss.huber_c", "paper") and not is_named_value("loss.p_mean", "paper")
    assert resolve_named_value("loss.huber_c", "paper", 3072) == default_huber_c(3072)
    assert resolve_named_value("loss.huber_c", 0.1, 3072) == 0.1


def test_dry_run_prints_the_resolved_values(capsys):
    assert cli.main(["--preset", "digits", "--set", "loss.objective=diffusion", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"#   loss.huber_c: {0.00054 * 8!r}" in out and "d = C*H*W = 64 (digits-8)" in out
    assert "#   loss.p_mean: -1.2" in out and "#   loss.p_std: 1.2" in out
    assert cli.main(["--preset", "digits", "--set", "loss.huber_c=0.1", "--set", "loss.p_mean=0",
                     "--set", "loss.p_std=1", "--dry-run"]) == 0
    assert "resolve at run time" not in capsys.readouterr().out
