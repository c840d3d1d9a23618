"""Search-space files: every shipped space plans for every budget, and bad files fail before Ray with a clear error."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from ict_core.config import load_config
from tune import search, tuners
from tune.space import load_space
from tune.space_schema import BUDGETS, SpaceError, list_spaces

REPO = Path(__file__).resolve().parent.parent


def test_the_shipped_spaces_cover_the_open_questions_and_ablations():
    names = set(list_spaces())
    assert {"c_scaling", "lognormal", "dropout", "curriculum", "ema_teacher", "metric", "noise_schedule",
            "weighting", "fourier_scale"} <= names


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("budget", BUDGETS)
def test_shipped_space_plans_and_its_first_trial_is_a_valid_config(name, budget, monkeypatch):
    monkeypatch.delenv("ICT_CIFAR10_PATH", raising=False)
    monkeypatch.delenv("ICT_IMAGENET64_PATH", raising=False)
    space = load_space(name)
    plan = space.plan(budget)
    assert plan.strata and plan.question
    for stratum in plan.strata:
        cfg = load_config(overrides=stratum.first_config(plan.params))
        for key, value in stratum.fixed.items():
            assert cfg.flat()[key] == (list(value) if isinstance(value, tuple) else value)
        assert stratum.num_samples >= 1
    # Optional strata needing a data path are skipped, never planned without one.
    assert all(s.fixed.get("data.name") not in ("cifar10", "imagenet64") for s in plan.strata)


def test_c_scaling_puts_the_paper_heuristic_first_per_dimension():
    plan = load_space("c_scaling").plan("smoke")
    dims = {s.name: s.dim for s in plan.strata}
    assert dims == {"digits": 64, "patches-8": 192, "patches-16": 768, "patches-32": 3072}
    for s in plan.strata:
        assert s.points[0]["loss.huber_c"] == pytest.approx(0.00054 * math.sqrt(s.dim))


def test_optional_data_strata_join_when_their_path_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("ICT_CIFAR10_PATH", str(tmp_path))
    plan = load_space("c_scaling").plan("gpu")
    cifar = next(s for s in plan.strata if s.name == "cifar10")
    assert cifar.fixed["data.path"] == str(tmp_path) and cifar.dim == 3072
    assert cifar.points[0]["loss.huber_c"] == pytest.approx(0.00054 * math.sqrt(3072))
    assert "imagenet64" in " ".join(plan.skipped_strata)


def test_grid_space_expands_points_then_grid_values():
    plan = load_space("metric").plan("smoke")
    variants = plan.strata[0].variants
    assert len(variants) == 5 and {"loss.metric": "l2"} in variants
    assert plan.strata[0].num_samples == 5
    plan = load_space("fourier_scale").plan("smoke")
    assert [v["network.fourier_scale"] for v in plan.strata[0].variants] == [0.02, 0.2, 2.0, 16.0]


GOOD = """
name: tmp_space
params:
  loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}
budgets:
  smoke: {num_samples: 2, fixed: {train.total_steps: 10}}
