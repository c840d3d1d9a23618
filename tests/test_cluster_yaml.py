"""cluster.yaml is checked offline with Ray's own launcher validation (no AWS call: prepare_config only merges the
provider's defaults, validate_config checks the JSON schema and the node types)."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

ray_util = pytest.importorskip("ray.autoscaler._private.util", reason="needs ray[default]")

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict) -> dict:
    prepared = ray_util.prepare_config(copy.deepcopy(config))
    ray_util.validate_config(prepared)
    # Ray checks only the sum of min_workers against the global max_workers; `ray up` would otherwise accept a
    # node type whose minimum exceeds its own maximum.
    for name, node_type in prepared["available_node_types"].items():
        if node_type["min_workers"] > node_type["max_workers"]:
            raise ValueError(f"{name}: min_workers {node_type['min_workers']} > max_workers {node_type['max_workers']}")
    return prepared


def test_cluster_yaml_passes_ray_validation(raw):
    prepared = _validate(raw)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert "GPU" not in head["resources"] and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1
    assert gpu[0]["node_config"]["InstanceType"].startswith(("g5", "g6", "p4", "p5"))
    assert prepared["idle_timeout_minutes"] > 0


def test_cluster_yaml_security_and_setup(raw):
    rules = raw["provider"]["security_group"]["IpPermissions"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules] == [("tcp", 22, 22)]
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "--head" in start
    setup = " ".join(raw["setup_commands"])
    assert "pip install" in setup and "-e ." in setup and "torch" in setup
    assert "s3://CHANGE-ME-bucket/" in setup, "the bucket placeholder the user must set"
    assert "ICT_CODE_ON_NODES=1" in setup  # tune.ray_train then does not ship the repo as working_dir
    assert "-c constraints.txt" in setup  # the tested versions
    tested_torch = re.search(r"TORCH_SPEC:-(torch==[^}]+)}", (CLUSTER_YAML.parent / "setup.sh").read_text()).group(1)
    assert f"pip install -q {tested_torch}" in setup  # PyPI's Linux wheel is the CUDA build
    assert raw["file_mounts"] == {"~/ict": "."}
    text = CLUSTER_YAML.read_text()
    for secret_like in ("aws_access_key_id", "aws_secret_access_key", "arn:aws:iam::"):
        assert secret_like not in text.lower()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("misspelt top-level key", "'idle_timout_minutes' was unexpected"),
        ("min_workers > max_workers", "gpu_worker: min_workers 3 > max_workers 1"),
        ("min_workers above the global max_workers", "global `max_workers` is smaller than the sum of `min_workers`"),
        ("unknown head_node_type", "`head_node_type` must be one of"),
        ("string where a number belongs", "'four' is not of type 'integer'"),
    ],
)
def test_broken_copies_fail_validation(raw, breakage, message):
    broken = copy.deepcopy(raw)
    gpu = broken["available_node_types"]["gpu_worker"]
    if breakage == "misspelt top-level key":
        broken["idle_timout_minutes"] = broken.pop("idle_timeout_minutes")
    elif breakage == "min_workers > max_workers":
        gpu["min_workers"], gpu["max_workers"] = 3, 1
    elif breakage == "min_workers above the global max_workers":
        gpu["min_workers"] = gpu["max_workers"] = broken["max_workers"] + 1
    elif breakage == "unknown head_node_type":
        broken["head_node_type"] = "hed"
    else:
        broken["max_workers"] = "four"
    import jsonschema

    with pytest.raises((ValueError, jsonschema.ValidationError), match=re.escape(message)):
        _validate(broken)


def _pinned(package: str) -> str:
    text = (CLUSTER_YAML.parent / "constraints.txt").read_text()
    return re.search(rf"^{package}(?:\[[^\]]*\])?==([^\s;]+)", text, re.M).group(1)


def test_cluster_yaml_would_come_up(raw):
    # A pinned image with CUDA: Ray's own GPU image of the pinned Ray version, on a current NVIDIA-driver AMI (Ray's
    # default AMI is the old DLAMI V71, CUDA 11.2), the same on every node type.
    assert raw["docker"]["image"] == f"rayproject/ray:{_pinned('ray')}-py311-gpu"
    types = raw["available_node_types"]
    images = {t["node_config"].get("ImageId") for t in types.values()}
    assert len(images) == 1 and next(iter(images)).startswith("resolve:ssm:/aws/service/deeplearning/ami/")
    assert "base-oss-nvidia-driver-gpu" in next(iter(images))
    # Workers reach S3 without iam:PassRole trouble: one profile for all nodes (whose role may pass itself),
    # not Ray's ray-autoscaler-v1, which only the head gets by default.
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for t in types.values()}
    assert profiles == {"ict-ray-node"} and "iam:PassRole" in CLUSTER_YAML.read_text()


def test_head_environment_has_what_the_readme_commands_need(raw):
    # ~/ict_env.sh on the head: the bucket, this cluster's address and token auth for drivers; `ray start` itself
    # runs without RAY_ADDRESS/RAY_AUTH_MODE (a head must not try to join, and must create its own token).
    setup = " ".join(raw["setup_commands"] + raw["head_setup_commands"])
    for needed in ("ICT_STORAGE=s3://", "ICT_CODE_ON_NODES=1", "RAY_ADDRESS=", ":6379", "RAY_AUTH_MODE=token"):
        assert needed in setup, needed
    assert "RAY_ADDRESS" not in " ".join(raw["setup_commands"])  # the workers' environment never points anywhere
    start = " ".join(raw["head_start_ray_commands"])
    assert "env -u RAY_ADDRESS -u RAY_AUTH_MODE ray start --head" in start
    readme = (CLUSTER_YAML.parent / "README.md").read_text()
    assert "ray rsync-down cluster.yaml" in readme
