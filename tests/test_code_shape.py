"""How the code reads (issue 18): the modules split by job stay under ~400 lines, and no function of analysis/ or
of the tune/ modules listed here runs over 60 lines of code (its docstring not counted) unless its docstring says
why ("Long because ..."). tune/search.py and the modules split out of it are checked by their own issue.
Parses the source only: nothing is imported or run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400
MAX_FUNCTION = 60
REASON = "Long because"
SPLIT_BY_JOB = ["tune/space.py", "tune/space_schema.py", "tune/strata.py", "tune/startup.py", "analysis/report.py",
                "analysis/report_parts.py", "analysis/report_questions.py", "analysis/report_sections.py", "analysis/report_answers.py",
                "analysis/selection.py", "analysis/stats.py", "analysis/curve_minimum.py", "ict_core/metrics.py",
                "ict_core/featnet.py", "ict_core/image_grids.py", "ict_core/data.py",
                "ict_core/data_types.py", "ict_core/batches.py", "ict_core/photo_patches.py", "tune/designer.py",
                "tune/design_plan.py", "tune/store.py", "tune/inputs.py", "tune/experiment_folder.py", "tune/tee.py",
                "tune/ray_train.py", "tune/launch_plan.py", "tune/train_worker.py"]
CHECKED = sorted({*(str(p.relative_to(ROOT)) for p in (ROOT / "analysis").glob("*.py")), *SPLIT_BY_JOB,
                  *(f"tune/{name}.py" for name in ("trial", "progress", "campaign", "designer", "store", "ray_train",
                                                   "results", "rounds", "findings", "searcher"))})


def long_functions(source: str, limit: int = MAX_FUNCTION) -> list[str]:
    """'name: N lines' of each function over `limit` lines of code (docstring not counted) whose docstring does
    not say why it is long."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        lines = node.end_lineno - node.lineno + 1
        doc = ast.get_docstring(node, clean=False)
        if doc is not None:
            lines -= node.body[0].end_lineno - node.body[0].lineno + 1
        if lines > limit and REASON not in (doc or ""):
            out.append(f"{node.name}: {lines} lines")
    return out


def test_the_check_finds_a_long_function_and_accepts_a_reason():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))  # with its def line: one too many
    assert long_functions(f"def f():\n    '''Doc.'''\n{body}\n") == [f"f: {MAX_FUNCTION + 1} lines"]
    assert long_functions(f"def f():\n    '''{REASON} one table is built row by row.'''\n{body}\n") == []
    assert long_functions("def f():\n    '''Doc\n" + "\n" * 80 + "'''\n    return 1\n") == []


@pytest.mark.parametrize("path", CHECKED)
def test_no_function_is_long_without_a_reason(path):
    assert long_functions((ROOT / path).read_text()) == []


@pytest.mark.parametrize("path", SPLIT_BY_JOB)
def test_modules_split_by_job_stay_short(path):
    assert len((ROOT / path).read_text().splitlines()) <= MAX_LINES
