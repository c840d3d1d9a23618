"""A resume tells the truth: the curriculum N(k) keeps its schedule when train.total_steps changes (and the "train
longer" hint does what it says), TensorBoard holds every logged point exactly once, files honour the umask."""
from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

import pytest

from ict_core import schedule, trainer
from ict_core.cli import train as cli
from ict_core.config import load_config

TINY = ["train.num_threads=1", "eval.num_samples=20", "train.batch_size=8", "train.log_every=1", "eval.grid=true",
        "train.keep_checkpoints=5"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _num_points(run: Path) -> dict[int, int]:
    return {r["step"]: r["num_points"] for r in _rows(run / "metrics.jsonl")}


def test_train_longer_keeps_the_curriculum_and_an_explicit_k_stretches_it(cache_dir, tmp_path, capsys):
    """N(k) under the steps already trained never changes on a resume; the "train longer" hint continues the
    final N(k); only an explicit train.curriculum_steps changes the schedule, and says so."""
    run = tmp_path / "run"
    sets = [f"--set={s}" for s in TINY + [f"eval.cache_dir={cache_dir}", "train.total_steps=8", "eval.every=4",
                                          "curriculum.s0=2", "curriculum.s1=64"]]
    assert cli.main(["--preset", "tiny", "--out", str(run)] + sets) == 0
    out = capsys.readouterr().out
    first = _num_points(run)
    assert first == {k: schedule.num_points(k - 1, 8, "exponential", 2, 64) for k in range(1, 9)}
    assert first[8] == 65  # the schedule reached s1 + 1 at the end

    # The printed hint, run as printed (minus the program name): it must train longer on the same schedule.
    hint = next(line for line in out.splitlines() if line.strip().startswith("train longer"))
    argv = shlex.split(hint.split("train longer", 1)[1])
    assert argv[-1] == "train.total_steps=16"
    assert cli.main(argv[argv.index("--resume"):]) == 0
    out = capsys.readouterr().out
    assert "the curriculum keeps its K = 8 steps" in out and "--set train.curriculum_steps=16" in out
    longer = _num_points(run)
    assert sorted(longer) == list(range(1, 17))
    assert {k: longer[k] for k in first} == first
    assert all(longer[k] == 65 for k in range(9, 17)), longer  # the final N(k) continues; no jump, no drop

    # From a mid-run checkpoint (step 4) with a longer run: steps 5..8 repeat the original N(k) exactly.
    mid = tmp_path / "mid"
    assert cli.main(["--resume", str(run / "checkpoints" / "step_0000004"), "--out", str(mid),
                     "--set", "train.total_steps=12"]) == 0
    resumed = _num_points(mid)
    assert [resumed[k] for k in range(5, 9)] == [first[k] for k in range(5, 9)]
    assert json.loads((mid / "config.json").read_text())["train"]["curriculum_steps"] == 8

    # An explicit K stretches the schedule from the checkpoint on, and the run says so.
    stretched = tmp_path / "stretched"
    capsys.readouterr()
    assert cli.main(["--resume", str(run / "checkpoints" / "step_0000004"), "--out", str(stretched),
                     "--set", "train.total_steps=12", "--set", "train.curriculum_steps=12"]) == 0
    assert "changes the curriculum's K from 8" in capsys.readouterr().out
    got = _num_points(stretched)
    assert [got[k] for k in range(5, 13)] == [schedule.num_points(k - 1, 12, "exponential", 2, 64)
                                              for k in range(5, 13)]


def test_tensorboard_after_a_resume_holds_every_logged_point_once(cache_dir, tmp_path):
    """Resume from a checkpoint older than the last logged step: the events past it are replaced, those at and
    before it kept, so each step appears once with the value metrics.jsonl / evals.jsonl hold."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("tiny", TINY + [f"eval.cache_dir={cache_dir}", "train.total_steps=6", "eval.every=3"])
    trainer.train(cfg, run_dir=tmp_path)
    trainer.train(cfg, run_dir=tmp_path, resume_from=tmp_path / "checkpoints" / "step_0000003")
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    logged, evaluated = _rows(tmp_path / "metrics.jsonl"), _rows(tmp_path / "evals.jsonl")
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    fd = events.Scalars("eval/fd")
    assert [e.step for e in fd] == [r["step"] for r in evaluated] == [3, 6]
    assert [e.value for e in fd] == pytest.approx([r["fd"] for r in evaluated], rel=1e-6)
    assert [e.step for e in events.Images("samples")] == [3, 6]


def test_every_file_of_a_run_and_of_ict_sample_honours_the_umask(cache_dir, tmp_path):
    """config.json, summary.json, provenance.json, meta.json, the sample grid and ict-sample's output were written
    through mkstemp's 0600; every file now gets the mode an open() gives under the user's umask, as the jsonl do."""
    from ict_core.cli import sample

    old = os.umask(0o002)
    try:
        run = tmp_path / "run"
        trainer.train(load_config("tiny", TINY + [f"eval.cache_dir={cache_dir}", "train.total_steps=2"]), run_dir=run)
        assert sample.main([str(run), "--num", "4", "--out", str(tmp_path / "s.npz"), "--grid",
                            str(tmp_path / "s.png")]) == 0
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()] + [tmp_path / "s.npz", tmp_path / "s.png"]
    names = {p.name for p in files}
    assert {"config.json", "summary.json", "provenance.json", "metrics.jsonl", "meta.json", "s.npz"} <= names
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o664"}, modes
