"""docs/ARCHITECTURE.md stays true: the floors import only downwards, every module is in the map, and the facts it
states that code can check (run_ray_train's parameters, the keys a run reports) are the code's."""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "ARCHITECTURE.md").read_text()
# Floors, lowest first: a package imports only packages on floors below its own.
FLOORS = ("ict_core", "analysis", "tune", "benchmarks")
# Imports that run back up, inside a function only (never at import time), each named in the document.
LAZY_UPWARD = {("analysis", "tune.store")}


def _modules():
    for package in FLOORS:
        for path in sorted((REPO / package).rglob("*.py")):
            yield package, path


def _imports(path: Path):
    """(module imported, at module level?) for every absolute import of the file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name, id(node) in top


def test_each_floor_imports_only_the_floors_below_it():
    upward, lazy = [], set()
    for package, path in _modules():
        floor = FLOORS.index(package)
        for name, at_top in _imports(path):
            root = name.split(".")[0]
            if package == "ict_core":
                assert root not in ("ray", "optuna"), f"{path.relative_to(REPO)} imports {name}: ict_core is pure PyTorch"
            if root in FLOORS and FLOORS.index(root) > floor:
                if at_top:
                    upward.append(f"{path.relative_to(REPO)} imports {name}")
                else:
                    lazy.add((package, name))
    assert not upward, upward
    assert lazy <= LAZY_UPWARD, lazy - LAZY_UPWARD
    for package, name in LAZY_UPWARD:
        assert name in DOC, f"the document must name the one upward import {package} -> {name}"


def test_every_module_is_in_the_map():
    missing = []
    for package, path in _modules():
        if path.name == "__init__.py" and path.parent.name == package:
            continue
        rel = path.relative_to(REPO / package)
        # A module is named as a file (`trainer.py`, `ict_core/trainer.py`, or under a folder: `cli/train.py`) or,
        # when it is (or may become) a package, as a folder (`cli/`): both name the same import, ict_core.cli.
        module = rel.parent if path.name == "__init__.py" else rel.with_suffix("")
        names = [f"{module}/"] + ([] if path.name == "__init__.py" else [str(rel)])
        if not any(re.search(rf"`(?:[\w/]*/)?{re.escape(n)}`", DOC) for n in names):
            missing.append(f"{package}/{rel}")
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"


def test_run_ray_train_signature_is_the_documented_one():
    from tune.ray_train import run_ray_train

    line = next(l for l in DOC.splitlines() if "run_ray_train(" in l and "cfg" in l)
    documented = re.findall(r"(\w+)(?:: [^,=)]+)?(?: ?= ?[^,)]+)?[,)]", line[line.index("run_ray_train(") + 14:])
    assert documented == list(inspect.signature(run_ray_train).parameters), line


def test_the_documented_report_keys_are_the_trainers():
    from ict_core.records import REPORT_KEYS

    block = DOC[DOC.index("<!-- report keys -->"):DOC.index("<!-- /report keys -->")]
    assert re.findall(r"`(\w+)`", block) == list(REPORT_KEYS)
