"""Config parsing, overrides, presets and the errors users see for bad input."""
from __future__ import annotations

import json

import pytest

from ict_core.config import (
    Config,
    ConfigError,
    all_keys,
    apply_overrides,
    from_dict,
    list_presets,
    load_config,
    load_preset,
    noise_distribution,
)

EXPECTED_PRESETS = {"digits", "tiny", "patches", "digits_diffusion", "ct_baseline", "cifar10", "cifar10_deep", "imagenet64"}


def test_defaults_are_the_papers():
    cfg = Config()
    assert (cfg.precond.sigma_min, cfg.precond.sigma_max, cfg.precond.rho, cfg.precond.sigma_data) == (0.002, 80.0, 7.0, 0.5)
    assert (cfg.loss.p_mean, cfg.loss.p_std) == (None, None)  # resolved per objective: iCT's (-1.1, 2.0) ...
    assert noise_distribution(cfg.loss) == (-1.1, 2.0)
    assert noise_distribution(load_config(None, ["loss.objective=diffusion"]).loss) == (-1.2, 1.2)  # ... EDM's
    assert noise_distribution(load_config(None, ["loss.objective=diffusion", "loss.p_mean=-1.1"]).loss) == (-1.1, 1.2)
    assert (cfg.curriculum.shape, cfg.curriculum.s0, cfg.curriculum.s1) == ("exponential", 10, 1280)
    assert cfg.train.ema_rate == 0.99993
    assert cfg.loss.teacher == "none" and cfg.loss.huber_c is None


def test_overrides_in_all_three_forms_agree():
    a = load_config(None, ["loss.huber_c=0.03", "network.channel_mult=[1,2,2]", "train.compile=true"])
    b = load_config(None, {"loss.huber_c": 0.03, "network.channel_mult": (1, 2, 2), "train.compile": True})
    c = load_config(None, {"loss": {"huber_c": 0.03}, "network": {"channel_mult": [1, 2, 2]}, "train": {"compile": "yes"}})
    assert a == b == c
    assert a.loss.huber_c == 0.03 and a.network.channel_mult == (1, 2, 2) and a.train.compile is True


def test_string_values_are_coerced_to_the_field_type():
    cfg = load_config(None, ["train.total_steps=1e3", "loss.huber_c=none", "optim.lr=3e-4"])
    assert cfg.train.total_steps == 1000 and isinstance(cfg.train.total_steps, int)
    assert cfg.loss.huber_c is None
    assert cfg.optim.lr == pytest.approx(3e-4)


def test_flat_and_from_dict_round_trip():
    cfg = load_config("digits", ["loss.huber_c=0.01", "network.attn_resolutions=[4]"])
    flat = cfg.flat()
    assert set(flat) == set(all_keys())
    assert from_dict(flat) == cfg
    assert from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "override, words",
    [
        ("loss.hubr_c=0.1", ["unknown config key", "loss.hubr_c", "loss.huber_c"]),
        ("losses.huber_c=0.1", ["unknown config section", "losses"]),
        ("huber_c=0.1", ["dotted"]),
        ("network.dropout=1.5", ["network.dropout", "[0.0, 1.0)", "1.5"]),
        ("train.total_steps=0", ["train.total_steps", "got 0"]),
        ("train.total_steps=12.5", ["train.total_steps", "int", "12.5"]),
        ("optim.lr=-1", ["optim.lr", "-1"]),
        ("optim.lr=nan", ["optim.lr", "finite"]),
        ("optim.name=sgd", ["optim.name", "radam, adam", "sgd"]),
        ("train.compile=maybe", ["train.compile", "bool"]),
        ("loss.huber_c", ["key=value"]),
    ],
)
def test_bad_override_names_key_value_and_what_is_allowed(override, words):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"curriculum.s0": 20, "curriculum.s1": 10}, ["curriculum.s1", "s0=20", "s1=10"]),
        ({"precond.sigma_max": 0.001}, ["precond.sigma_max", "sigma_min"]),
        ({"data.name": "patches", "data.resolution": 12}, ["data.resolution", "8, 16, 32, 64", "12"]),
        ({"data.name": "cifar10"}, ["data.path", "cifar10"]),
        ({"network.channel_mult": [1, 0]}, ["network.channel_mult"]),
    ],
)
def test_cross_field_checks(overrides, words):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), overrides)
    for word in words:
        assert word in str(info.value)


def test_every_shipped_preset_loads_and_has_its_key_settings():
    assert EXPECTED_PRESETS <= set(list_presets())
    for name in list_presets():
        load_preset(name)
    cifar = load_preset("cifar10")
    assert (cifar.network.channels, cifar.network.channel_mult, cifar.network.num_blocks) == (128, (2, 2, 2), 4)
    assert (cifar.network.attn_resolutions, cifar.network.dropout) == ((16,), 0.3)
    assert (cifar.optim.name, cifar.optim.lr, cifar.train.batch_size) == ("radam", 1e-4, 1024)
    assert (cifar.train.total_steps, cifar.train.ema_rate) == (400_000, 0.99993)
    assert load_preset("cifar10_deep").network.num_blocks == 8
    imnet = load_preset("imagenet64")
    assert (imnet.network.dropout, imnet.optim.name, imnet.train.batch_size, imnet.train.total_steps) == (0.2, "adam", 4096, 800_000)
    ct = load_preset("ct_baseline")
    assert (ct.loss.teacher, ct.loss.metric, ct.loss.weighting, ct.loss.noise_schedule) == ("ema", "l2", "uniform", "uniform")
    assert (ct.curriculum.shape, ct.curriculum.s0, ct.curriculum.s1, ct.network.fourier_scale) == ("sqrt", 2, 150, 16.0)
    diff = load_preset("digits_diffusion")
    assert (diff.loss.objective, diff.loss.p_mean, diff.loss.p_std) == ("diffusion", -1.2, 1.2)
    # Small presets need an evaluation EMA that moves within their few thousand steps.
    for name in ("digits", "tiny", "patches", "digits_diffusion", "ct_baseline"):
        assert load_preset(name).train.ema_rate <= 0.999, name


def test_malformed_and_unknown_presets(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("network:\n  channels: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(str(broken))
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_preset(str(not_mapping))
    bad_key = tmp_path / "badkey.yaml"
    bad_key.write_text("network:\n  chanels: 8\n")
    with pytest.raises(ConfigError, match=r"badkey\.yaml.*network\.chanels"):
        load_preset(str(bad_key))
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*digits"):
        load_preset("nope")
