"""`python -m ict_core.train`: dry runs, preset listing, and exit code 2 with a clear message for bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from ict_core import train as cli
from ict_core.config import from_dict, list_presets, load_config

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ict_core.train", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def test_dry_run_prints_the_resolved_config_as_yaml():
    result = _run("--preset", "cifar10", "--set", "loss.huber_c=0.03", "--set", "train.total_steps=10", "--dry-run")
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
                assert spec is None, f"{path} shadows the module {path.stem} ({spec.origin})"
