"""Experiment trackers (tune/trackers.py): every evaluation metric of every seed, with the run's full config,
reaches MLflow (its real local store) and W&B (offline files), from both trial paths; read back from what the
trackers wrote. Real local Ray, real training, real MLflow and W&B clients, no network."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tune.search import main as search_main
from tune.trackers import check_trackers

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")

SPACE = """name: {name}
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: 20, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: 10, eval.num_samples: 100, eval.grid: false,
        eval.cache_dir: "{cache}"}}
params:
  loss.huber_c: {{type: grid, values: [{values}]}}
strata:
  - {{name: only, fixed: {{}}}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: {seeds}
max_concurrent: 2
"""


def read_wandb_records(path: Path) -> list:
    """The protobuf records of a W&B offline run file (a LevelDB-style log: 7-byte file header, then 32 KiB
    blocks of records, each with a 7-byte header: checksum, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            body, pending = pending + chunk, b""
            record = pb.Record()
            record.ParseFromString(body)
            out.append(record)
        elif kind in (2, 3):
            pending += chunk
    return out


def wandb_runs(folder: Path) -> dict:
    """{run name: {"config": ..., "history": {step: {metric: value}}, "group", "job_type"}} of offline runs."""
    runs = {}
    for path in folder.glob("wandb/offline-run-*/run-*.wandb"):
        run = {"config": {}, "history": {}}
        for rec in read_wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run.update(name=rec.run.display_name, group=rec.run.run_group, job_type=rec.run.job_type)
                run["config"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                      for i in rec.run.config.update})
            elif kind == "config":
                run["config"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                      for i in rec.config.update})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                run["history"][rec.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
        runs[run["name"]] = run
    return runs


def _space(tmp_path, name, values, seeds):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(name=name, values=values, seeds=seeds, cache=tmp_path.parent / "featnet-cache"))
    return path


def test_bad_tracker_is_refused_before_ray_starts(tmp_path, capsys):
    assert search_main(["--space", "c_scaling", "--tracker", "comet", "--storage", str(tmp_path)]) == 2
    assert "--tracker: unknown tracker 'comet'; one of mlflow, wandb" in capsys.readouterr().err
    assert check_trackers(["mlflow,wandb", "mlflow"]) == ["mlflow", "wandb"]
    with pytest.raises(Exception, match="--tracking-uri is for --tracker mlflow"):
        check_trackers(["wandb"], "sqlite:///x.db")


@pytest.mark.slow
def test_every_evaluation_of_every_seed_reaches_mlflow_and_wandb_from_both_trial_paths(tmp_path, monkeypatch):
    import ray
    from mlflow.tracking import MlflowClient

    from tune.launch import run_search

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    storage = tmp_path / "results"
    uri = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}})
    try:
        local = run_search(_space(tmp_path, "inproc", "0.01", 2), storage=storage, quiet=True,
                           trackers=["mlflow", "wandb"])
        remote = run_search(_space(tmp_path, "raytrain", "0.03", 1), storage=storage, quiet=True, ray_train=True,
                            trackers=["mlflow"], tracking_uri=uri)
    finally:
        ray.shutdown()

    check_tracked(local, remote, uri)


def check_tracked(local, remote, uri):
    from mlflow.tracking import MlflowClient

    for exp_dir, tracking_uri, name in ((local, f"sqlite:///{local / 'mlflow.db'}", "inproc-smoke"),
                                        (remote, uri, "raytrain-smoke")):
        trials = pd.read_parquet(exp_dir / "trials.parquet")
        evals = pd.read_parquet(exp_dir / "evals.parquet")
        assert (trials["status"] == "completed").all() and len(trials) == {"inproc-smoke": 2, "raytrain-smoke": 1}[name]
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(name)
        runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
        assert set(runs) == set(trials["trial_id"])  # one MLflow run per seed, nothing twice
        for _, row in trials.iterrows():
            run = runs[row["trial_id"]]
            assert run.data.tags["stratum"] == "only" and run.data.tags["seed"] == str(row["seed"])
            assert run.data.tags["config_id"] == row["config_id"] and run.info.status == "FINISHED"
            # The full config: every config key of the row, with its value.
            assert float(run.data.params["loss.huber_c"]) == row["loss.huber_c"]
            assert run.data.params["network.channel_mult"] == "[1]" and run.data.params["train.seed"] == str(row["seed"])
            assert len(run.data.params) >= 60
            mine = evals[evals["trial_id"] == row["trial_id"]].sort_values("step")
            for metric in ("fd", "kid", "loss_heldout", "fd_2step"):
                history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
                assert [s for s, _ in history] == mine["step"].tolist(), metric
                assert [v for _, v in history] == pytest.approx(mine[metric].tolist()), metric
            assert run.data.metrics["final_fd"] == pytest.approx(row["final_fd"])

    # W&B, offline: the same runs, configs and histories, read back from its run files.
    trials = pd.read_parquet(local / "trials.parquet")
    evals = pd.read_parquet(local / "evals.parquet")
    runs = wandb_runs(local)
    assert set(runs) == set(trials["trial_id"])
    for _, row in trials.iterrows():
        run = runs[row["trial_id"]]
        assert run["group"] == row["config_id"] and run["job_type"] == "only"
        assert run["config"]["loss.huber_c"] == row["loss.huber_c"] and run["config"]["seed"] == row["seed"]
        assert run["config"]["network.channel_mult"] == [1]
        mine = evals[evals["trial_id"] == row["trial_id"]]
        assert sorted(run["history"]) == sorted(mine["step"])
        for _, e in mine.iterrows():
            assert run["history"][e["step"]]["fd"] == pytest.approx(e["fd"])
            assert run["history"][e["step"]]["kid"] == pytest.approx(e["kid"])
