"""A run's life as a user sees it: folders that cannot be clobbered, a real Ctrl-C or SIGTERM that leaves a
checkpoint and a resume command, TensorBoard events, the sample grid and KID's reported scale."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ict_core import image_grids, metrics, rundir, trainer
from ict_core.cli import train as cli
from ict_core.cli import command
from ict_core.config import load_config

REPO = Path(__file__).resolve().parent.parent


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- run folders -----------------------------------------------------------------------------------------------

def test_out_into_an_existing_run_is_refused_and_leaves_it_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000100").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    before = sorted(p.name for p in run.rglob("*"))
    assert cli.main(["--preset", "tiny", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"--out {run} already holds a run (config.json, checkpoints)" in err
    assert f"--resume {run}" in err and "another --out folder" in err
    assert sorted(p.name for p in run.rglob("*")) == before
    # An empty folder, or one holding unrelated files, is fine: the dry run goes through the same check.
    (tmp_path / "empty").mkdir()
    assert cli.main(["--preset", "tiny", "--out", str(tmp_path / "empty"), "--dry-run"]) == 0
    assert cli.main(["--preset", "tiny", "--out", str(run), "--dry-run"]) == 2


def test_resume_of_a_missing_folder_says_so(tmp_path, capsys):
    assert cli.main(["--resume", str(tmp_path / "nope")]) == 2
    assert f"--resume {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["--resume", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_list_presets_describes_each_preset(capsys):
    assert cli.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "digits            The main CPU job: 8x8 scikit-learn digits" in out
    assert "tiny              Smallest useful run" in out


# ---- signals, with a real process and a real signal -------------------------------------------------------------

def _start(run: Path, cache_dir: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--preset", "tiny", "--out", str(run), "--set", f"eval.cache_dir={cache_dir}", "--set", "train.num_threads=1",
            "--set", "train.total_steps=100000", "--set", "train.log_every=5", "--set", "train.batch_size=8",
            "--set", "eval.num_samples=20", "--set", "eval.grid=true", *extra]
    return subprocess.Popen([sys.executable, "-m", "ict_core.train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def _wait_for_training(proc: subprocess.Popen, timeout: float = 300) -> list[str]:
    """Read stdout until the first logged step: the signal handlers are in place by then."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "[ict] step " in line:
            return lines
    proc.kill()
    pytest.fail("training never logged a step:\n" + "".join(lines) + proc.stderr.read())