"""



def _assert_plan_error(path, needles):
    """Planning the space file at `path` fails with a SpaceError naming the file and every needle."""
    with pytest.raises(SpaceError) as info:
        load_space(path).plan("smoke")
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)

@pytest.mark.parametrize(
    "text, needles",
    [
        ("name: x\nparams: {loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}\n", ["not valid YAML"]),
        ("- just\n- a list\n", ["must be a YAML mapping"]),
        (GOOD + "colour: blue\n", ["colour", "unknown top-level key", "allowed"]),
        (GOOD.replace("loss.huber_c", "loss.huber_k"), ["params.loss.huber_k", "unknown config key", "loss.huber_c"]),
        (GOOD.replace("low: 0.001, high: 0.1", "low: 0.1, high: 0.001"), ["params.loss.huber_c", "low must be < high"]),
        (GOOD.replace("loguniform, low: 0.001", "loguniform, low: 0.0"), ["params.loss.huber_c.low", "> 0", "log"]),
        (GOOD.replace("loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}",
                      "network.dropout: {type: uniform, low: 0.0, high: 1.5}"),
         ["params.network.dropout", "network.dropout must be in [0.0, 1.0)", "1.5"]),
        (GOOD.replace("loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}",
                      "curriculum.shape: {type: choice, values: [exponential, zigzag]}"),
         ["params.curriculum.shape.values", "zigzag", "exponential"]),
        (GOOD.replace("loguniform", "lognormal"), ["params.loss.huber_c.type", "lognormal", "loguniform"]),
        (GOOD.replace("smoke:", "tiny:"), ["budgets.tiny", "unknown budget", "smoke"]),
        (GOOD + "fixed: {data.name: cifar10}\n", ["data.path", "cifar10", "local folder"]),
        (GOOD + "fixed: {train.total_stepz: 5}\n", ["fixed.train.total_stepz", "unknown config key"]),
        (GOOD + "search: {algorithm: hyperopt}\n", ["search.algorithm", "hyperopt", "optuna_tpe"]),
        (GOOD + "points: [{loss.huber_c: 5.0}]\n", ["points[0].loss.huber_c", "outside the searched range"]),
        (GOOD + "scheduler: {type: asha, reduction_factor: 1}\n", ["scheduler.reduction_factor", "> 1"]),
        (GOOD + "metric: accuracy\n", ["metric", "accuracy", "fd"]),
        (GOOD + "strata: [{name: a, fixed: {data.name: imagenet64}}]\n", ["strata[0]", "data.path", "imagenet64"]),
        (GOOD.replace("fixed: {train.total_steps: 10}", "strata: [b], fixed: {train.total_steps: 10}")
         + "strata: [{name: a}]\n", ["budgets.smoke.strata", "unknown stratum 'b'", "allowed: a"]),
        (GOOD.replace("fixed: {train.total_steps: 10}", "strata: a, fixed: {train.total_steps: 10}")
         + "strata: [{name: a}]\n", ["budgets.smoke.strata", "must be a list", "got str"]),
    ],
)
def test_bad_space_files_name_the_file_key_and_value(tmp_path, text, needles):
    path = tmp_path / "bad_space.yaml"
    path.write_text(text)
    _assert_plan_error(path, needles)


def test_a_budget_runs_only_the_strata_it_lists(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(GOOD.replace("smoke: {num_samples: 2,", "smoke: {num_samples: 2, strata: [small],")
                    + "  cpu: {num_samples: 1}\n"
                    + "strata: [{name: small, fixed: {data.name: digits}},"
                      " {name: big, fixed: {data.name: patches, data.resolution: 32}}]\n")
    plan = load_space(path).plan("smoke")
    assert [s.name for s in plan.strata] == ["small"]
    assert plan.skipped_strata == ["big (not in budgets.smoke.strata)"]
    plan = load_space(path).plan("cpu")  # a budget without a list runs every stratum
    assert [s.name for s in plan.strata] == ["small", "big"]


def test_unknown_budget_and_space_are_errors(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD)
    with pytest.raises(SpaceError, match="unknown budget 'huge'.*smoke, cpu, gpu, paper"):
        load_space(path).plan("huge")
    with pytest.raises(SpaceError, match="unknown space 'nope'.*c_scaling"):
        load_space("nope")


def test_cli_errors_exit_2_without_traceback_and_dry_run_starts_no_ray(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("low: 0.001, high: 0.1", "low: 0.1, high: 0.001"))
    assert search.main(["--space", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "low must be < high" in err and "Traceback" not in err

    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert search.main(["--space", str(good), "--dry-run", "--no-timing", "--storage", str(tmp_path), "--set",
                        "train.batch_size=16"]) == 0
    out = capsys.readouterr()
    assert "loss.huber_c" in out.out and "train.batch_size=16" in out.out
    assert str(tmp_path / "tmp_space-smoke") in out.out
    assert "ray" not in out.err.lower()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()

    assert search.main(["--space", str(good), "--dry-run", "--budget", "huge"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unknown budget" in err


@pytest.mark.parametrize("name", list_spaces())
def test_every_budget_that_feeds_a_verdict_runs_three_seeds(name):
    """Verdicts need at least 3 seeds per configuration (docs/ARCHITECTURE.md); smoke budgets are labelled
    inconclusive by the report instead."""
    space = load_space(name)
    for budget in ("cpu", "gpu", "paper"):
        assert space.plan(budget).seeds >= 3, (name, budget)


@pytest.mark.parametrize("where", [0, 1, 2])
def test_paper_anywhere_in_a_huber_c_choice_is_the_stratum_value(tmp_path, where):
    values = [0.01, 0.1]
    values.insert(where, "paper")
    path = tmp_path / "choice.yaml"
    path.write_text("name: choice\nfixed: {train.total_steps: 10}\n"
                    f"params:\n  loss.huber_c: {{type: choice, values: [{', '.join(map(str, values))}]}}\n"
                    "strata:\n  - {name: digits, fixed: {data.name: digits}}\n"
                    "  - {name: patches-16, fixed: {data.name: patches, data.resolution: 16}}\n"
                    "search: {algorithm: random}\nmetric: fd\nmode: min\n")
    plan = load_space(path).plan("smoke")
    for stratum in plan.strata:
        choices = stratum.choices["loss.huber_c"]
        assert choices[where] == pytest.approx(0.00054 * math.sqrt(stratum.dim))
        assert [v for i, v in enumerate(choices) if i != where] == [0.01, 0.1]
        assert isinstance(stratum.first_config(plan.params)["loss.huber_c"], float)
        # What the searcher draws from is this stratum's list: numbers only.
        dist = tuners._distribution(plan.params["loss.huber_c"], stratum.choices["loss.huber_c"])
        assert all(isinstance(v, float) for v in dist.categories)


# ---- budgets are presets (tune/budgets/*.yaml) -------------------------------------------------------------------
def _space_keys(raw: dict, budget: str, stratum_name: str) -> dict:
    """The overrides a space file itself writes for one stratum and budget, read straight from its YAML."""
    from tune.space_schema import expand_env

    stratum = next(s for s in raw.get("strata") or [{"name": "all"}] if s["name"] == stratum_name)
    keys = {**(raw.get("fixed") or {}), **((raw.get("budgets") or {}).get(budget, {}).get("fixed") or {}),
            **(stratum.get("fixed") or {})}
    return {k: expand_env(v) for k, v in keys.items()}


def _trial_configs(plan, stratum) -> list[dict]:
    """Every searcher-visible trial's params: the first trial, each grid variant, each point, each choice."""
    params = [stratum.first_config(plan.params)] + [dict(v) for v in stratum.variants] + list(stratum.points)
    first = stratum.first_config(plan.params)
    params += [{k: first[k] for k in plan.params if k in first} | {key: v}
               for key, values in stratum.choices.items() for v in values]
    return [{k: v for k, v in p.items() if k in plan.params} for p in params]


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("budget", BUDGETS)
def test_every_trial_config_is_the_budget_preset_with_the_space_keys_on_top(name, budget, monkeypatch, tmp_path):
    """A trial's config equals `--preset tune/budgets/<budget>.yaml --set <the space's keys> <the params>`."""
    import yaml

    from tune.space_schema import budget_preset, space_path
    from tune.inputs import INPUT_KEYS, absolute_input
    from tune.trial import trial_config

    monkeypatch.setenv("ICT_CIFAR10_PATH", str(tmp_path))
    monkeypatch.setenv("ICT_IMAGENET64_PATH", str(tmp_path))
    raw = yaml.safe_load(space_path(name).read_text())
    plan = load_space(name).plan(budget)
    for stratum in plan.strata:
        keys = _space_keys(raw, budget, stratum.name)
        for params in _trial_configs(plan, stratum):
            trial = trial_config(stratum.fixed, params)
            cli = load_config(str(budget_preset(budget)), {**keys, **params})
            # ... with its input paths made absolute on the driver, where the plan is made (tune/inputs.py)
            cli = cli.with_overrides({k: absolute_input(v) for k, v in cli.flat().items() if k in INPUT_KEYS and v})
            assert trial == cli, (name, budget, stratum.name, params)


