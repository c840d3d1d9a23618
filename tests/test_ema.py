"""The evaluation EMA's warm-up: its formula, that the trainer applies it, and that no preset or search budget
evaluates an EMA still holding 1% of the initial weights."""
from __future__ import annotations

import math

import pytest
import torch

from ict_core import trainer
from ict_core.config import MAX_INITIAL_EMA_SHARE, ConfigError, list_presets, load_config, load_preset
from ict_core.ema import ema_beta, ema_update, frozen_copy, half_life, initial_weight_share
from tune.plan import resolve_plan
from tune.space_schema import BUDGETS, list_spaces


def test_beta_follows_the_half_life_ramp_by_hand():
    # rate 0.99 -> half-life ln 0.5 / ln 0.99 = 68.97 steps; ramp 0.05: h(k) = min(68.97, 0.05 k)
    assert half_life(0.99) == pytest.approx(68.967, abs=1e-3)
    assert ema_beta(1, 0.99, 0.05) == pytest.approx(0.5 ** 20)
    assert ema_beta(100, 0.99, 0.05) == pytest.approx(0.5 ** (1 / 5))
    assert ema_beta(10_000, 0.99, 0.05) == pytest.approx(0.99)  # ramp done: the configured rate
    assert ema_beta(7, 0.99, 0.0) == 0.99  # no ramp: constant rate
    assert ema_beta(3, 0.0, 0.05) == 0.0 and ema_beta(3, 1.0, 0.5) == pytest.approx(0.5 ** (1 / 1.5))
    with pytest.raises(ValueError, match="steps >= 1"):
        ema_beta(0, 0.99, 0.05)


def test_initial_share_is_the_product_of_betas():
    assert initial_weight_share(1000, 0.999, 0.0) == pytest.approx(0.999 ** 1000)  # 37%: the lag
    assert initial_weight_share(3, 0.99, 0.05) == pytest.approx(0.5 ** (20 + 10 + 20 / 3))
    assert initial_weight_share(0, 0.99, 0.05) == 1.0


def test_ema_update_lerps_parameters_copies_buffers_and_rate_0_copies():
    source = torch.nn.BatchNorm1d(3)
    target = frozen_copy(source)
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        source.weight.fill_(2.0)
        source.running_mean.fill_(5.0)
    ema_update(target, source, 0.75)  # 0.75 * 1 + 0.25 * 2
    assert torch.equal(target.weight, torch.full((3,), 1.25)) and torch.equal(target.running_mean, source.running_mean)
    ema_update(target, source, 0.0)
    assert torch.equal(target.weight, source.weight)


def test_trainer_ema_is_the_ramped_average_of_the_student_trajectory(tmp_path):
    cfg = load_config("tiny", ["train.num_threads=1", "train.ema_rate=0.9", "train.ema_rampup=0.5",
                               "network.dropout=0.1"])
    run = trainer.Run(cfg, None, tmp_path, None)
    expected = {k: v.clone() for k, v in run.model.state_dict().items()}
    for _ in range(6):
        run.train_step()
        run.step += 1
        beta = ema_beta(run.step, 0.9, 0.5)
        for key, value in run.model.state_dict().items():
            if value.is_floating_point():
                expected[key] = beta * expected[key] + (1 - beta) * value
    state = run.ema.state_dict()
    assert ema_beta(1, 0.9, 0.5) < 0.3  # the first update all but replaces the initialization
    for key, value in expected.items():
        assert torch.allclose(state[key], value, atol=1e-6), key


def _first_eval(cfg) -> int:
    return min(cfg.eval.every or cfg.train.total_steps, cfg.train.total_steps)


def _assert_warm(cfg, where: str):
    # The share only falls with the step, so the first evaluation is the worst one.
    share = initial_weight_share(_first_eval(cfg), cfg.train.ema_rate, cfg.train.ema_rampup)
    assert share < MAX_INITIAL_EMA_SHARE, f"{where}: {share:.2%} of the initial weights at step {_first_eval(cfg)}"


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_evaluates_a_warmed_up_ema(name):
    _assert_warm(load_preset(name), name)


@pytest.mark.parametrize("space", list_spaces())
def test_every_budget_of_every_space_evaluates_a_warmed_up_ema(space, monkeypatch, tmp_path):
    monkeypatch.setenv("ICT_CIFAR10_PATH", str(tmp_path))  # plan the optional strata too
    monkeypatch.setenv("ICT_IMAGENET64_PATH", str(tmp_path))
    for budget in BUDGETS:
        plan = resolve_plan(space, budget)
        for stratum in plan.strata:
            configs = [stratum.first_config(plan.params)] + [{**stratum.fixed, **v} for v in stratum.variants]
            for overrides in configs:
                _assert_warm(load_config(overrides=overrides), f"{space}/{budget}/{stratum.name}")


def test_a_constant_rate_that_would_evaluate_the_initialization_is_refused():
    # The cpu budgets' old setting: rate 0.999, first evaluation (ASHA rung) at step 1000 -> 37%.
    overrides = ["train.ema_rate=0.999", "eval.every=1000", "train.total_steps=3000"]
    with pytest.raises(ConfigError, match=r"train.ema_rampup=0.*36.8% of the initial weights.*step 1000"):
        load_config(None, overrides + ["train.ema_rampup=0"])
    assert load_config(None, overrides).train.ema_rampup > 0
    assert load_config(None, ["train.ema_rate=0.99", "eval.every=1000", "train.ema_rampup=0"])  # 0.004%: allowed
    assert math.isclose(0.999 ** 1000, 0.3677, rel_tol=1e-3)
