"""`python -m ict_core.train`: dry runs, preset listing, and exit code 2 with a clear message for bad input (one test
in a real `python -m` process for the exit code; the rest call main() in this process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ict_core.cli import train as cli
from ict_core.config import from_dict, list_presets, load_config

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ict_core.train", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def _main(capsys, monkeypatch, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """cli.main(args) in this process, from the folder `cwd`, with what a subprocess would give back."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def _cifar10_files(root: Path) -> Path:
    """The files the cifar10 preset names (relative to the working directory), which --dry-run checks exist."""
    cfg = load_config("cifar10")
    (root / cfg.data.path).mkdir(parents=True)
    (root / cfg.eval.inception_path).write_bytes(b"")
    return root


def test_dry_run_prints_the_resolved_config_as_yaml(tmp_path, capsys, monkeypatch):
    result = _main(capsys, monkeypatch, "--preset", "cifar10", "--set", "loss.huber_c=0.03", "--set", "train.total_steps=10", "--dry-run",
                  cwd=_cifar10_files(tmp_path))
    assert result.returncode == 0, result.stderr
    printed = from_dict(yaml.safe_load(result.stdout))
    assert printed == load_config("cifar10", ["loss.huber_c=0.03", "train.total_steps=10"])
    assert printed.network.channels == 128


def test_bad_set_exits_2_with_the_message_and_no_traceback():
    result = _run("--preset", "tiny", "--set", "network.dropout=1.5", "--dry-run")
    assert result.returncode == 2
    assert "network.dropout must be in [0.0, 1.0), got 1.5" in result.stderr
    assert "Traceback" not in result.stderr


def test_errors_in_process(capsys, tmp_path):
    assert cli.main(["--preset", "tiny", "--set", "loss.hubr_c=1", "--dry-run"]) == 2
    assert "unknown config key 'loss.hubr_c'" in capsys.readouterr().err
    assert cli.main(["--preset", "nope", "--dry-run"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert cli.main(["--resume", str(tmp_path)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert cli.main(["--preset", "tiny", "--set", "data.name=cifar10", "--set", "data.path=/nonexistent", "--out",
                     str(tmp_path / "run")]) == 2
    assert "/nonexistent" in capsys.readouterr().err


def test_list_presets_and_json_dry_run(capsys):
    assert cli.main(["--list-presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line and not line.startswith(" ")]
    assert listed[:-1] == list_presets()  # then one line on how to use them
    assert cli.main(["--preset", "digits", "--dry-run", "--format", "json"]) == 0
    assert from_dict(json.loads(capsys.readouterr().out)) == load_config("digits")


def test_every_entry_point_is_a_console_script_that_resolves():
    import importlib
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"ict-train", "ict-train-ray", "ict-search", "ict-campaign", "ict-report", "ict-sample",
                            "ict-score"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_script_folders_hold_no_module_that_could_shadow_an_import():
    """`python tune/search.py` puts tune/ first on sys.path. The scripts edit no sys.path, which is safe only while
    no file beside them has the name of an importable top-level module (a `tune/ray.py` would break Ray)."""
    import importlib.util

    for folder in ("tune", "analysis"):
        for path in (REPO / folder).glob("*.py"):
            if path.stem != "__init__":
                spec = importlib.util.find_spec(path.stem)
                # A bare folder of that name on sys.path (e.g. the searches' default ./results output) is a
                # namespace package that nothing imports, not a module the script could hide.
                is_module = spec is not None and spec.origin is not None
                assert not is_module, f"{path} shadows the module {path.stem} ({spec.origin})"


def test_dry_run_exits_2_naming_a_data_path_that_does_not_exist(tmp_path, capsys, monkeypatch):
    result = _main(capsys, monkeypatch, "--preset", "cifar10", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.path='data/cifar-10-batches-py' does not exist" in result.stderr
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    result = _main(capsys, monkeypatch, "--preset", "cifar10", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2 and "eval.inception_path=" in result.stderr and "is not a file" in result.stderr
    assert _main(capsys, monkeypatch, "--preset", "digits", "--dry-run", cwd=tmp_path).returncode == 0


def test_search_campaign_and_ray_train_refuse_an_unwritable_storage_with_exit_2(tmp_path, capsys):
    from tune import campaign, search
    from tune import train as ray_train_cli

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # /sys refuses new folders even to root; a read-only folder refuses them to anyone else.
    target = (locked if not os.access(locked, os.W_OK) else Path("/sys")) / "results"
    try:
        for main, args in ((search.main, ["--space", "c_scaling"]), (campaign.main, ["--budget", "smoke", "--spaces", "c_scaling"]),
                           (ray_train_cli.main, ["--preset", "tiny"])):
            assert main([*args, "--dry-run", "--storage", str(target)]) == 2
            err = capsys.readouterr().err
            assert f"--storage {str(target)!r} cannot be created" in err and "Traceback" not in err, err
    finally:
        locked.chmod(0o700)
    (tmp_path / "file").write_text("")
    assert search.main(["--space", "c_scaling", "--dry-run", "--storage", str(tmp_path / "file" / "x")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert search.main(["--space", "c_scaling", "--dry-run", "--no-timing", "--storage", str(tmp_path / "new" / "x")]) == 0
    assert not (tmp_path / "new").exists()


def test_search_and_campaign_dry_runs_exit_2_naming_a_missing_data_path(tmp_path, monkeypatch, capsys):
    from tune import campaign, search

    monkeypatch.setenv("ICT_CIFAR10_PATH", str(tmp_path / "no-such-folder"))
    assert search.main(["--space", "c_scaling", "--dry-run", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "stratum cifar10" in err and "no-such-folder" in err and "does not exist" in err
    assert campaign.main(["--budget", "smoke", "--spaces", "c_scaling", "--dry-run", "--no-timing",
                          "--storage", str(tmp_path)]) == 2
    assert "no-such-folder" in capsys.readouterr().err
    (tmp_path / "no-such-folder").mkdir()
    assert search.main(["--space", "c_scaling", "--dry-run", "--no-timing", "--storage", str(tmp_path)]) == 0


def test_command_lines_live_under_ict_core_cli_and_errors_in_their_own_module():
    """Names say what a file is: the command lines are ict_core/cli/*, the library beside them keeps library
    names (no sample.py beside sampling.py), ict_core/train.py only runs the training command line, and the
    errors every layer raises live in ict_core/errors.py, which imports nothing of the project."""
    import ast

    from ict_core import errors

    core = REPO / "ict_core"
    assert {p.stem for p in (core / "cli").glob("*.py")} >= {"__init__", "train", "sample", "score"}
    assert not (core / "sample.py").exists() and not (core / "score.py").exists() and not (core / "cli.py").exists()
    entry = ast.parse((core / "train.py").read_text()).body
    assert [type(node) for node in entry] == [ast.Expr, ast.If]  # the docstring, then `if __name__ == "__main__"`
    assert issubclass(errors.ConfigError, errors.BadInput) and issubclass(errors.BadInput, ValueError)
    imports = [n for n in ast.walk(ast.parse((core / "errors.py").read_text())) if isinstance(n, ast.ImportFrom)]
    assert [n.module for n in imports] == ["__future__"]
    assert cli.main.__module__ == "ict_core.cli.train"
