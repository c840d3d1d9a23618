"""The strata of one search run at the same time, into one experiment: on a local Ray with room for two trials, a
two-stratum search has trials of both strata training at once, never more than fit, and one table pair holds
every stratum's rows."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

SPACE = """name: {name}
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: 150, train.batch_size: 16, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: 0, eval.num_samples: 100, eval.grid: false,
        eval.cache_dir: "{cache}"}}
params:
  loss.huber_c: {{type: grid, values: [0.01, 0.03]}}
strata:
  - {{name: first, fixed: {{optim.lr: 1.0e-3}}}}
  - {{name: second, fixed: {{optim.lr: 2.0e-3}}}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: 1
max_concurrent: 2
"""


def _intervals(exp_dir: Path, trials: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(stratum, start, end) of every run: its run folder's config.json is written when the seed starts, its
    summary.json when it ends."""
    out = []
    for row in trials.itertuples():
        run = exp_dir / row.run_dir
        out.append((row.stratum, (run / "config.json").stat().st_mtime, (run / "summary.json").stat().st_mtime))
    return out


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with room for two trials for the module (run_search leaves a Ray it did not start running)."""
    import ray

    from tune.cluster import pythonpath_env

    saved = {key: os.environ.get(key) for key in pythonpath_env()}
    os.environ.update(pythonpath_env())  # Ray's workers import tune.*
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow
def test_two_strata_train_at_the_same_time_within_what_fits(tmp_path, local_ray):
    from tune.launch import run_search

    space = tmp_path / "together.yaml"
    space.write_text(SPACE.format(name="together", cache=tmp_path.parent / "featnet-cache"))
    exp_dir = run_search(space, budget="smoke", storage=tmp_path / "results", name="s", quiet=True)
    info = json.loads((exp_dir / "experiment.json").read_text())
    assert info["status"] == "finished" and sorted(info["done_strata"]) == ["first", "second"]
    assert info["resources"]["max_concurrent_trials"] == 2
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    assert len(trials) == 4 and trials["run_key"].is_unique and (trials["status"] == "completed").all()
    assert trials.groupby("stratum")["loss.huber_c"].apply(sorted).to_dict() == {
        "first": [0.01, 0.03], "second": [0.01, 0.03]}
    evals = pd.read_parquet(exp_dir / "evals.parquet")
    assert set(evals["trial_id"]) == set(trials["trial_id"]) and not evals.duplicated(["trial_id", "step"]).any()
    for stratum in ("first", "second"):  # each stratum its own ledger and Ray experiment
        ledger = json.loads((exp_dir / "strata" / f"{stratum}.json").read_text())
        assert ledger["planned"] == 2 and sorted(ledger["trials"].values()) == ["ended", "ended"]
        assert (exp_dir / "ray" / stratum).is_dir()

    runs = _intervals(exp_dir, trials)
    overlapping = [(a, b) for a in runs for b in runs
                   if a[0] == "first" and b[0] == "second" and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, f"no run of 'second' trained while one of 'first' did: {runs}"
    # Never more at once than the 2 that fit: at every run's start, at most 2 runs had started and not ended.
    for _, start, _ in runs:
        assert sum(1 for _, s, e in runs if s <= start < e) <= 2, runs


def test_strata_on_a_growing_cluster_share_the_plans_concurrency():
    """Where Ray holds trials to what fits (one machine), every stratum's Tuner may fill it; where trials queue as
    demand for the autoscaler, the strata split the plan's concurrency, so the demand stays at it."""
    from tune.tuners import shared_concurrency

    assert shared_concurrency({"max_concurrent_trials": 2, "queue": False}, 2) == 2
    assert shared_concurrency({"max_concurrent_trials": 8, "queue": True}, 4) == 2
    assert shared_concurrency({"max_concurrent_trials": 8, "queue": True}, 3) == 3  # 9 asked, never fewer than 8
    assert shared_concurrency({"max_concurrent_trials": 8, "queue": True}, 1) == 8
    assert shared_concurrency({"max_concurrent_trials": 2, "queue": True}, 4) == 1


@pytest.mark.slow
def test_a_stratum_started_before_strata_ran_at_once_is_restored_under_its_old_trainable_name(tmp_path, local_ray):
    """Experiment folders written before hold Ray experiments whose trainable was registered as `ict_trial`;
    Tune restores only under the same name, so such a stratum is restored under it and fitted on its own (two
    of them under one name at once would run each other's trainable); a stratum started now is restored under its
    own name."""
    from ray import tune as rt

    from tune.plan import resolve_plan, resources
    from tune.tuners import Launch, StratumJob, build_tuner, trainable_name

    def ict_trial(config):  # the name the previous code registered every stratum's trainable under
        rt.report({"fd": 1.0})

    def made_now(config):
        rt.report({"fd": 1.0})

    made_now._name = trainable_name("second")
    ray_dir = tmp_path / "ray"
    for trainable, name in ((ict_trial, "first"), (made_now, "second")):
        rt.Tuner(trainable, run_config=rt.RunConfig(name=name, storage_path=str(ray_dir), verbose=0)).fit()
    space = tmp_path / "old.yaml"
    space.write_text(SPACE.format(name="old", cache=tmp_path / "featnet-cache"))
    plan = resolve_plan(space)
    res = {**resources(plan, 1, 0, {"CPU": 2, "GPU": 0}), "max_failures": 0}
    ctx = Launch(plan=plan, name="old", exp_dir=tmp_path, experiment_uri=None, res=res,
                 runs_root=str(tmp_path / "runs"), ray_dir=str(ray_dir))
    first, second = (StratumJob(s, s.name, 1) for s in plan.strata)
    assert build_tuner(ctx, first) is not None and first.legacy
    assert build_tuner(ctx, second) is not None and not second.legacy
