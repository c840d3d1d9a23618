"""Real searches: a two-node local Ray cluster, failing and diverging trials, and a driver killed mid-search."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ict_core.records import TRIALS_SCHEMA, evals_schema
from tune.cluster import pythonpath_env
from tune.launch import run_search

REPO = Path(__file__).resolve().parent.parent

# A few seconds of real training per trial: tiny U-Net on the bundled digits, two evaluations.
TINY = """
fixed: {{data.name: digits, network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: {steps}, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, eval.every: {every}, eval.num_samples: 100, eval.grid: false,
        eval.cache_dir: "{cache}"}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: 1
max_concurrent: 2
"""


def _space(tmp_path: Path, name: str, points: list[str], steps=40, every=20) -> Path:
    cache = tmp_path.parent / "featnet-cache"  # shared by the tests of one session: the feature net trains once
    text = f"name: {name}\n" + TINY.format(steps=steps, every=every, cache=cache)
    text += "points:\n" + "".join(f"  - {p}\n" for p in points)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _two_node_search(tmp_path: Path) -> Path:
    """Runs in a fresh interpreter (see the test): a search on a local two-node cluster, 1 CPU per node."""
    import ray
    from ray.cluster_utils import Cluster

    space = _space(tmp_path, "two_nodes", [
        "{loss.huber_c: 0.01}",
        "{loss.huber_c: 0.1}",
        "{loss.huber_c: 0.03}",
        "{loss.huber_c: 0.3}",
        "{optim.lr: 1.0e+6}",  # the loss becomes NaN within a few steps
        "{data.name: cifar10, data.path: /nonexistent/cifar-10-batches-py}",  # load_dataset raises DataError
    ])
    for key, value in pythonpath_env().items():  # the raylets' workers must import tune.*
        os.environ[key] = value
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        return run_search(space, budget="smoke", storage=tmp_path / "results", name="two", quiet=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_two_node_search_spreads_trials_and_records_errors_and_divergence(tmp_path):
    """A fresh interpreter, because Ray fixes its auth mode per process: joining a cluster by address needs
    RAY_AUTH_MODE set before Ray starts, and this pytest process may already have run a local (token) Ray for
    another test, after which actors on the new cluster are never scheduled."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    exp_dir = Path((tmp_path / "exp_dir.txt").read_text())

    assert pq.read_schema(exp_dir / "trials.parquet").remove_metadata() == TRIALS_SCHEMA
    searched = json.loads(pq.read_schema(exp_dir / "evals.parquet").metadata[b"ict.searched_keys"])
    # A grid of points searches the keys its points set.
    assert searched == ["loss.huber_c", "optim.lr", "data.name", "data.path"]
    assert pq.read_schema(exp_dir / "evals.parquet").remove_metadata() == evals_schema(searched)
    trials = pd.read_parquet(exp_dir / "trials.parquet")
    evals = pd.read_parquet(exp_dir / "evals.parquet")
    assert len(trials) == 6 and trials["trial_id"].is_unique
    by_status = trials.set_index("status")
    assert sorted(trials["status"]) == ["completed"] * 4 + ["diverged", "errored"]
    errored = by_status.loc["errored"]
    assert "cifar" in errored["error"] and errored["data.name"] == "cifar10"
    assert by_status.loc["diverged", "optim.lr"] == 1e6 and pd.isna(by_status.loc["diverged", "final_fd"])
    completed = trials[trials["status"] == "completed"]
    assert sorted(completed["loss.huber_c"]) == [0.01, 0.03, 0.1, 0.3]
    assert completed["final_fd"].notna().all() and (completed["steps"] == 40).all()
    assert completed["error"].isna().all() and (completed["dataset"] == "digits-8").all()
    # Trials ran on both nodes of the cluster.
    assert trials["node_id"].dropna().nunique() == 2
    # Two evaluations per completed run, none for the others.
    counts = evals.groupby("trial_id")["step"].apply(list).to_dict()
    assert {counts[t] == [20, 40] for t in completed["trial_id"]} == {True}
    assert set(counts) == set(completed["trial_id"])
    # Nothing lost with actor reuse on two nodes: every run wrote its folder straight into the shared storage.
    for row in trials.itertuples():
        if row.status == "errored":
            continue
        assert (exp_dir / row.run_dir / "summary.json").exists(), row.run_dir
        assert (exp_dir / row.run_dir).parent.joinpath("stdout.log").read_text().strip()
    info = json.loads((exp_dir / "experiment.json").read_text())
    assert info["status"] == "failed" and "cifar" in info["first_error"] and info["provenance"]["git_commit"]


def _driver(args: list[str]) -> subprocess.CompletedProcess:
    """tune/search.py's main(args) in this process, run to its end: what the finished subprocess would give."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from tune import search

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = search.main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.slow
def test_killed_driver_resumes_and_writes_every_trial_once(tmp_path):
    values = [0.005, 0.01, 0.02, 0.05]
    space = _space(tmp_path, "kill_resume", [f"{{loss.huber_c: {v}}}" for v in values], steps=60, every=20)
    storage = tmp_path / "results"
    cmd = [sys.executable, str(REPO / "tune" / "search.py"), "--space", str(space), "--storage", str(storage),
           "--name", "kr"]
    trials_path = storage / "kr" / "trials.parquet"
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if trials_path.exists() and len(pd.read_parquet(trials_path)) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert trials_path.exists(), "no trial finished in time"
    finally:
        # SIGKILL the driver's whole process group (the driver, its local Ray and the trial workers).
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = pd.read_parquet(trials_path)
    assert 1 <= len(before) < len(values)
    # A copy elsewhere is refused (its Ray state names this folder), before Ray starts; this folder is untouched.
    shutil.copytree(storage / "kr", tmp_path / "moved" / "kr", symlinks=True)
    moved = _driver([*cmd[2:-4], "--storage", str(tmp_path / "moved"), "--name", "kr", "--resume"])
    assert moved.returncode == 2 and "moved or copied" in moved.stderr and str(storage / "kr") in moved.stderr, \
        moved.stdout[-2000:] + moved.stderr[-2000:]
    assert pd.read_parquet(trials_path)["run_key"].tolist() == before["run_key"].tolist()

    done = _driver(cmd[2:] + ["--resume"])  # the restarted driver, in this process
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = pd.read_parquet(trials_path)
    evals = pd.read_parquet(storage / "kr" / "evals.parquet")
    assert len(trials) == len(values), trials[["trial_id", "loss.huber_c", "status"]]
    assert trials["trial_id"].is_unique and trials["run_key"].is_unique
    assert sorted(trials["loss.huber_c"]) == values
    assert (trials["status"] == "completed").all()
    # Runs recorded before the kill are kept as they were.
    kept = trials.set_index("trial_id").loc[before["trial_id"]]
    assert list(kept["final_fd"]) == list(before["final_fd"])
    # One evaluation row per (run, step), even for runs resumed from a checkpoint.
    assert not evals.duplicated(["trial_id", "step"]).any()
    assert set(evals["trial_id"]) == set(trials["trial_id"])
    assert "trials.parquet" in done.stdout and "best fd" in done.stdout


@pytest.mark.slow
def test_asha_prunes_a_hopeless_trial_and_records_it(tmp_path, shared_ray):
    """Trials run one at a time: the first learns, the second's learning rate (1e-9) keeps it at its
    initialisation (zero output layer: samples collapse to the mean), so its FD at the first rung is far worse
    and ASHA (reduction factor 2) must stop it there; the table records it as pruned with the steps it ran."""
    space = _space(tmp_path, "asha", ["{optim.lr: 1.0e-3}", "{optim.lr: 1.0e-9}"], steps=60, every=20)
    text = space.read_text().replace("max_concurrent: 2", "max_concurrent: 1")
    space.write_text(text + "scheduler: {type: asha, grace_period: 20, reduction_factor: 2}\n")
    exp_dir = run_search(space, budget="smoke", storage=tmp_path / "results", name="asha", quiet=True)

    trials = pd.read_parquet(exp_dir / "trials.parquet").set_index("optim.lr")
    assert trials.loc[1e-3, "status"] == "completed" and trials.loc[1e-3, "steps"] == 60
    assert trials.loc[1e-9, "status"] == "pruned" and trials.loc[1e-9, "steps"] == 20
    evals = pd.read_parquet(exp_dir / "evals.parquet")
    pruned_id = trials.loc[1e-9, "trial_id"]
    assert list(evals.loc[evals["trial_id"] == pruned_id, "step"]) == [20]


if __name__ == "__main__":
    _tmp = Path(sys.argv[1])
    (_tmp / "exp_dir.txt").write_text(str(_two_node_search(_tmp)))
