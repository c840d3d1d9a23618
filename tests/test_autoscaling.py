"""The cluster path end to end on an autoscaling cluster made here by Ray's own autoscaler (fake multi-node
provider, tests/fake_cluster.py): a 0-GPU head, a `gpu_worker` node type (1 CPU, 1 GPU) at min_workers 0.

The README's cluster search command, as written (`--workers-per-trial 1 --gpus-per-worker 1`, the address from the
environment that cluster.yaml's ~/ict_env.sh sets), makes the autoscaler add GPU nodes, runs its trials there,
survives a worker node whose raylet is killed mid-run (the trial continues from its checkpoint on a new node),
writes every seed's row once, and the cluster scales back down after."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.fake_cluster import REPO, FakeCluster, run_cluster_search
from tune.cluster import running_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    fake = FakeCluster(head_cpus=2, worker_cpus=1, max_workers=2, idle_timeout_minutes=0.1)
    try:
        fake.start()
        yield fake
    finally:
        fake.stop()
        assert not fake.processes(), "the fake cluster left processes behind"


def test_running_cluster_is_found_only_while_alive(cluster, tmp_path):
    # `ray start` records the cluster in its temp dir; that record is what a plain `python tune/search.py` on
    # the head joins (the default temp dir there), and a stale record of a dead cluster is ignored.
    assert running_cluster(str(cluster.temp_dir)) == cluster.address
    (tmp_path / "ray_current_cluster").write_text(f"{cluster.address.rsplit(':', 1)[0]}:1")
    assert running_cluster(str(tmp_path)) is None


def test_a_trial_no_node_type_fits_is_refused_before_any_trial(cluster, tmp_path):
    env = {**os.environ, **cluster.env}
    proc = subprocess.run([sys.executable, "tune/search.py", "--space", "c_scaling", "--budget", "smoke",
                           "--workers-per-trial", "1", "--gpus-per-worker", "2", "--storage", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "1 CPU and 2 GPU" in err and "gpu_worker x2 (1 CPU, 1 GPU)" in err
    assert not list(tmp_path.glob("*/runs"))  # no trial started


def test_readme_cluster_search_autoscales_survives_a_killed_node_and_scales_down(cluster, tmp_path):
    out = run_cluster_search(cluster, tmp_path, configs=2, kill=True, say=lambda text: None)
    timeline = "\n".join(f"{t:6.1f} s  {text}" for t, text in out["timeline"])
    assert out["returncode"] == 0, timeline + "\n" + out["log"][-4000:]
    log = out["log"]
    assert f"ray        cluster at {cluster.address} (from RAY_ADDRESS)" in log
    assert "autoscaling to 4 CPU / 2 GPU" in log and "2 concurrent trial(s)" in log

    trials = pd.read_parquet(out["exp_dir"] / "trials.parquet")
    # Every seed's row written once, none lost to the killed node.
    assert len(trials) == out["expected_rows"] and trials["trial_id"].is_unique, trials
    assert (trials["status"] == "completed").all() and (trials["steps"] == 200).all()
    # Trials ran on nodes the autoscaler added, not on the 0-GPU head.
    assert trials["node_id"].notna().all() and not set(trials["node_id"]) & set(out["head_nodes"]), timeline

    killed = out["killed"]
    assert killed is not None, timeline
    run_dir = Path(killed["run_dir"])
    node = json.loads(run_dir.with_name(run_dir.name + ".node.json").read_text())
    # The retried trial ran on another node and continued from its last checkpoint: it lost at most the steps
    # since then (a checkpoint is written at every evaluation, every 100 steps).
    assert node["node_id"] != killed["node_id"] and node["resume_step"] == killed["step"] >= 100, timeline
    evals = pd.read_parquet(out["exp_dir"] / "evals.parquet")
    assert sorted(evals.groupby("trial_id")["step"].apply(list).tolist()) == [[100, 200]] * 2, evals
    # The cluster scaled back down to the head.
    assert out["worker_nodes_left"] == [], timeline
