"""Export a finished campaign's evidence into a folder meant for the repository (e.g. docs/findings/cpu).

    python tune/campaign.py --budget cpu --resume --export docs/findings/cpu

What is copied, per search: trials.parquet, evals.parquet, its Optuna journal (live or rebuilt studies), its
experiment.json and stratum ledgers; for the campaign: campaign.json and the whole report folder (report.md, PNGs,
CSVs, sample grids). Run folders (checkpoints, logs) stay behind. Every absolute path of this machine in the
copied files (the campaign folder, the repository) is rewritten relative, so nothing names a machine's folders;
a copied text file that still holds one afterwards makes the export fail. README.md in the folder is generated:
the command, commit and time of every session that ran the campaign, the wall time of each search, the machine,
and the budget preset's text. Nothing in the folder is edited by hand; rerun the export to refresh it.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ict_core.fileio import atomic_write_text
from ict_core.records import EVALS_FILE, JOURNAL_FILE, TRIALS_FILE
from tune import REPO_ROOT

EXPERIMENT_FILES = (TRIALS_FILE, EVALS_FILE, JOURNAL_FILE, "experiment.json")
TEXT_SUFFIXES = {".md", ".csv", ".json", ".log", ".txt", ".yaml"}


class ExportError(RuntimeError):
    pass


def _replacements(campaign_dir: Path) -> list[tuple[str, str]]:
    """(absolute prefix, relative text) pairs, longest first: the campaign folder, then the repository."""
    pairs = [(str(campaign_dir) + os.sep, ""), (str(campaign_dir), "."), (str(REPO_ROOT) + os.sep, ""),
             (str(REPO_ROOT), ".")]
    real = campaign_dir.resolve()
    if real != campaign_dir:
        pairs = [(str(real) + os.sep, ""), (str(real), ".")] + pairs
    return pairs


def _scrub_text(text: str, pairs) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def _scrub_parquet(src: Path, dest: Path, pairs) -> None:
    table = pq.read_table(src)
    columns = []
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for old, new in pairs:
                column = pc.replace_substring(column, old, new)
        columns.append(column)
    out = pa.Table.from_arrays(columns, schema=table.schema)
    tmp = dest.with_name(dest.name + ".tmp")
    pq.write_table(out, tmp)
    os.replace(tmp, dest)


def _copy(src: Path, dest: Path, pairs) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".parquet":
        _scrub_parquet(src, dest, pairs)
    elif src.suffix in TEXT_SUFFIXES:
        atomic_write_text(dest, _scrub_text(src.read_text(), pairs))
    else:
        shutil.copyfile(src, dest)


def _leaks(folder: Path, pairs) -> list[str]:
    """Copied text files that still name an absolute prefix of this machine."""
    prefixes = {old.rstrip(os.sep) for old, _ in pairs}
    bad = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="replace")
            bad += [f"{path.relative_to(folder)} names {p}" for p in prefixes if p in text]
    return bad


def hours_text(seconds: float) -> str:
    """"0.48 h", or minutes below 6 minutes; "?" when unknown."""
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def readme(state: dict, budget_text: str) -> str:
    """The folder's README.md: where the files came from (commands, commits) and what each search cost."""
    lines = [f"# Findings: campaign at the `{state['budget']}` budget\n",
             "Produced by `tune/campaign.py` and exported by its `--export`; no file here is edited by hand. "
             "The answers, verdicts and plots are in [report/report.md](report/report.md).\n",
             *([f"Scale: the `{state['budget']}` budget trains small networks for few steps on small images (its preset "
                "is below). An answer the report calls inconclusive is one this scale could not settle; the `gpu` "
                "and `paper` budgets run the same spaces at larger scale.\n"] if state["budget"] in ("smoke", "cpu")
              else []),
             "## How it was produced\n",
             "| session started (UTC) | command | commit | local changes | searches still to run |",
             "|---|---|---|---|---|"]
    for s in state.get("sessions", []):
        dirty = {True: "yes", False: "no"}.get(s.get("git_dirty"), "unknown")
        lines.append(f"| {s.get('started', '?')} | `{s.get('command', '?')}` | `{s.get('git_commit') or '?'}` | "
                     f"{dirty} | {', '.join(s.get('pending', [])) or 'none (report only)'} |")
    lines += ["", "## Wall time per search\n", "| search | state | wall time | started | finished |",
              "|---|---|---|---|---|"]
    total = 0.0
    order = [n for n in state.get("order", []) if n in state["searches"]]
    for name in order + sorted(n for n in state["searches"] if n not in order):
        entry = state["searches"][name]
        total += float(entry.get("wall_s", 0.0))
        lines.append(f"| {name} | {entry.get('state')} | {hours_text(float(entry.get('wall_s', 0.0)))} | "
                     f"{entry.get('started', '')} | {entry.get('finished', '')} |")
    lines.append(f"| all | | {hours_text(total)} | {state.get('created', '')} | {state.get('finished', '')} |")
    lines += ["", f"Machine: {os.cpu_count()} CPU core(s), {platform.machine()}, {platform.system()}; "
              "one torch thread per trial, two trials at a time unless the plan says otherwise.\n",
              f"## The `{state['budget']}` budget preset (tune/budgets/{state['budget']}.yaml)\n",
              "```yaml", budget_text.rstrip(), "```", "",
              "## Files\n",
              "- `report/`: report.md with its PNGs and CSVs, and the sample grids of the best and worst "
              "configurations.",
              "- `<search>/trials.parquet`, `<search>/evals.parquet`: one row per run (seed) and per evaluation; "
              "load them with `pandas.read_parquet`.",
              f"- `<search>/{JOURNAL_FILE}`: the Optuna studies (the search's own, or rebuilt by the report); `optuna-dashboard <search>/{JOURNAL_FILE}`.",
              "- `<search>/experiment.json`, `<search>/strata/`: the search's plan and its per-stratum ledgers.",
              "- `campaign.json`: the campaign's state, sessions and wall times.", ""]
    return "\n".join(lines)


