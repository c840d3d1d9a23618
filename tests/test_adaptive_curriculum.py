"""The adaptive curriculum inside real training runs: N(k) follows the loss, resumes bitwise, agrees across ranks."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from ict_core import trainer
from ict_core.config import load_config

ADAPTIVE = ("curriculum.shape=adaptive", "curriculum.adaptive_every=7", "curriculum.adaptive_window=3",
            "curriculum.adaptive_patience=2")


def tiny(cache_dir: str, *overrides: str):
    return load_config("tiny", [f"eval.cache_dir={cache_dir}", "train.num_threads=1", "eval.num_samples=100",
                                *overrides])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _state(run_dir: Path) -> dict:
    return torch.load(trainer.latest_checkpoint(run_dir) / "state.pt", weights_only=False)


@pytest.mark.slow
def test_n_doubles_where_the_loss_stalls_and_stays_where_it_falls(cache_dir, tmp_path):
    """threshold 1.0: no window of ln(loss) drops by 1.0, so every test stalls and N doubles every
    (window + patience - 1) x every = 28 steps; threshold -1.0: nothing counts as stalled, N stays s0 + 1.
    With 0.05 the real loss decides, and the first stage lasts longer (the loss was still falling)."""
    common = (*ADAPTIVE, "train.total_steps=120", "train.batch_size=16", "train.log_every=4")
    runs = {}
    for threshold in ("1.0", "-1.0", "0.05"):
        run_dir = tmp_path / threshold
        trainer.train(tiny(cache_dir, *common, f"curriculum.adaptive_threshold={threshold}"), run_dir=run_dir)
        runs[threshold] = (_state(run_dir)["curriculum"], _rows(run_dir / "metrics.jsonl"))
    always, _ = runs["1.0"]
    assert always["stage_starts"] == [0, 28, 56, 84, 112]
    never, never_rows = runs["-1.0"]
    assert never["stage_starts"] == [0] and {r["num_points"] for r in never_rows} == {11}
    real, real_rows = runs["0.05"]
    assert real["stage_starts"][1] > 28 and len(real["stage_starts"]) >= 3
    # The logged N(k) of the steps (step - 4, step] is that of the stage holding step - 1.
    for row in real_rows:
        stage = sum(1 for start in real["stage_starts"] if start <= row["step"] - 1) - 1
        assert row["num_points"] == 10 * 2**stage + 1, row


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["doublings", "window"])
def test_adaptive_resume_is_bitwise(cache_dir, tmp_path, variant):
    """120 steps == 50 + crash + resume + 70. The checkpoint at step 50 falls between two observations
    (every 7 steps), so the partial loss sum and the window must come back exactly. "doublings": the real loss
    decides when N doubles (threshold 0.05), before and after the crash. "window": nothing stalls and the window
    (20 observations) keeps every observed mean, the one at step 56 (half of it before the crash) included."""
    tail = ("curriculum.adaptive_threshold=0.05",) if variant == "doublings" else \
        ("curriculum.adaptive_threshold=-1.0", "curriculum.adaptive_window=20")
    overrides = (*ADAPTIVE, *tail, "train.total_steps=120", "train.batch_size=16", "train.log_every=10",
                 "train.checkpoint_every=50", "network.dropout=0.2", "train.keep_checkpoints=1")

    class Crash(Exception):
        pass

    def crash(metrics, checkpoint_dir):
        if metrics["step"] == 50:
            raise Crash

    full = trainer.train(tiny(cache_dir, *overrides), run_dir=tmp_path / "full")
    with pytest.raises(Crash):
        trainer.train(tiny(cache_dir, *overrides), report=crash, run_dir=tmp_path / "split")
    mid = _state(tmp_path / "split")["curriculum"]
    assert mid["pending_count"] == 50 % 7 and mid["pending_sum"] > 0
    resumed = trainer.train(tiny(cache_dir, *overrides), resume_from=tmp_path / "split")

    a, b = _state(tmp_path / "full"), _state(tmp_path / "split")
    assert a["curriculum"] == b["curriculum"]
    if variant == "doublings":
        assert any(start > 50 for start in a["curriculum"]["stage_starts"]), a["curriculum"]
    else:
        assert a["curriculum"]["stage_starts"] == [0] and len(a["curriculum"]["recent"]) == 120 // 7
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key
    assert resumed["loss"] == full["loss"] and resumed["num_points"] == full["num_points"]
    assert [r["loss"] for r in _rows(tmp_path / "split" / "metrics.jsonl")] == \
        [r["loss"] for r in _rows(tmp_path / "full" / "metrics.jsonl")]


def test_resume_of_a_fixed_curriculum_checkpoint_into_an_adaptive_run_is_refused(cache_dir, tmp_path):
    base = ("train.total_steps=20", "train.batch_size=8", "train.checkpoint_every=10")
    trainer.train(tiny(cache_dir, *base), run_dir=tmp_path)
    with pytest.raises(ValueError, match="no adaptive curriculum state"):
        trainer.train(tiny(cache_dir, *base, *ADAPTIVE, "train.total_steps=30"), resume_from=tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str, cache_dir: str, overrides: tuple) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        reports = []
        trainer.train(tiny(cache_dir, *overrides), report=lambda m, c: reports.append(m["num_points"]),
                      run_dir=Path(out_dir, f"rank{rank}"))
        torch.save(reports, Path(out_dir, f"result{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_adaptive_n_is_the_same_on_every_rank_and_as_one_process(cache_dir, tmp_path):
    """Each rank trains on its half of the batch and sees its own loss; the curriculum is fed the all-reduced
    mean, so both ranks change N at the same steps, and as a single process with the whole batch does."""
    overrides = (*ADAPTIVE, "curriculum.adaptive_threshold=0.05", "train.total_steps=84", "train.batch_size=16",
                 "train.log_every=7", "train.checkpoint_every=7")
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), cache_dir, overrides), nprocs=2,
                                join=True)
    n0, n1 = (torch.load(tmp_path / f"result{r}.pt") for r in (0, 1))
    single = []
    trainer.train(tiny(cache_dir, *overrides), report=lambda m, c: single.append(m["num_points"]),
                  run_dir=tmp_path / "single")
    assert n0 == n1 == single
    assert len(set(single)) >= 2, single  # N changed during the run
