"""`python -m ict_core.cli.sample` and `python -m ict_core.cli.score` on a run folder made by a real short training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ict_core.cli import sample, score
from ict_core.config import load_config
from ict_core.data import load_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(tiny_run):
    """The session's tiny run folder (tests/conftest.py) and its feature-network cache."""
    return tiny_run


def _cli(capsys, main, *args: str) -> tuple[int, str]:
    """A command line's main() in this process: (exit code, stdout)."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def test_sample_writes_images_in_range_and_score_reads_them(run, tmp_path, capsys):
    run_dir, cache = run
    out, grid = tmp_path / "s.npz", tmp_path / "s.png"
    code, stdout = _cli(capsys, sample.main, str(run_dir), "--num", "300", "--steps", "2", "--seed", "3", "--out",
                        str(out), "--grid", str(grid))
    assert code == 0
    assert json.loads(stdout.splitlines()[-1])["num"] == 300
    with np.load(out) as archive:
        images = archive["images"]
    assert images.shape == (300, 1, 8, 8) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0
    assert grid.stat().st_size > 0
    code, stdout = _cli(capsys, score.main, str(out), "--preset", "tiny", "--set", f"eval.cache_dir={cache}")
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert {"fd", "fd_se", "kid", "nn_dist"} <= result.keys()
    assert result["fd"] > 0 and 0 < result["fd_se"] < result["fd"] and result["nn_dist"] > 0


def test_sampling_is_seeded_and_weights_differ(run, tmp_path, capsys):
    run_dir, _ = run
    paths = {}
    for name, args in {"a": ["--seed", "1"], "b": ["--seed", "1"], "c": ["--seed", "2"],
                       "student": ["--seed", "1", "--weights", "student"]}.items():
        paths[name] = tmp_path / f"{name}.npz"
        assert sample.main([str(run_dir), "--num", "16", "--out", str(paths[name]), *args]) == 0
    load = {k: np.load(p)["images"] for k, p in paths.items()}
    assert np.array_equal(load["a"], load["b"]) and not np.array_equal(load["a"], load["c"])
    assert not np.array_equal(load["a"], load["student"])  # the EMA is not the raw student


def test_score_ranks_real_images_above_noise(run, tmp_path, capsys):
    _, cache = run
    cfg = load_config("tiny", [f"eval.cache_dir={cache}"])
    held = load_dataset(cfg.data).heldout.numpy()
    noise = np.random.default_rng(0).uniform(-1, 1, size=held.shape).astype(np.float32)
    results = {}
    for name, images in (("real", held), ("noise", noise)):
        np.savez(tmp_path / f"{name}.npz", images=images)
        assert score.main([str(tmp_path / f"{name}.npz"), "--preset", "tiny", "--set", f"eval.cache_dir={cache}"]) == 0
        results[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["real"]["fd"] + 3 * results["real"]["fd_se"] < results["noise"]["fd"]
    assert results["real"]["nn_dist"] < results["noise"]["nn_dist"]


@pytest.mark.parametrize("args, message", [
    (["RUN", "--num", "0", "--out", "x.npz"], "--num must be >= 1, got 0"),
    (["RUN", "--num", "4", "--steps", "3", "--out", "x.npz"], "--steps must be 1 or 2, got 3"),
    (["RUN", "--num", "4", "--out", "x.txt"], "--out must name a .npz file"),
    (["NOWHERE", "--num", "4", "--out", "x.npz"], "does not exist"),
    (["EMPTY", "--num", "4", "--out", "x.npz"], "holds no checkpoint"),
])
def test_sample_bad_input_exits_2_with_a_message(run, tmp_path, capsys, args, message):
    run_dir, _ = run
    (tmp_path / "empty").mkdir()
    names = {"RUN": str(run_dir), "NOWHERE": str(tmp_path / "nowhere"), "EMPTY": str(tmp_path / "empty")}
    args = [names.get(a, a) if a in names else (str(tmp_path / a) if a.startswith("x.") else a) for a in args]
    assert sample.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    ({"pictures": np.zeros((4, 1, 8, 8), np.float32)}, "has no 'images' array"),
    ({"images": np.zeros((4, 8, 8), np.float32)}, "must be N x C x H x W"),
    ({"images": np.full((4, 1, 8, 8), 2.0, np.float32)}, "must lie in [-1, 1]"),
    ({"images": np.zeros((4, 1, 8, 8), np.uint8)}, "must be float"),
    ({"images": np.zeros((4, 3, 16, 16), np.float32)}, "but digits-8 has (1, 8, 8)"),
])
def test_score_bad_input_exits_2_with_a_message(run, tmp_path, capsys, content, message):
    _, cache = run
    path = tmp_path / "in.npz"
    if content is not None:
        np.savez(path, **content)
    assert score.main([str(path), "--preset", "tiny", "--set", f"eval.cache_dir={cache}"]) == 2
    assert message in capsys.readouterr().err
    assert score.main([str(path), "--preset", "tiny", "--set", "eval.nonsense=1"]) == 2