def test_paper_budget_is_the_cifar10_preset(monkeypatch, tmp_path):
    from tune.space_schema import budget_preset

    assert load_config(str(budget_preset("paper"))) == load_config("cifar10")
    monkeypatch.setenv("ICT_CIFAR10_PATH", str(tmp_path))
    plan = load_space("c_scaling").plan("paper")
    cifar = next(s for s in plan.strata if s.name == "cifar10")
    trial = load_config(overrides=cifar.first_config(plan.params)).flat()
    preset = load_config("cifar10", {"data.path": str(tmp_path)}).flat()
    own = {"data.path", "loss.metric", *plan.params}  # the stratum's path, the space's fixed key, the searched c
    # the preset's relative weights path, made absolute where the plan is made (tune/inputs.py)
    assert trial["eval.inception_path"] == str(Path(preset["eval.inception_path"]).resolve())
    own.add("eval.inception_path")
    assert {k: v for k, v in trial.items() if k not in own} == {k: v for k, v in preset.items() if k not in own}
    assert trial["eval.every"] == 25000 and trial["train.precision"] == preset["train.precision"]


def test_a_budget_trial_config_equals_the_training_cli_dry_run(monkeypatch, tmp_path, capsys):
    """One real `python -m ict_core.train --preset <budget> --set ... --dry-run` (its main(), in this process)
    against the planned trial."""
    import json

    from tune.space_schema import budget_preset

    plan = load_space("dropout").plan("cpu")
    stratum = next(s for s in plan.strata if s.name == "diffusion-digits")
    params = {"network.dropout": 0.25}
    sets = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in
            {"loss.objective": "diffusion", "loss.p_mean": -1.2, "loss.p_std": 1.2, "data.name": "digits",
             "network.attn_resolutions": [], **params}.items()]
    from ict_core.cli import train as train_cli

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = train_cli.main(["--preset", str(budget_preset("cpu")), *sum((["--set", s] for s in sets), []), "--dry-run",
                           "--format", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out) == load_config(overrides={**stratum.fixed, **params}).to_dict()


def test_preset_base_inherits_overrides_and_fails_on_a_circle_or_an_unknown_key(tmp_path):
    from ict_core.config import ConfigError

    (tmp_path / "a.yaml").write_text("base: digits\ntrain: {total_steps: 7}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim.lr: 0.5\n")
    cfg = load_config(str(tmp_path / "b.yaml"))
    assert cfg == load_config("digits", {"train.total_steps": 7, "optim.lr": 0.5})
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "e.yaml").write_text("base: a.yaml\ntrain: {total_stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"e\.yaml.*total_stepz"):
        load_config(str(tmp_path / "e.yaml"))


@pytest.mark.parametrize(
    "extra, needles",
    [
        ("budgets:\n  smoke: {num_samples: 2, sedes: 3}\n", ["budgets.smoke.sedes", "unknown key", "seeds", "fixed"]),
        ("strata: [{name: a, fixd: {data.name: digits}}]\n", ["strata[0].fixd", "unknown key", "optional"]),
        ("search: {algorithm: random, sed: 1}\n", ["search.sed", "unknown key", "algorithm, seed"]),
        ("scheduler: {type: asha, grace: 5}\n", ["scheduler.grace", "unknown key", "grace_period"]),
        ("seeds: 0\n", ["seeds must be in [1, inf)", "0"]),
        ("budgets:\n  smoke: {num_samples: many}\n", ["budgets.smoke.num_samples", "int", "many"]),
    ],
)
def test_space_schema_is_read_by_the_typed_config_engine(tmp_path, extra, needles):
    path = tmp_path / "schema.yaml"
    path.write_text("name: schema\nparams:\n  loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}\n" + extra)
    _assert_plan_error(path, needles)
