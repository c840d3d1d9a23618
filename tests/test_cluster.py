"""tune/cluster.py without a cluster: which Ray a search joins, the node types an autoscaler may add, and trial
sizing on fixed and growing clusters (the end-to-end proof on a real autoscaling cluster: test_autoscaling.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tune import cluster
from tune.cluster import ClusterError, ClusterShape, resolve_address, trial_resources

REPO = Path(__file__).resolve().parent.parent

# The shipped cluster.yaml's shape, as Ray's fake provider runs it in test_autoscaling.py: a CPU head, GPU workers
# that start at zero.
GPU_TYPES = [{"name": "head", "CPU": 8.0, "GPU": 0.0, "max_count": 1},
             {"name": "gpu_worker", "CPU": 8.0, "GPU": 1.0, "max_count": 4}]


def _head_only(types=GPU_TYPES) -> ClusterShape:
    return ClusterShape(8.0, 0.0, [dict(t) for t in types], nodes=[{"CPU": 8.0, "GPU": 0.0}])


def test_address_order_is_flag_then_environment_then_running_cluster_then_local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("ICT_JOIN_RUNNING_CLUSTER", "1")
    monkeypatch.setattr(cluster, "running_cluster", lambda temp_dir=None: "10.0.0.5:6379")
    assert resolve_address("10.0.0.9:6379") == cluster.Target("10.0.0.9:6379", "--address")
    assert resolve_address("local").local
    found = resolve_address()
    assert (found.address, found.source) == ("10.0.0.5:6379", "running cluster")
    assert found.describe() == "cluster at 10.0.0.5:6379 (the cluster running on this node)"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6379")
    assert resolve_address().describe() == "cluster at 10.0.0.7:6379 (from RAY_ADDRESS)"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert resolve_address().describe() == "a new local Ray instance (RAY_ADDRESS=local)"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("ICT_JOIN_RUNNING_CLUSTER", "0")  # what the test suite sets (conftest.py)
    assert resolve_address().local
    monkeypatch.setenv("ICT_JOIN_RUNNING_CLUSTER", "1")
    monkeypatch.setattr(cluster, "running_cluster", lambda temp_dir=None: None)
    assert resolve_address().describe().startswith("a new local Ray instance (no --address, no RAY_ADDRESS")


def test_a_stale_record_of_a_dead_cluster_is_not_joined(tmp_path):
    # `ray start` records its cluster in Ray's temp dir; a cluster killed without `ray stop` leaves the record.
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:1")
    assert cluster.running_cluster(str(tmp_path)) is None
    assert cluster.running_cluster(str(tmp_path / "none")) is None


def test_gpu_trials_queue_on_an_autoscaling_cluster_whose_gpu_nodes_are_not_up_yet():
    # Today's search refused this ("the cluster has 8 CPU and 0 GPU") on a `ray up` head with no GPU node yet.
    res = trial_resources(4, 1, 1, _head_only())
    assert res["mode"] == "in-trial" and res["trial"] == {"cpu": 1, "gpu": 1}
    assert res["max_concurrent_trials"] == 4 and res["autoscaling"] and res["queue"]
    # Concurrency tracks what the node types can hold at full scale: 4 GPU nodes, 2 workers x 1 GPU per trial.
    res = trial_resources(8, 2, 1, _head_only())
    assert res["mode"] == "ray-train" and res["max_concurrent_trials"] == 2
    two = [dict(t) for t in GPU_TYPES]
    two[1]["max_count"] = 1
    assert trial_resources(8, 1, 1, _head_only(two))["max_concurrent_trials"] == 1


def test_a_trial_that_fits_no_node_type_is_refused_naming_the_types():
    with pytest.raises(ClusterError, match=r"1 CPU and 2 GPU on one node; no node of the cluster, and no node type "
                                           r"its autoscaler can add, has that: .*gpu_worker x4 \(8 CPU, 1 GPU\)"):
        trial_resources(4, 1, 2, _head_only())
    with pytest.raises(ClusterError, match=r"2 worker\(s\) x \(1 CPU, 2 GPU\)"):
        trial_resources(4, 2, 2, _head_only())
    # A node type whose resources the cloud decides (cluster.yaml's `resources: {}`) never refuses.
    unknown = [{"name": "gpu_worker", "CPU": None, "GPU": None, "max_count": 4}]
    assert trial_resources(4, 1, 2, _head_only(unknown))["max_concurrent_trials"] == 4


def test_fixed_cluster_behaves_as_before_and_max_concurrent_queues():
    fixed = ClusterShape(2.0, 0.0, [], nodes=[{"CPU": 2.0, "GPU": 0.0}])
    res = trial_resources(4, 1, 0, fixed)
    assert res["trial"] == {"cpu": 1} and res["max_concurrent_trials"] == 2 and not res["queue"]
    res = trial_resources(4, 2, 0, fixed, ray_train=True)
    assert res["cpus_per_trial"] == 0.99 and res["max_concurrent_trials"] == 1
    with pytest.raises(ClusterError, match="the cluster has: 2 CPU / 0 GPU now"):
        trial_resources(4, 1, 1, fixed)
    # An explicit --max-concurrent submits that many: the rest wait as resource demand.
    assert trial_resources(6, 1, 0, fixed, concurrency_given=True)["max_concurrent_trials"] == 6


def test_node_types_come_from_the_autoscaler_config(tmp_path):
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    path = tmp_path / "bootstrap.yaml"
    raw["available_node_types"]["gpu_worker"]["resources"] = {"CPU": 8, "GPU": 1}
    path.write_text(yaml.safe_dump(raw))
    types = {t["name"]: t for t in cluster._types_from_config(str(path))}
    assert types["gpu_worker"] == {"name": "gpu_worker", "CPU": 8.0, "GPU": 1.0,
                                   "max_count": raw["available_node_types"]["gpu_worker"]["max_workers"]}
    assert types[raw["head_node_type"]]["max_count"] == 1 and types[raw["head_node_type"]]["CPU"] is None


@pytest.mark.parametrize("argv, message", [
    (["tune/search.py", "--space", "c_scaling", "--max-failures", "-2"],
     "--max-failures must be an integer >= 0 (or -1: retry without limit), got -2"),
    (["tune/campaign.py", "--budget", "smoke", "--spaces", "c_scaling", "--max-failures", "-3"],
     "--max-failures must be an integer >= 0 (or -1: retry without limit), got -3"),
])
def test_bad_cluster_options_are_one_line_errors(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = _main(argv[0])([*argv[1:], "--dry-run"])  # the script's main() in this process
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1], err


def _main(script: str):
    from tune import campaign, search

    return {"tune/search.py": search.main, "tune/campaign.py": campaign.main}[script]


def test_dry_run_says_which_ray_it_would_use(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = _main("tune/search.py")(["--space", "c_scaling", "--dry-run", "--address", "10.1.2.3:6379", "--storage",
                                    str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "ray        would use cluster at 10.1.2.3:6379 (from --address)" in out.out
