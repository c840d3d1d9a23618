"""The objectives behind one interface: the registry covers the config's choices, a global draw sliced per rank
gives the whole batch's loss, each objective's sampler, and no objective test outside ict_core/objectives.py."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from ict_core.config import ConfigError, LossConfig, load_config
from ict_core.network import build_network
from ict_core.objectives import OBJECTIVES, build_objective, objective_class, slice_noise
from ict_core.rundir import RunFolder, latest_checkpoint, truncate_jsonl

REPO = Path(__file__).resolve().parent.parent


def _net(cfg, in_channels, resolution):
    """The network of a whole config, built as the trainer builds it (its objective's preconditioning)."""
    return build_network(cfg.network, cfg.precond, objective_class(cfg.loss.objective).precond, in_channels,
                         resolution)


def _cfg(objective: str, *overrides: str):
    return load_config("tiny", [f"loss.objective={objective}", "network.channels=8", "network.dropout=0.0", *overrides])


def test_registry_keys_are_the_configs_objective_choices():
    field = {f.name: f for f in dataclasses.fields(LossConfig)}["objective"]
    assert tuple(OBJECTIVES) == tuple(field.metadata["choices"])
    for name, cls in OBJECTIVES.items():
        assert cls.name == name
        assert _net(_cfg(name), 1, 8).kind == cls.precond
    with pytest.raises(ConfigError, match=r"loss.objective must be one of consistency, diffusion; got 'flow'"):
        load_config(None, ["loss.objective=flow"])  # the schema checks it, before any objective is built


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_a_global_draw_sliced_per_rank_gives_the_whole_batchs_loss(name):
    cfg = _cfg(name, "train.total_steps=100")
    objective = build_objective(cfg, 64)
    torch.manual_seed(0)
    net = _net(cfg, 1, 8)
    x = torch.randn(8, 1, 8, 8)
    noise = objective.draw(40, 8, x.shape[1:], torch.Generator().manual_seed(5))
    assert all(v.shape[0] == 8 for v in noise.values())
    whole, _ = objective.loss(net, x, 40, noise)
    halves = torch.cat([objective.loss(net, x[lo:lo + 4], 40, slice_noise(noise, lo, lo + 4))[0] for lo in (0, 4)])
    assert whole.shape == (8,) and torch.allclose(whole, halves, rtol=1e-5, atol=1e-6)
    other = objective.draw(40, 8, x.shape[1:], torch.Generator().manual_seed(6))
    assert not torch.allclose(objective.loss(net, x, 40, other)[0], whole)  # the loss follows the drawn noise
    sigma = objective.student_sigma(40, noise)
    assert sigma.shape == (8,) and bool((sigma > 0).all())


def test_consistency_objective_has_a_curriculum_and_one_or_two_step_sampling():
    consistency = build_objective(_cfg("consistency", "train.total_steps=100", "loss.teacher=ema"), 64)
    diffusion = build_objective(_cfg("diffusion"), 64)
    assert consistency.num_points(99) > consistency.num_points(0) >= 2 and diffusion.num_points(99) == 0
    assert consistency.ema_teacher and not diffusion.ema_teacher
    assert 0 < consistency.teacher_rate(0) < 1
    with pytest.raises(NotImplementedError, match="keeps no EMA teacher"):
        diffusion.teacher_rate(0)
    net = _net(_cfg("consistency"), 1, 8).eval()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    one, two = (consistency.sample(net, (4, 1, 8, 8), s, g(), torch.device("cpu")) for s in (1, 2))
    assert one.shape == two.shape == (4, 1, 8, 8) and not torch.equal(one, two)
    with pytest.raises(ValueError, match=r"steps in \(1, 2\), got 3"):
        consistency.sample(net, (4, 1, 8, 8), 3, g(), torch.device("cpu"))
    diff_net = _net(_cfg("diffusion"), 1, 8).eval()
    assert diffusion.sample(diff_net, (2, 1, 8, 8), None, g(), torch.device("cpu")).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="steps must be None, got 2"):
        diffusion.sample(diff_net, (2, 1, 8, 8), 2, g(), torch.device("cpu"))
    assert consistency.sampler_label(2).startswith("2 steps") and diffusion.sampler_label(None).startswith("Heun")


