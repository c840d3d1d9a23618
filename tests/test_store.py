"""tune/store.py: one store for run folders, tables and reports, on a local path, a file:// URI and a real
S3-compatible server on localhost (moto's server mode, started here on a free port and stopped after)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tune.inputs import fetch_input, localize_inputs
from tune.store import FolderSync, Store, StoreError

BUCKET = "ict-test"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_folder(local: Path, steps=(1, 2)) -> None:
    (local / "samples").mkdir(parents=True, exist_ok=True)
    (local / "samples" / "step_1.png").write_bytes(b"png")
    (local / "metrics.jsonl").write_text('{"step": 1}\n')
    for step in steps:
        ckpt = local / "checkpoints" / f"step_{step:07d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "state.pt").write_bytes(b"x" * step)


def _bump(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)
    stat = path.stat()  # a new mtime even on a coarse clock
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def check_sync_rules(root: str, remote_dir) -> None:
    """Push copies only what changed, prunes the checkpoints the trainer pruned, and a pull on another node gets
    the run folder back; `remote_dir(rel)` lists what storage holds."""
    import tempfile

    store = Store(root)
    local = Path(tempfile.mkdtemp(prefix="ict-sync-"))
    try:
        _run_folder(local)
        (local / ".tmp-half.json").write_text("{")  # a file being written: never copied
        sync = FolderSync(store, "exp/runs/s/t/seed_0", local)
        first = sync.push()
        assert sorted(first) == ["checkpoints/step_0000001/state.pt", "checkpoints/step_0000002/state.pt",
                                 "metrics.jsonl", "samples/step_1.png"]
        assert sync.push() == []  # nothing changed: nothing copied (RunStore re-copied every file each report)
        _bump(local / "metrics.jsonl", '{"step": 2}\n')
        shutil.rmtree(local / "checkpoints" / "step_0000001")  # the trainer's retention
        (local / "checkpoints" / "step_0000003").mkdir()
        (local / "checkpoints" / "step_0000003" / "state.pt").write_bytes(b"x" * 3)
        assert sorted(sync.push()) == ["checkpoints/step_0000003/state.pt", "metrics.jsonl"]
        held = remote_dir("exp/runs/s/t/seed_0")
        assert sorted(k for k in held if k.startswith("checkpoints/")) == [
            "checkpoints/step_0000002/state.pt", "checkpoints/step_0000003/state.pt"]
        assert ".tmp-half.json" not in held
        # A restart on another node: the working copy holds what storage has, checkpoints included.
        other = store.working_copy("exp/runs/s/t/seed_0", local=local.parent / (local.name + "-other"))
        assert _tree(other.local) == {k: v for k, v in _tree(local).items() if not k.startswith(".tmp")}
        assert other.push() == []  # what was pulled is not sent back
        # The Ray Train path: checkpoints stay with Ray, in both directions.
        no_ckpt = FolderSync(store, "exp/ray/run", local, checkpoints=False)
        assert "checkpoints/step_0000002/state.pt" not in no_ckpt.push()
        assert not any(k.startswith("checkpoints/") for k in remote_dir("exp/ray/run"))
        shutil.rmtree(other.local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def test_folder_sync_on_a_file_uri(tmp_path):
    bucket = tmp_path / "bucket"
    check_sync_rules("file://" + str(bucket), lambda rel: _tree(bucket / rel))


def test_local_root_is_written_in_place(tmp_path):
    store = Store(tmp_path / "exp")
    sync = store.working_copy("runs/a")
    assert sync.local == tmp_path / "exp" / "runs" / "a"
    _run_folder(sync.local)
    assert sync.push() == [] and sync.pull() == []


def test_fetch_input_caches_a_folder_and_a_file_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ICT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "bucket" / "data" / "cifar"
    (src / "sub").mkdir(parents=True)
    (src / "data_batch_1").write_bytes(b"abc")
    (src / "sub" / "meta").write_bytes(b"m")
    (tmp_path / "bucket" / "weights.pth").write_bytes(b"w" * 5)
    uri = "file://" + str(tmp_path / "bucket")
    local = Path(fetch_input(uri + "/data/cifar"))
    assert _tree(local) == {"data_batch_1": b"abc", "sub/meta": b"m"}
    assert str(local).startswith(str(tmp_path / "cache"))
    (src / "data_batch_1").write_bytes(b"changed")
    assert Path(fetch_input(uri + "/data/cifar")) == local and (local / "data_batch_1").read_bytes() == b"abc"
    assert Path(fetch_input(uri + "/weights.pth")).read_bytes() == b"w" * 5
    with pytest.raises(StoreError, match="does not exist in storage"):
        fetch_input(uri + "/nothing-here")

    from ict_core.config import load_config

    cfg = localize_inputs(load_config("tiny", {"data.name": "cifar10", "data.path": uri + "/data/cifar",
                                               "eval.inception_path": uri + "/weights.pth"}))
    assert cfg.data.path == str(local) and Path(cfg.eval.inception_path).read_bytes() == b"w" * 5


def test_plan_resolves_input_paths_on_the_driver(tmp_path, monkeypatch):
    """A relative data.path names the driver's folder, not each trial's working directory."""
    from tune.plan import resolve_plan

    monkeypatch.chdir(tmp_path)
    plan = resolve_plan("dropout", "smoke", extra={"data.path": "data/cifar-10-batches-py",
                                                   "eval.inception_path": "~/w.pth"})
    for stratum in plan.strata:
        assert stratum.fixed["data.path"] == str(tmp_path / "data" / "cifar-10-batches-py")
        assert stratum.fixed["eval.inception_path"] == str(Path("~/w.pth").expanduser())
    uri = resolve_plan("dropout", "smoke", extra={"data.path": "s3://b/cifar"})
    assert all(s.fixed["data.path"] == "s3://b/cifar" for s in uri.strata)


def test_dry_run_checks_inputs_where_trials_read_them(tmp_path, capsys, monkeypatch):
    """--dry-run looks a URI up in storage and a path on this machine, and names what is missing."""
    from tune import search

    bucket = tmp_path / "bucket"
    (bucket / "cifar").mkdir(parents=True)
    space = tmp_path / "c10.yaml"
    space.write_text("name: c10\nfixed: {data.name: cifar10, eval.features: dataset}\nsearch: {algorithm: grid}\n"
                     "points:\n  - {loss.huber_c: 0.01}\nseeds: 1\n")
    monkeypatch.chdir(tmp_path)
    base = ["--space", str(space), "--dry-run", "--storage", str(tmp_path / "results")]
    assert search.main([*base, "--set", f"data.path=file://{bucket}/cifar"]) == 0
    assert search.main([*base, "--set", f"data.path=file://{bucket}/missing"]) == 2
    assert f"data.path='file://{bucket}/missing' does not exist in storage" in capsys.readouterr().err
    assert search.main([*base, "--set", "data.path=not/here"]) == 2
    assert f"data.path={str(tmp_path / 'not' / 'here')!r} does not exist on this machine" in capsys.readouterr().err


# ---- a real S3-compatible server on localhost ---------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server in its own process on a free port; the environment points pyarrow (and Ray) at it the
    way a user points them at any non-AWS endpoint: AWS_ENDPOINT_URL plus credentials."""
    pytest.importorskip("moto")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start")
                time.sleep(0.2)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _s3_tree(prefix: str) -> dict[str, int]:
    return Store(prefix).files()


