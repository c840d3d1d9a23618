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
    network_resolutions,
    preset_description,
    suggest_keys,
)

EXPECTED_PRESETS = {"digits", "tiny", "patches", "digits_diffusion", "ct_baseline", "cifar10", "cifar10_deep", "imagenet64"}


def _net(cfg, in_channels, resolution):
    """The network of a whole config, built as the trainer builds it (its objective's preconditioning)."""
    from ict_core.network import build_network
    from ict_core.objectives import objective_class

    return build_network(cfg.network, cfg.precond, objective_class(cfg.loss.objective).precond, in_channels,
                         resolution)


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


# ---- architecture against the data, as the trainer will build it ------------------------------------------------

@pytest.mark.parametrize(
    "overrides, words",
    [
        # 5 levels need a resolution divisible by 16; digits are 8 px.
        (["network.channel_mult=[1,2,2,2,2]"], ["network.channel_mult=[1,2,2,2,2]", "2^4 = 16", "8 px",
                                              "data.name=digits", "at most 4 levels", "[1,2,2,2]"]),
        (["data.name=patches", "data.resolution=16", "network.channel_mult=[1,1,1,1,1,1]"],
         ["2^5 = 32", "16 px", "data.resolution=16", "at most 5 levels"]),
        (["network.attn_resolutions=[3]"], ["network.attn_resolutions=[3]", "3 px", "levels are 8, 4 px", "[]"]),
        (["network.attn_resolutions=[4,16]"], ["16 px", "levels are 8, 4 px"]),
        (["data.name=patches", "data.resolution=32", "network.channel_mult=[1,2]", "network.attn_resolutions=[8]"],
         ["8 px", "levels are 32, 16 px"]),
    ],
)
def test_architecture_that_does_not_fit_the_data_is_a_config_error(overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config("digits", overrides)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_architectures_that_fit_are_accepted_and_match_the_network():
    for data, mult, attn in [({}, (1, 2, 2, 2), (8, 1)), ({"data.name": "patches", "data.resolution": 16}, (1, 2, 2), (8,)),
                             ({"data.name": "patches", "data.resolution": 64}, (1, 1, 2, 2), (16,))]:
        cfg = load_config("digits", {**data, "network.channel_mult": list(mult), "network.attn_resolutions": list(attn),
                                     "network.channels": 4})
        resolution = cfg.data.resolution or 8
        assert network_resolutions(mult, resolution)[-1] == resolution // 2 ** (len(mult) - 1)
        # The network accepts it and has one attention layer per block at the listed levels, plus the bottleneck's.
        net = _net(cfg, 3 if data else 1, resolution).backbone
        levels = network_resolutions(mult, resolution)
        expected = sum((1 + 2) for r in levels if r in attn) + 1  # num_blocks=1 down, 2 up, 1 in the middle
        assert sum(type(m).__name__ == "Attention" for m in net.modules()) == expected, (data, mult, attn)
    assert load_preset("cifar10").network.attn_resolutions == (16,)


# ---- errors that teach ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("train.lr=1e-3", "did you mean optim.lr?"),  # the right name in the wrong section
        ("lr=1e-3", "did you mean optim.lr?"),
        ("network.dropuot=0.1", "did you mean network.dropout?"),
        ("optim.learning_rate=1e-3", "did you mean optim.lr?"),
        ("optimizer.lr=1e-3", "did you mean optim.lr?"),
        ("data.nmae=digits", "did you mean data.name?"),
    ],
)
def test_unknown_keys_suggest_the_nearest_known_key(override, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert suggestion in str(info.value)


def test_suggestions_stay_quiet_when_nothing_is_close():
    assert suggest_keys("loss.zzzzzz") == []
    with pytest.raises(ConfigError) as info:
        load_config("tiny", ["loss.zzzzzz=1"])
    assert "did you mean" not in str(info.value) and "loss.huber_c" in str(info.value)
    with pytest.raises(ConfigError, match="unknown config section 'optimizer'; did you mean 'optim'"):
        load_config("tiny", {"optimizer": {"lr": 1e-3}})


@pytest.mark.parametrize("value", ["1,2,2", "abc", "[1, 2.5]", "[true]"])
def test_list_values_show_the_accepted_syntax(value):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [f"network.channel_mult={value}"])
    message = str(info.value)
    assert "network.channel_mult must be a list of integers such as [1,2,2]" in message
    assert "--set 'network.channel_mult=[...]'" in message and f"got {value!r}" in message


def test_list_values_in_accepted_forms():
    assert load_config("tiny", ["network.channel_mult=[1, 2]"]).network.channel_mult == (1, 2)
    assert load_config("tiny", ["network.channel_mult=2"]).network.channel_mult == (2,)
    assert load_config("tiny", ["network.attn_resolutions=[]"]).network.attn_resolutions == ()


def test_preset_paths_and_names_that_do_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"preset file 'no/such\.yaml' does not exist \(looked in "):
        load_preset("no/such.yaml")
    with pytest.raises(ConfigError, match="preset file 'digits.yaml' does not exist.*--preset digits"):
        load_preset("digits.yaml")
    with pytest.raises(ConfigError, match="is a folder, not a .yaml file"):
        load_preset(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown preset 'digts'; did you mean 'digits'"):
        load_preset("digts")
    (tmp_path / "mine.yaml").write_text("train:\n  total_steps: 7\n")
    assert load_preset("mine.yaml").train.total_steps == 7


def test_every_preset_has_a_description():
    for name in list_presets():
        text = preset_description(name)
        assert len(text) > 20 and "#" not in text, (name, text)
    assert preset_description("digits").startswith("The main CPU job")


def test_config_save_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path):
    import json

    import pytest

    from ict_core.config import from_dict, load_config
    from ict_core.fileio import atomic_write

    path = tmp_path / "config.json"
    cfg = load_config("digits")
    cfg.save(path)
    assert from_dict(json.loads(path.read_text())) == cfg

    def half_written(handle):
        handle.write(b'{"data": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_written)
    assert from_dict(json.loads(path.read_text())) == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_config_is_split_by_job_and_core_functions_stay_short():
    """schema (the dataclasses), engine (checks and overrides) and presets are modules of their own, each under
    400 lines; the search-space words (loss.huber_c: paper) are tune/'s; no ict_core function runs over 60 lines."""
    import ast
    from pathlib import Path

    import ict_core.config as config_package

    repo = Path(__file__).resolve().parent.parent
    assert Config.__module__ == "ict_core.config.schema"
    assert apply_overrides.__module__ == "ict_core.config.engine" and load_preset.__module__ == "ict_core.config.presets"
    assert not hasattr(config_package, "NAMED_VALUES") and not hasattr(config_package, "resolve_named_value")
    for path in sorted((repo / "ict_core" / "config").glob("*.py")):
        assert len(path.read_text().splitlines()) < 400, path.name
    long = [f"{path.name}:{node.name}" for path in sorted((repo / "ict_core").rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert long == []
