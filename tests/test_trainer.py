"""The training loop on real digits: learning, exact resume, the NaN guard, fault injection and DDP rank roles."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ict_core import trainer
from ict_core.config import ConfigError, load_config, resolve_config
from ict_core.data import load_dataset
from ict_core.evaluate import Evaluator
from ict_core.objectives import build_objective
from ict_core.network import build_network
from ict_core.precision import check_compile
from ict_core.records import REPORT_KEYS
from ict_core.rundir import FAULT_MARKER, latest_checkpoint

REPO = Path(__file__).resolve().parent.parent


def tiny(cache_dir: str, *overrides: str):
    return load_config("tiny", [f"eval.cache_dir={cache_dir}", "train.num_threads=1", "eval.num_samples=100", *overrides])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _final_state(run_dir: Path) -> dict:
    return torch.load(latest_checkpoint(run_dir) / "state.pt", weights_only=False)


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape"):  # numpy RNG state
        assert (a == b).all(), where
    else:
        assert a == b, where


@pytest.mark.slow
def test_training_on_digits_lowers_feature_fd(cache_dir, tmp_path):
    cfg = tiny(cache_dir, "train.total_steps=200", "network.channels=16", "network.channel_mult=[1,2]",
               "optim.lr=1e-3", "eval.num_samples=200", "eval.every=0", "eval.grid=true")
    dataset = load_dataset(cfg.data, seed=cfg.train.seed)
    cfg_resolved = resolve_config(cfg, dataset.dim)
    torch.manual_seed(cfg.train.seed)  # the trainer's initial weights
    objective = build_objective(cfg_resolved, dataset.dim)
    initial_net = build_network(cfg_resolved.network, cfg_resolved.precond, objective.precond, dataset.channels,
                                dataset.resolution)
    evaluator = Evaluator(cfg_resolved.eval, cfg_resolved.train.seed, dataset, torch.device("cpu"), objective)
    initial = evaluator(initial_net, 0)

    reports = []
    summary = trainer.train(cfg, report=lambda m, c: reports.append((m, c)), run_dir=tmp_path)

    assert summary["status"] == "completed" and summary["step"] == 200
    assert summary["fd"] < 0.5 * initial["fd"], (initial["fd"], summary["fd"])
    assert summary["fd_2step"] < 0.5 * initial["fd_2step"]
    assert summary["loss_train"] < initial["loss_train"]
    assert [m["step"] for m, _ in reports] == [200]
    assert all(m["evaluated"] for m, _ in reports) and reports[-1][0]["status"] == "completed"
    assert set(REPORT_KEYS) <= set(reports[-1][0])
    assert all(Path(c, "state.pt").is_file() for _, c in reports[-1:])
    assert summary["nn_dist_ref"] > 0 and summary["nn_dist"] > 0
    # The run folder of the contract, with huber_c resolved to 0.00054 sqrt(64).
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["loss"]["huber_c"] == pytest.approx(0.00054 * 8)
    assert json.loads((tmp_path / "provenance.json").read_text())["world_size"] == 1
    assert [r["step"] for r in _rows(tmp_path / "evals.jsonl")] == [200]
    assert [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [50, 100, 150, 200]
    assert (tmp_path / "samples" / "step_0000200.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


class _Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_bitwise(cache_dir, tmp_path):
    """2000 steps == 1000 + crash + resume + 1000, bitwise on the CPU, with dropout on so its RNG must be restored.

    The exponential curriculum passes through every N(k) stage (11 ... 1281) on the way, and the resumed half
    starts mid-curriculum, so N(k) must come from the restored step.
    """
    overrides = ("train.total_steps=2000", "train.checkpoint_every=1000", "train.batch_size=16",
                 "train.log_every=500", "network.dropout=0.2", "train.keep_checkpoints=1")
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full_reports = []
    full = trainer.train(tiny(cache_dir, *overrides), report=lambda m, c: full_reports.append(m), run_dir=full_dir)

    def crash_after_first_checkpoint(metrics, checkpoint_dir):
        if metrics["step"] == 1000:
            raise _Crash

    with pytest.raises(_Crash):
        trainer.train(tiny(cache_dir, *overrides), report=crash_after_first_checkpoint, run_dir=split_dir)
    # Rows written after the checkpoint but before the crash, as a killed process would leave them.
    with (split_dir / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 1500, "loss": 0.0}) + "\n")
    resumed_reports = []
    resumed = trainer.train(tiny(cache_dir, *overrides), report=lambda m, c: resumed_reports.append(m),
                            resume_from=split_dir)

    assert resumed["run_dir"] == str(split_dir)
    a, b = _final_state(full_dir), _final_state(split_dir)
    for key in ("student", "ema", "optimizer", "batch_generator", "rng_per_rank", "step"):
        _assert_same_tensors(a[key], b[key], key)
    assert resumed["loss"] == full["loss"] and resumed["fd"] == full["fd"]
    assert [m["step"] for m in resumed_reports] == [2000]
    assert resumed_reports[0]["loss"] == full_reports[-1]["loss"]
    full_rows, split_rows = _rows(full_dir / "metrics.jsonl"), _rows(split_dir / "metrics.jsonl")
    assert [r["step"] for r in split_rows] == [500, 1000, 1500, 2000]
    assert [r["loss"] for r in split_rows] == [r["loss"] for r in full_rows]
    assert len(list((split_dir / "checkpoints").glob("step_*"))) == 1  # keep_checkpoints=1


def test_ct_ema_teacher_is_separate_from_the_evaluation_ema(cache_dir, tmp_path):
    cfg = tiny(cache_dir, "train.total_steps=30", "loss.teacher=ema", "curriculum.shape=sqrt", "curriculum.s0=2",
               "curriculum.s1=150", "train.ema_rate=0.5", "train.log_every=10")
    summary = trainer.train(cfg, run_dir=tmp_path)
    state = _final_state(tmp_path)
    assert summary["status"] == "completed"
    assert state["teacher"] is not None
    # Different rates (mu(k) ~ 0.9^(2/N) vs 0.5) give different averages of the same student trajectory.
    diffs = [(state["teacher"][k] - state["ema"][k]).abs().max().item() for k in state["ema"] if state["ema"][k].is_floating_point()]
    assert max(diffs) > 0
    no_teacher = trainer.train(tiny(cache_dir, "train.total_steps=5"), run_dir=tmp_path / "ict")
    assert _final_state(tmp_path / "ict")["teacher"] is None and no_teacher["status"] == "completed"


def test_non_finite_loss_stops_the_run_without_raising(cache_dir, tmp_path):
    reports = []
    summary = trainer.train(tiny(cache_dir, "optim.lr=1e6", "train.total_steps=200"),
                            report=lambda m, c: reports.append((m, c)), run_dir=tmp_path)
    assert summary["status"] == "diverged"
    assert 0 < summary["step"] < 200
    assert math.isnan(summary["loss"]) and math.isnan(summary["fd"])
    assert len(reports) == 1
    metrics, checkpoint = reports[0]
    assert metrics["status"] == "diverged" and checkpoint is None and math.isnan(metrics["loss"])
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ict_core.train", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


@pytest.mark.slow
def test_fault_marker_kills_once_and_a_restart_completes(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--preset", "tiny", "--out", str(run_dir), "--set", f"eval.cache_dir={cache_dir}",
            "--set", "train.fault_step=70", "--set", "train.checkpoint_every=50", "--set", "train.num_threads=1",
            "--set", "eval.num_samples=100", "--set", "train.total_steps=100", "--set", "train.log_every=25"]
    first = _cli(*args)
    assert first.returncode == 1, first.stderr
    assert (run_dir / FAULT_MARKER).is_file()
    assert [p.name for p in (run_dir / "checkpoints").glob("step_*")] == ["step_0000050"]
    assert [r["step"] for r in _rows(run_dir / "metrics.jsonl")] == [25, 50]

    second = _cli("--resume", str(run_dir))
    assert second.returncode == 0, second.stderr
    assert "injected fault" not in second.stdout
    assert [r["step"] for r in _rows(run_dir / "metrics.jsonl")] == [25, 50, 75, 100]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str, cache_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        reports = []
        cfg = tiny(cache_dir, "train.total_steps=20", "train.log_every=10", "eval.every=10")
        summary = trainer.train(cfg, report=lambda m, c: reports.append((m, c)), run_dir=Path(out_dir, f"rank{rank}"))
        torch.save({"summary": summary, "reports": reports}, Path(out_dir, f"result{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_match_one_rank_and_only_rank0_writes(cache_dir, tmp_path):
    """2 gloo ranks x 16 images equal 1 rank x 32 (dropout 0): the global batch's RNG is shared by the ranks."""
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), cache_dir), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in (0, 1))
    single = trainer.train(tiny(cache_dir, "train.total_steps=20", "train.log_every=10", "eval.every=10"),
                           run_dir=tmp_path / "single")

    assert [m["step"] for m, _ in r0["reports"]] == [m["step"] for m, _ in r1["reports"]] == [10, 20]
    for (m0, c0), (m1, c1) in zip(r0["reports"], r1["reports"]):
        assert {k: m0[k] for k in ("loss", "fd", "kid", "step")} == {k: m1[k] for k in ("loss", "fd", "kid", "step")}
        assert c0 is not None and c1 is None
    assert not any((tmp_path / "rank1").rglob("*.*")), "rank 1 must not write run files"
    assert (tmp_path / "rank0" / "summary.json").is_file()
    ddp_state = _final_state(tmp_path / "rank0")["student"]
    one_state = _final_state(tmp_path / "single")["student"]
    for key in one_state:
        torch.testing.assert_close(ddp_state[key], one_state[key], rtol=1e-4, atol=1e-5, msg=key)
    assert r0["summary"]["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert r0["summary"]["world_size"] == 2


def test_diffusion_objective_runs_with_heun_fd_and_no_two_step_fd(cache_dir, tmp_path):
    cfg = tiny(cache_dir, "loss.objective=diffusion", "loss.p_mean=-1.2", "loss.p_std=1.2", "train.total_steps=10",
               "eval.diffusion_steps=4")
    summary = trainer.train(cfg, run_dir=tmp_path)
    assert summary["status"] == "completed"
    assert math.isfinite(summary["fd"]) and math.isnan(summary["fd_2step"])
    assert summary["num_points"] == 0  # no curriculum for the diffusion objective


class _StopAtFirstReport(Exception):
    pass


def test_reported_num_points_is_that_of_the_steps_just_trained(cache_dir, tmp_path):
    # K = 16 gives K' = 2: steps 0-1 train with N = 11, steps 2-3 with N = 21. The report at step 2 covers steps
    # 0-1, so it must say 11, as metrics.jsonl does, not the N(k) of the step that comes next.
    cfg = tiny(cache_dir, "train.total_steps=16", "train.checkpoint_every=2", "train.log_every=2", "eval.every=0",
               "train.batch_size=4")
    reports = []

    def report(metrics, checkpoint_dir):
        reports.append(metrics)
        raise _StopAtFirstReport  # before the final evaluation: only the step-2 report is needed

    with pytest.raises(_StopAtFirstReport):
        trainer.train(cfg, report=report, run_dir=tmp_path)
    logged = _rows(tmp_path / "metrics.jsonl")
    assert reports[0]["step"] == 2 and logged[0]["step"] == 2
    assert logged[0]["num_points"] == 11
    assert reports[0]["num_points"] == 11


def test_evaluations_record_the_students_fd_and_the_fd_standard_error(cache_dir, tmp_path):
    # ema_rate=0: the evaluation EMA is the student itself, so both FDs come from one network and the same noise.
    same = trainer.train(tiny(cache_dir, "train.total_steps=20", "eval.every=10", "train.ema_rate=0"),
                         run_dir=tmp_path / "same")
    rows = _rows(tmp_path / "same" / "evals.jsonl")
    assert [r["step"] for r in rows] == [10, 20]
    for row in rows:
        assert row["fd_student"] == row["fd"] and 0 < row["fd_se"] < row["fd"]
    summary = json.loads((tmp_path / "same" / "summary.json").read_text())
    assert summary["fd_student"] == summary["fd"] == same["fd"] and summary["fd_se"] == rows[-1]["fd_se"]
    # A slow EMA lags the student: the two FDs differ, and fd stays the EMA's.
    lagged = trainer.train(tiny(cache_dir, "train.total_steps=20", "train.ema_rate=0.999", "train.ema_rampup=0.5"),
                           run_dir=tmp_path / "lagged")
    assert lagged["fd_student"] == same["fd_student"] and lagged["fd"] != lagged["fd_student"]
    assert set(REPORT_KEYS) >= {"fd_student", "fd_se"}


def test_compile_with_dropout_is_refused_before_training(cache_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train.compile=true needs network.dropout=0.*got network.dropout=0.1"):
        trainer.train(tiny(cache_dir, "train.compile=true", "network.dropout=0.1"), run_dir=tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
    check_compile(True, 0.0, build_objective(tiny(cache_dir), 64))
    check_compile(True, 0.1, build_objective(tiny(cache_dir, "loss.objective=diffusion"), 64))