def test_folder_sync_on_s3(s3_server):
    check_sync_rules(f"{s3_server}/sync", lambda rel: _s3_tree(f"{s3_server}/sync/{rel}"))


def test_a_missing_bucket_is_one_clear_line(s3_server, capsys):
    from tune import search

    assert search.main(["--space", "dropout", "--storage", "s3://no-such-bucket/x", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--storage 's3://no-such-bucket/x' cannot be used" in err and "'no-such-bucket' does not exist" in err


# A tiny U-Net on a CIFAR-10 folder in the python format (a few random images, tests/test_data.write_cifar) that
# lies in the bucket: each trial reads it from its node's cache.
TINY = """name: s3grid
fixed: {{data.name: cifar10, data.path: "{data}", eval.features: dataset,
        network.channels: 8, network.channel_mult: [1], network.dropout: 0.0,
        train.total_steps: 10, train.batch_size: 32, optim.lr: 1.0e-3, train.ema_rate: 0.9,
        train.log_every: 1000, train.checkpoint_every: 4, train.keep_checkpoints: 1, eval.every: 10,
        eval.num_samples: 100, eval.grid: false, eval.cache_dir: "{cache}"}}
search: {{algorithm: grid}}
metric: fd
mode: min
seeds: 1
max_concurrent: 2
points:
  - {{loss.huber_c: 0.01}}
"""


@pytest.fixture(scope="module")
def local_ray(s3_server, tmp_path_factory):
    """One local Ray for the searches below, started after the server so that its workers see AWS_ENDPOINT_URL,
    and with the node cache (ICT_CACHE) in a temporary folder; yields that folder."""
    import ray

    from tune.cluster import pythonpath_env

    cache = tmp_path_factory.mktemp("node-cache")
    old = os.environ.get("ICT_CACHE")
    os.environ.update({**pythonpath_env(), "ICT_CACHE": str(cache)})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield cache
    ray.shutdown()
    if old is None:
        os.environ.pop("ICT_CACHE", None)
    else:
        os.environ["ICT_CACHE"] = old


@pytest.mark.slow
def test_campaign_and_search_on_s3_resume_and_report(s3_server, local_ray, tmp_path):
    """`--storage s3://...`: a campaign puts campaign.json and its report, and its search the run folders,
    Parquet tables, ledgers and experiment.json, in the bucket; the trials read their data set from the bucket
    through the node cache; a resume on a machine without the local copy reads everything back from the bucket;
    analysis/report.py reads the bucket and stores its report there."""
    from analysis import report
    from test_data import write_cifar
    from tune import campaign, search

    data = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=40)
    for path in data.iterdir():
        Store(f"{s3_server}/data/cifar-10-batches-py").put_file(path, path.name)
    space = tmp_path / "s3grid.yaml"
    space.write_text(TINY.format(cache=tmp_path.parent / "featnet-cache",
                                 data=f"{s3_server}/data/cifar-10-batches-py"))
    storage = f"{s3_server}/searches"
    assert campaign.main(["--budget", "smoke", "--spaces", str(space), "--storage", storage, "--name", "c"]) == 0
    exp = f"{storage}/c/s3grid"
    held = _s3_tree(exp)
    for name in ("trials.parquet", "evals.parquet", "experiment.json"):
        assert name in held
    assert any(k.startswith("strata/") for k in held)
    trials = pd.read_parquet(f"{exp}/trials.parquet")  # pandas reads the bucket through pyarrow
    assert len(trials) == 1 and set(trials["status"]) == {"completed"}
    for run_dir in trials["run_dir"]:
        files = {k for k in held if k.startswith(run_dir + "/")}
        assert {f"{run_dir}/summary.json", f"{run_dir}/config.json", f"{run_dir}/evals.jsonl"} <= files
        # retention: the trainer keeps one checkpoint, and so does the bucket
        assert len({k.split("/")[-2] for k in files if "/checkpoints/step_" in k}) == 1
        # the trial trained on the node's copy of the bucket's data set
        config = json.loads(Store(exp).read_text(f"{run_dir}/config.json"))
        assert config["data"]["path"].startswith(str(local_ray / "inputs"))
        assert sorted(p.name for p in Path(config["data"]["path"]).iterdir()) == sorted(p.name for p in data.iterdir())
    assert any(k.startswith("ray/") for k in held)  # Tune's state, for a resume
    info = json.loads(Store(exp).read_text("experiment.json"))
    assert info["status"] == "finished" and info["experiment_dir"] == exp
    state = json.loads(Store(f"{storage}/c").read_text("campaign.json"))
    assert state["searches"]["s3grid"]["state"] == "done" and state.get("finished")
    assert "1 runs from 1 experiment folder" in (Store(f"{storage}/c").read_text("report/report.md") or "")

    # The driver's machine is gone: no local copy. The resume finds everything in the bucket.
    shutil.rmtree(local_ray / "experiments")
    args = ["--space", str(space), "--storage", f"{storage}/c", "--name", "s3grid"]
    assert search.main(args) == 2  # exists: refuses to start over it
    assert search.main([*args, "--resume"]) == 0
    again = pd.read_parquet(f"{exp}/trials.parquet")
    assert sorted(again["run_key"]) == sorted(trials["run_key"])  # nothing trained or written twice

    assert report.main([exp, "--n-boot", "10", "--no-journal"]) == 0
    assert "1 runs from 1 experiment folder" in (Store(exp).read_text("report/report.md") or "")
