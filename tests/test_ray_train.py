"""Ray Train adapter (tune/ray_train.py) and its CLI (tune/train.py).

The fast tests check the launch rules without Ray. The slow ones run real TorchTrainer jobs on a local Ray
(2 CPUs) and on a two-node ray.cluster_utils.Cluster; each TorchTrainer start costs ~20 s on 2 cores, so the
checks are combined into three runs plus one resume.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from ict_core.config import load_config
from tune import train as train_cli
from tune.launch_plan import LaunchError, cpu_share, plan_launch
from tune.ray_train import run_ray_train
from tune.train_worker import WORKERS_FILE

# Small enough that the evaluation at the end costs little; the feature net is cached across tests.
FAST = {
    "network.dropout": 0.0,
    "eval.num_samples": 10,
    "train.log_every": 1,
}


def tiny(**overrides):
    return load_config("tiny", {**FAST, **overrides})


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _student(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)["student"]


# ---- launch rules, no Ray ------------------------------------------------------------------------
def test_bad_requests_fail_before_ray(tmp_path):
    import ray

    cases = [
        (dict(workers=0), "workers must be an integer >= 1, got 0"),
        (dict(workers=3), "train.batch_size=32 is not divisible by workers=3"),
        (dict(cpus_per_worker=0), "cpus_per_worker must be a number > 0"),
        (dict(max_failures=-2), "max_failures must be an integer >= 0"),
        (dict(name="a/b"), "name must be a plain folder name"),
        (dict(resume=True), "resume=True needs the name"),
        (dict(resume=True, name="nope"), "no run named 'nope' exists"),
        (dict(resume="maybe"), "resume must be False, True or 'auto'"),
        (dict(workers=2, gpus_per_worker=0.5), "would put several NCCL ranks on one GPU"),
    ]
    if not torch.cuda.is_available():
        cases.append((dict(workers=2, gpus_per_worker=1), "need 2 GPU(s) but this machine has 0"))
    for kwargs, message in cases:
        with pytest.raises(LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")):
            plan_launch(tiny(), storage=str(tmp_path), **kwargs)
    with pytest.raises(LaunchError, match="train.device=cuda needs gpus_per_worker > 0"):
        plan_launch(tiny(**{"train.device": "cuda"}), storage=str(tmp_path))
    (tmp_path / "taken").mkdir()
    with pytest.raises(LaunchError, match="a run named 'taken' already exists"):
        plan_launch(tiny(), storage=str(tmp_path), name="taken")
    assert plan_launch(tiny(), storage=str(tmp_path), name="taken", resume="auto").resume is True
    assert plan_launch(tiny(), storage=str(tmp_path), name="fresh", resume="auto").resume is False
    # The CLI turns the same problems into exit code 2 and a message, without starting Ray.
    assert train_cli.main(["--preset", "tiny", "--workers", "3", "--storage", str(tmp_path)]) == 2
    assert train_cli.main(["--preset", "tiny", "--set", "loss.huber_c=-1", "--storage", str(tmp_path)]) == 2
    assert not ray.is_initialized()


def test_plan_layout_and_cpu_share(tmp_path, capsys):
    plan = plan_launch(tiny(), workers=2, storage=str(tmp_path), name="r1")
    assert plan.run_dir == str(tmp_path / "r1" / "run")
    assert plan.experiment_path == str(tmp_path / "r1")
    assert (plan.backend, plan.cluster, plan.ship_code) == ("gloo", "local", False)
    uri_plan = plan_launch(tiny(), storage="file://" + str(tmp_path), name="r2")
    assert uri_plan.run_uri == f"file://{tmp_path}/r2/run" and uri_plan.run_dir != uri_plan.run_uri
    assert train_cli.main(["--preset", "tiny", "--workers", "2", "--storage", str(tmp_path), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["launch"]["workers"] == 2 and printed["config"]["train"]["batch_size"] == 32
    # As a script (tune/ first on sys.path), from another working directory.
    import subprocess

    script = Path(__file__).resolve().parent.parent / "tune" / "train.py"
    proc = subprocess.run([sys.executable, str(script), "--preset", "tiny", "--workers", "2", "--dry-run",
                           "--storage", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["launch"]["run_dir"].startswith(str(tmp_path))

    assert cpu_share(2, 0, free_cpus=2.0, max_node_cpus=2.0) == 1.0
    assert cpu_share(2, 0, free_cpus=16.0, max_node_cpus=4.0) == 4.0  # a worker must fit on one node
    assert cpu_share(2, 0, free_cpus=1.99, max_node_cpus=2.0) == 0.99  # inside a 0.01-CPU Tune trial
    assert cpu_share(4, 1, free_cpus=2.0, max_node_cpus=2.0) == 1.0  # GPU workers: GPU nodes may come later
    with pytest.raises(LaunchError, match="do not fit in the 0.01 free CPUs"):
        cpu_share(2, 0, free_cpus=0.01, max_node_cpus=2.0)


# ---- real Ray ------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_ray(monkeypatch):
    import ray

    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # inherited by the controller and workers
    # The dashboard serves the State API that Train V2's placement-group cleaner polls; without it the cleaner can
    # take the controller for dead and remove the workers' placement group mid-run (seen under load).
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=_free_port())
    yield ray
    ray.shutdown()


def _checkpoint_of_step(folder: Path, step: int) -> Path:
    found = [p for p in folder.glob("checkpoint_*") if p.is_dir() and json.loads((p / "meta.json").read_text())["step"] == step]
    assert len(found) == 1, f"expected one checkpoint of step {step} in {folder}, found {found}"
    return found[0]


@pytest.mark.slow
def test_two_workers_match_one_worker_survive_a_fault_and_resume(local_ray, tmp_path):
    """One TorchTrainer run (2 workers, a checkpoint every step, a real worker death at step 5) answers three
    questions; a second run checks --resume. Each worker-group start costs ~20 s on 2 cores."""
    from ict_core.trainer import train

    lr = {"optim.name": "radam", "optim.lr": 0.01, "train.batch_size": 32}
    run = {**lr, "train.total_steps": 6, "eval.every": 0, "train.checkpoint_every": 1,
           "train.keep_checkpoints": 10, "train.fault_step": 5}
    store = tmp_path / "store"
    out = run_ray_train(tiny(**run), workers=2, storage=str(store), name="fault", max_failures=1)
    run_dir = Path(out["run_dir"])
    assert out["status"] == "completed" and out["step"] == 6 and out["world_size"] == 2

    # 1) Step 1 of 2 workers x 16 images equals 1 process x 32 images. The reference runs train() in-process with
    #    no process group (the single-device definition, and no second ~20 s start). N(0) = s0 + 1 whatever
    #    total_steps is, so a 1-step reference draws the same first batch, noise levels and z. RAdam's first
    #    step is SGD on the bias-corrected momentum (rho_1 = 1 <= 5): the update is lr * gradient; lr = 1e-30
    #    gives the initial weights.
    one_step = {**lr, "train.total_steps": 1}
    train(tiny(**{**one_step, "optim.lr": 1e-30}), run_dir=str(tmp_path / "init"))
    train(tiny(**one_step), run_dir=str(tmp_path / "reference"))
    init_w = _student(tmp_path / "init" / "checkpoints" / "step_0000001")
    ref_w = _student(tmp_path / "reference" / "checkpoints" / "step_0000001")
    ddp_w = _student(_checkpoint_of_step(store / "fault", 1))
    ref_update = torch.cat([(ref_w[k] - init_w[k]).flatten() for k in ref_w])
    ddp_update = torch.cat([(ddp_w[k] - init_w[k]).flatten() for k in ref_w])
    # gloo averages float32 gradients of two half-batches: another summation order than one backward pass,
    # ~1e-6 relative. Other data or noise on a rank would give an O(1) relative difference.
    relative = float((ddp_update - ref_update).norm() / ref_update.norm())
    print(f"relative update difference, 2 workers vs 1 process: {relative:.2e}")
    assert float(ref_update.norm()) > 1e-4 and relative < 1e-4, relative

    # 2) fault_step made every rank os._exit(1) at step 5; Ray restarted the group from the latest checkpoint it
    #    had registered and the run ended at step 6 with each step logged once.
    assert (run_dir / ".fault_injected").read_text().startswith("fault injected at step 5")
    assert [row["step"] for row in _read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [row["step"] for row in _read_jsonl(run_dir / "evals.jsonl")] == [6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))  # rank 0 writes them, as in a one-process run
    events.Reload()
    assert events.Scalars("train/loss")[-1].step == 6 and [e.step for e in events.Scalars("eval/fd")] == [6]
    starts = _read_jsonl(run_dir / WORKERS_FILE)
    assert len(starts) == 4, "two ranks, started twice"
    assert {w["pid"] for w in starts[:2]}.isdisjoint({w["pid"] for w in starts[2:]}), "workers were not replaced"
    assert starts[0]["resume_checkpoint"] is None and starts[2]["resume_checkpoint"].startswith(str(store / "fault"))
    assert all(w["cpus"] == 1.0 and w["torch_threads"] == 1 for w in starts)

    # 3) --resume with the same name and storage continues the finished run, config read from its run folder;
    #    Ray keeps the latest train.keep_checkpoints (set to 2 here) of the continued run.
    rc = train_cli.main(["--resume", "--name", "fault", "--storage", str(store), "--workers", "2",
                         "--set", "train.total_steps=8", "--set", "train.keep_checkpoints=2"])
    assert rc == 0
    assert [row["step"] for row in _read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 9))
    assert [row["step"] for row in _read_jsonl(run_dir / "evals.jsonl")] == [6, 8]
    assert json.loads((run_dir / "summary.json").read_text())["step"] == 8
    assert len(_read_jsonl(run_dir / WORKERS_FILE)) == 6
    snapshot = json.loads((store / "fault" / "checkpoint_manager_snapshot.json").read_text())
    assert [c["metrics"]["step"] for c in snapshot["checkpoint_results"]] == [7, 8]
    # A fresh run may not silently reuse the name.
    assert train_cli.main(["--preset", "tiny", "--name", "fault", "--storage", str(store)]) == 2


def _two_node_scenario(tmp: Path) -> dict:
    """Run in a fresh interpreter (see the test below): a two-node Cluster, one CPU each, and a 2-worker run."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": _free_port(),
    })
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        node_ids = sorted(node.node_id for node in cluster.list_all_nodes())
        # As on a real cluster: RAY_ADDRESS, so run_ray_train joins it and ships the repository as the
        # runtime_env working_dir. One folder that both "nodes" see, given as a URI: rank 0 writes its run folder
        # to local scratch and mirrors it there after every report, as with s3://.
        os.environ["RAY_ADDRESS"] = cluster.address
        out = run_ray_train(tiny(**{"train.total_steps": 2}), workers=2, storage=f"file://{tmp / 'shared'}",
                            name="two_nodes")
        return {"node_ids": node_ids, "out": out}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_two_node_cluster_places_one_worker_per_node(tmp_path):
    """A fresh interpreter, because Ray fixes the auth mode per process: an explicit cluster address needs
    RAY_AUTH_MODE set before ray is imported, and a process that already ran a local (token) Ray, as the other
    tests here do, cannot switch (Train V2's controller then dies unscheduled)."""
    import subprocess

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    out, shared = result["out"], tmp_path / "shared"
    assert len(result["node_ids"]) == 2
    assert out["status"] == "completed" and out["step"] == 2 and out["world_size"] == 2
    assert out["run_uri"] == f"file://{shared}/two_nodes/run"
    mirrored = shared / "two_nodes" / "run"
    workers = _read_jsonl(mirrored / WORKERS_FILE)
    assert sorted(w["node_id"] for w in workers) == result["node_ids"], "expected one worker on each node"
    repo = str(Path(__file__).resolve().parent.parent)
    assert all(w["code_dir"] != repo for w in workers), "the code should reach the workers as a working_dir"
    assert json.loads((mirrored / "summary.json").read_text())["step"] == 2
    assert [row["step"] for row in _read_jsonl(mirrored / "metrics.jsonl")] == [1, 2]
    assert not (mirrored / "checkpoints").exists()  # checkpoints live with Ray, beside the run folder
    checkpoint = Path(out["checkpoint_path"].removeprefix("file://"))
    assert checkpoint.parent == shared / "two_nodes" and (checkpoint / "state.pt").exists()


if __name__ == "__main__":
    _tmp = Path(sys.argv[1])
    (_tmp / "result.json").write_text(json.dumps(_two_node_scenario(_tmp), default=str))
