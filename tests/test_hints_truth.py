"""What a user types and reads outside the repository: every printed next command works from the folder the user
is in, and the small errors and outputs say what they mean (a misspelt space, a budget the space does not define,
a resume of a folder that is no run, YAML errors, ict-score on a run folder, ict-sample's grid, the dry-run's
compute and time)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ict_core.cli import sample, score
from ict_core.cli import train as cli
from tune import search
from tune.space import load_space
from tune.space_schema import SpaceError

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained by the ict-train console script from a folder outside the repository, with a PATH that
    does not hold the venv (not activated): (folder it ran in, run folder, stdout)."""
    if not (BIN / "ict-train").exists():
        pytest.skip("the console scripts are not installed (./setup.sh installs them)")
    home = tmp_path_factory.mktemp("user")
    cache = tmp_path_factory.mktemp("cache")
    sets = ["train.num_threads=1", "eval.num_samples=20", "train.batch_size=8", "train.total_steps=4",
            "train.log_every=2", f"eval.cache_dir={cache}"]
    proc = subprocess.run([str(BIN / "ict-train"), "--preset", "tiny", "--out", "run",
                           *sum((["--set", s] for s in sets), [])], cwd=home, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return home, home / "run", proc.stdout


def _hint(out: str, name: str) -> str:
    return next(l for l in out.splitlines() if l.strip().startswith(name)).strip()[len(name):].strip()


@pytest.mark.slow
def test_every_printed_command_of_a_run_works_from_the_users_folder(trained):
    home, run, out = trained
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    for name in ("tensorboard", "train longer"):
        argv = shlex.split(_hint(out, name))
        assert "python -m" not in _hint(out, name) and Path(argv[0]).is_absolute() and Path(argv[0]).is_file()
    assert shlex.split(_hint(out, "tensorboard"))[1:] == ["--logdir", "run"]
    watch = next(l for l in out.splitlines() if "watch it:" in l)
    assert Path(shlex.split(watch.split("watch it:", 1)[1])[0]).is_file()
    longer = subprocess.run(_hint(out, "train longer"), shell=True, cwd=home, capture_output=True, text=True,
                            timeout=300, env=env)
    assert longer.returncode == 0, longer.stdout[-2000:] + longer.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["step"] == 8


@pytest.mark.slow
def test_ict_score_takes_a_run_folder_and_ict_sample_writes_a_labelled_upscaled_grid(trained, tmp_path, capsys):
    _, run, _ = trained
    assert sample.main([str(run), "--num", "16", "--out", str(tmp_path / "x.npz"), "--grid",
                        str(tmp_path / "x.png")]) == 0
    with Image.open(tmp_path / "x.png") as grid:
        assert grid.mode == "RGB" and grid.width >= 256  # was 73 x 73 px: 8 px digits, unscaled
        pixels = np.asarray(grid)
    assert (pixels[:16] < 128).any()  # a label above the panel
    capsys.readouterr()
    assert score.main([str(tmp_path / "x.npz"), "--run", str(run)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"].startswith("digits") and result["num_images"] == 16 and result["fd"] >= 0
    assert score.main([str(tmp_path / "x.npz"), "--run", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_no_run_names_the_flag(tmp_path, capsys):
    (tmp_path / "samples_out").mkdir()
    assert cli.main(["--resume", str(tmp_path / "samples_out")]) == 2
    err = capsys.readouterr().err
    assert f"--resume '{tmp_path / 'samples_out'}' holds no checkpoint" in err and "resume_from" not in err


def test_a_misspelt_space_gets_did_you_mean_and_an_undefined_budget_names_the_defined_ones(tmp_path, capsys):
    assert search.main(["--space", "dropuot", "--dry-run"]) == 2
    assert "did you mean 'dropout'?" in capsys.readouterr().err
    own = tmp_path / "own.yaml"
    own.write_text("name: own\nparams:\n  loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}\n"
                   "budgets:\n  smoke: {num_samples: 1}\n")
    assert search.main(["--space", str(own), "--budget", "cpu", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "budget 'cpu' is not defined" in err and "it defines smoke" in err and str(own) in err
    assert search.main(["--space", str(own), "--budget", "smoke", "--dry-run", "--no-timing"]) == 0
    # A space without a budgets section runs any budget with the space's own settings.
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\nparams:\n  loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}\n")
    assert load_space(bare).plan("cpu").budget == "cpu"


def test_yaml_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nparams: {loss.huber_c: {type: loguniform\n")
    with pytest.raises(SpaceError) as info:
        load_space(broken)
    assert "<unicode string>" not in str(info.value) and f'in "{broken}"' in str(info.value)
    assert cli.main(["--preset", str(broken), "--dry-run"]) == 2


def test_search_dry_run_prints_the_compute_and_a_time_with_its_basis(tmp_path, capsys):
    own = tmp_path / "own.yaml"
    own.write_text("name: own\nfixed: {data.name: digits, network.channels: 8, network.channel_mult: [1], "
                   "train.total_steps: 40, train.batch_size: 16, eval.every: 20}\nseeds: 2\n"
                   "params:\n  loss.huber_c: {type: loguniform, low: 0.001, high: 0.1}\n"
                   "budgets:\n  smoke: {num_samples: 3}\n")
    assert search.main(["--space", str(own), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "compute all: 6 run(s) x 40 steps = 3,840 images" in out, out
    assert "ms/step measured here (" in out and "load average" in out and "-> about" in out
    assert "search: 1 stratum(s), 6 runs, 3,840 images, about" in out
    assert search.main(["--space", str(own), "--dry-run", "--no-timing"]) == 0
    out = capsys.readouterr().out
    assert "time not measured (--no-timing)" in out and "6 runs, 3,840 images, time not measured" in out