def test_no_objective_test_outside_the_objectives_module():
    pattern = re.compile(r"(?<!\w)objective\s*(==|!=)|(?<!\w)objective\s+(not\s+)?in\s*\(")
    found = [f"{path.relative_to(REPO)}:{i}" for folder in ("ict_core", "tune", "analysis", "benchmarks")
             for path in sorted((REPO / folder).rglob("*.py")) if path.name != "objectives.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_run_folder_truncates_logs_and_keeps_the_newest_checkpoints(tmp_path):
    log = tmp_path / "evals.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    truncate_jsonl(log, 20)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [10, 20]
    folder = RunFolder(tmp_path)
    for step in (5, 10, 15):
        folder.save_checkpoint(step, {"step": step}, keep=2)
    assert sorted(p.name for p in folder.checkpoints.iterdir()) == ["step_0000010", "step_0000015"]
    assert latest_checkpoint(tmp_path).name == "step_0000015"


def test_components_take_their_own_settings():
    """The network is built from its own settings and the preconditioning it needs, the objective from the loss
    settings and its curriculum: neither needs a whole Config, and the model layer imports no objective."""
    import ast

    from ict_core import schedule
    from ict_core.config import curriculum_steps
    from ict_core.objectives import ConsistencyObjective

    for module in ("network.py", "precision.py"):
        tree = ast.parse((REPO / "ict_core" / module).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"objectives", "loss", "ict_core.objectives", "ict_core.loss"}, module
    cfg = _cfg("consistency", "train.total_steps=100")
    net = build_network(cfg.network, cfg.precond, "consistency", 1, 8)
    curriculum = schedule.curriculum_from_config(cfg.curriculum, curriculum_steps(cfg))
    own = ConsistencyObjective(cfg.loss, cfg.precond, curriculum, 64, cfg.eval.sigma_mid)
    x = torch.randn(8, 1, 8, 8)
    noise = own.draw(40, 8, x.shape[1:], torch.Generator().manual_seed(5))
    assert torch.equal(own.loss(net, x, 40, noise)[0], build_objective(cfg, 64).loss(net, x, 40, noise)[0])
    # The probe loss draws once, through draw(): the same numbers as an explicit draw from the same seed.
    probe = own.probe_loss(net, x, 40, torch.Generator().manual_seed(5))
    assert torch.equal(probe, own.loss(net, x, 40, noise)[0])


def test_each_list_of_allowed_values_is_written_once_in_the_schema():
    """No ict_core module outside the config schema spells out a list of a choice field's allowed values; the
    modules that need one derive it (config.choices), so adding a value touches one line."""
    import ast
    import dataclasses as dc
    import typing

    from ict_core import precision, schedule
    from ict_core.config import Config, CurriculumConfig, LossConfig, TrainConfig, choices

    allowed = {frozenset(f.metadata["choices"]) for section in typing.get_type_hints(Config).values()
               for f in dc.fields(section) if "choices" in f.metadata and f.name != "name"}  # data.name: datasets.py
    schema = {REPO / "ict_core" / "config" / "schema.py"}
    found = []
    for path in sorted((REPO / "ict_core").rglob("*.py")):
        if path in schema:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                # network.PRECOND_KINDS names the network's two scalings, which the objectives pick (precond).
                if frozenset(e.value for e in node.elts) in allowed and path.name != "network.py":
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found == []
    assert schedule.CURRICULUM_SHAPES == choices(CurriculumConfig, "shape")
    assert (schedule.NOISE_SCHEDULES, schedule.WEIGHTINGS) == (choices(LossConfig, "noise_schedule"),
                                                               choices(LossConfig, "weighting"))
    assert precision.PRECISIONS == choices(TrainConfig, "precision")