def copy_search_files(exp: Path, out: Path, copy) -> None:
    """A search's evidence (EXPERIMENT_FILES and its stratum ledgers) from `exp` into `out`, each file through
    `copy(src, dest)` (which rewrites this machine's paths); run folders are left to the caller."""
    for fname in EXPERIMENT_FILES:
        if (exp / fname).exists():
            copy(exp / fname, out / fname)
    for ledger in sorted((exp / "strata").glob("*.json")):
        copy(ledger, out / "strata" / ledger.name)


PILOT_DIR = "pilot"  # kept across exports: the budget pilot's curves that chose the budget (tune/budget_pilot.py)


def export_findings(campaign_dir: Path, dest: Path) -> Path:
    """Copy the campaign's tables, journals, report and state into `dest` (replacing what an earlier export
    left there, except its pilot/ folder) and write dest/README.md. The campaign must be finished with its
    report written."""
    from tune.space_schema import budget_preset

    campaign_dir = Path(campaign_dir).absolute()
    dest = Path(dest).absolute()
    state_path = campaign_dir / "campaign.json"
    if not state_path.exists():
        raise ExportError(f"--export: {campaign_dir} holds no campaign.json; run the campaign first")
    state = json.loads(state_path.read_text())
    unfinished = [n for n, e in state["searches"].items() if e.get("state") != "done"]
    if unfinished or not state.get("report"):
        raise ExportError(f"--export: the campaign in {campaign_dir} is not finished (searches not done: "
                          f"{', '.join(unfinished) or 'none'}; report: {state.get('report') or 'not written'}); "
                          f"continue it with --resume")
    if dest == campaign_dir or campaign_dir in dest.parents:
        raise ExportError(f"--export {dest}: must lie outside the campaign folder {campaign_dir}")
    pairs = _replacements(campaign_dir)
    staging = dest.with_name(dest.name + ".exporting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in state["searches"]:
        copy_search_files(campaign_dir / name, staging / name, lambda src, dest: _copy(src, dest, pairs))
    report_dir = (campaign_dir / state["report"]).parent
    for path in sorted(report_dir.rglob("*")):
        if path.is_file():
            _copy(path, staging / "report" / path.relative_to(report_dir), pairs)
    _copy(state_path, staging / "campaign.json", pairs)
    if (dest / PILOT_DIR).is_dir():  # the budget pilot's curves (tune/budget_pilot.py) are not the campaign's
        shutil.copytree(dest / PILOT_DIR, staging / PILOT_DIR)
    budget_text = Path(budget_preset(state["budget"])).read_text()
    atomic_write_text(staging / "README.md", _scrub_text(readme(state, budget_text), pairs))
    leaks = _leaks(staging, pairs)
    if leaks:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError("--export: copied files still name this machine's folders: " + "; ".join(leaks[:5]))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)
    return dest