def _row(out: str, name: str) -> str:
    """The value of one row of the end-of-run message ("  samples      runs/x/samples/step_0000100.png")."""
    match = re.search(rf"^  {name} +(.+)$", out, re.M)
    assert match, (name, out)
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_writes_a_checkpoint_an_interrupted_summary_and_the_resume_command(sig, code, cache_dir, tmp_path,
                                                                                   capsys):
    run = tmp_path / "run"
    proc = _start(run, cache_dir)
    _wait_for_training(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == sig.name
    step = summary["step"]
    assert 5 <= step < 100000
    # With checkpoint_every 0 and no evaluation yet, the checkpoint of the interrupted step is the only one.
    assert rundir.latest_checkpoint(run).name == f"step_{step:07d}"
    state = torch.load(rundir.latest_checkpoint(run) / "state.pt", weights_only=False)
    assert state["step"] == step and state["images_seen"] == 8 * step
    assert f"[ict] interrupted by {sig.name} at step {step}/100000" in out
    assert _row(out, "resume") == f"{cli.train_command()} --resume {run}"
    if sig != signal.SIGINT:
        return
    # The printed command continues the run (here with a nearer end, which also runs the final evaluation).
    # In this process: the signal above is what needed a real one.
    capsys.readouterr()
    code = cli.main(["--resume", str(run), "--set", f"train.total_steps={step + 3}"])
    out, err = capsys.readouterr()
    resumed = subprocess.CompletedProcess([], code, out, err)
    assert resumed.returncode == 0, resumed.stderr
    assert f"steps {step}->{step + 3}" in resumed.stdout
    final = json.loads((run / "summary.json").read_text())
    assert final["status"] == "completed" and final["step"] == step + 3
    sample = run / "samples" / f"step_{step + 3:07d}.png"
    assert _row(resumed.stdout, "samples") == str(sample) and sample.is_file()
    assert _row(resumed.stdout, "checkpoint") == str(run / "checkpoints" / f"step_{step + 3:07d}")
    assert _row(resumed.stdout, "tensorboard") == f"{command('tensorboard')} --logdir {run}"
    assert (_row(resumed.stdout, "train longer")
            == f"{cli.train_command()} --resume {run} --set train.total_steps={2 * (step + 3)}")


@pytest.mark.slow
def test_two_quick_ctrl_cs_exit_130_without_a_traceback(cache_dir, tmp_path):
    proc = _start(tmp_path / "run", cache_dir)
    _wait_for_training(proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out


# ---- TensorBoard ---------------------------------------------------------------------------------------------

def test_tensorboard_events_track_the_logged_and_evaluated_values(cache_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("tiny", [f"eval.cache_dir={cache_dir}", "train.num_threads=1", "eval.num_samples=20",
                               "train.total_steps=6", "train.log_every=2", "eval.every=3", "train.batch_size=8",
                               "eval.grid=true"])
    trainer.train(cfg, run_dir=tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/num_points", "train/images_per_s", "train/lr"} <= tags
    assert {"eval/fd", "eval/fd_2step", "eval/kid", "eval/loss_train", "eval/loss_heldout"} <= tags
    logged = _rows(tmp_path / "metrics.jsonl")
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in logged] == [2, 4, 6]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [e.value for e in events.Scalars("train/num_points")] == [r["num_points"] for r in logged]
    evaluated = _rows(tmp_path / "evals.jsonl")
    fd = events.Scalars("eval/fd")
    assert [e.step for e in fd] == [r["step"] for r in evaluated] == [3, 6]
    assert [e.value for e in fd] == pytest.approx([r["fd"] for r in evaluated], rel=1e-6)
    assert [e.step for e in events.Images("samples")] == [3, 6]


# ---- sample grids -----------------------------------------------------------------------------------------------

def test_sample_grid_is_upscaled_padded_and_shows_labelled_panels_side_by_side(tmp_path):
    one = -torch.ones(64, 1, 8, 8)  # black
    two = torch.ones(64, 1, 8, 8)  # white
    path = image_grids.save_sample_grid({"1 step": one, "2 steps": two}, tmp_path / "grid.png", title="step 5")
    with Image.open(path) as png:
        array = np.asarray(png)
    assert array.ndim == 3 and array.shape[2] == 3
    # 8 images of 8 px per row, upscaled 4x to 32 px: each panel is 8*32 + 7*2 = 270 px wide.
    scale, side = 4, 8 * 32 + 7 * image_grids.GRID_PAD
    assert array.shape[1] == 2 * side + 3 * image_grids.GRID_MARGIN and side >= image_grids.GRID_MIN_SIDE
    top = image_grids.GRID_MARGIN + 2 * image_grids.GRID_LABEL_HEIGHT
    left1, left2 = image_grids.GRID_MARGIN, 2 * image_grids.GRID_MARGIN + side
    assert np.all(array[top:top + 8 * scale, left1:left1 + 8 * scale] == 0)  # first image of panel 1
    assert np.all(array[top:top + 8 * scale, left2:left2 + 8 * scale] == 255)  # first image of panel 2
    pad_column = array[top:top + side, left1 + 8 * scale:left1 + 8 * scale + image_grids.GRID_PAD]
    assert np.all(pad_column == image_grids.GRID_PAD_VALUE)  # light padding between black digits
    assert (array[:top] < 128).any()  # the labels are drawn
    with pytest.raises(ValueError, match="panel 'x'"):
        image_grids.save_sample_grid({"x": torch.zeros(3, 8, 8)}, tmp_path / "bad.png")


# ---- KID's reported scale ---------------------------------------------------------------------------------------

def test_reported_kid_is_1e3_times_kid_on_rms_normalised_features():
    rng = np.random.default_rng(0)
    ref = rng.normal(3.0, 1.0, size=(400, 16))
    same = rng.normal(3.0, 1.0, size=(400, 16))
    shifted = rng.normal(3.5, 1.0, size=(400, 16))
    rms = np.sqrt(np.mean(ref ** 2))
    expected = 1e3 * metrics.kid(shifted / rms, ref / rms, num_subsets=5, subset_size=200)
    assert metrics.kid_reported(shifted, ref, num_subsets=5, subset_size=200) == pytest.approx(expected, rel=1e-12)
    # The activation scale of the feature network drops out; raw KID grows with its cube.
    assert metrics.kid_reported(1e3 * shifted, 1e3 * ref, 5, 200) == pytest.approx(expected, rel=1e-9)
    assert metrics.kid(1e3 * shifted, 1e3 * ref, 5, 200) > 1e6 * metrics.kid(shifted, ref, 5, 200)
    # It tracks the distance between the distributions.
    near = metrics.kid_reported(same, ref, 5, 200)
    assert abs(near) < 0.1 * expected
    assert metrics.kid_reported(rng.normal(4.0, 1.0, size=(400, 16)), ref, 5, 200) > expected


# ---- the end-of-run message -------------------------------------------------------------------------------------

def _planted_run(path: Path, steps: list[int], samples: list[int]) -> Path:
    for step in steps:
        (path / "checkpoints" / f"step_{step:07d}").mkdir(parents=True)
        (path / "checkpoints" / f"step_{step:07d}" / "state.pt").write_bytes(b"")
    (path / "samples").mkdir(parents=True, exist_ok=True)
    for step in samples:
        (path / "samples" / f"step_{step:07d}.png").write_bytes(b"")
    return path


def test_end_message_points_at_the_newest_files_and_the_command_that_continues(tmp_path):
    run = _planted_run(tmp_path / "run", [500, 1000], [500, 1000])
    done = cli.end_message({"status": "completed", "step": 1000, "total_steps": 1000, "fd": 18.8, "fd_2step": 12.0,
                            "kid": 3.1, "best_fd": 18.8, "wall_s": 63.0, "run_dir": str(run)})
    assert done.splitlines()[0] == "[ict] completed 1000 steps in 63 s: fd 18.8, fd_2step 12, kid(x1e3) 3.1, best fd 18.8"
    assert _row(done, "samples") == str(run / "samples" / "step_0001000.png")
    assert _row(done, "checkpoint") == str(run / "checkpoints" / "step_0001000")
    assert _row(done, "train longer") == f"{cli.train_command()} --resume {run} --set train.total_steps=2000"

    run = _planted_run(tmp_path / "has space", [300], [])
    diverged = cli.end_message({"status": "diverged", "step": 340, "total_steps": 1000, "run_dir": str(run)})
    assert diverged.splitlines()[0] == "[ict] diverged at step 340/1000: the loss became non-finite"
    assert _row(diverged, "samples").startswith("none")
    assert _row(diverged, "retry") == (f"{cli.train_command()} --resume '{run / 'checkpoints' / 'step_0000300'}' "
                                       f"--set optim.lr=<lower>")
