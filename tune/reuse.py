"""Reuse, never retrain: a run whose run_key (tune/results.run_key: what was trained and the seed) was already
trained in this experiment, this campaign or an experiment named with `--reuse DIR` is read, not trained.

The driver builds an index {run_key: where its finished run folder lies} from the trials.parquet of those
experiments (`reuse_index`) and hands it to every trial. A trial about to train a seed whose run_key is in the
index copies the run's record instead (`copy_run`: config, provenance, summary, evaluations and sample grids;
not its checkpoints) and writes `reused.json` beside it naming the source. The seed's row in this experiment's
trials.parquet is then built from the copy like any other row, with `reused` = True and `reused_from` =
"<source experiment>/<run_dir>", so the run appears in every experiment that asked for it, and the report's
compute table counts it once (analysis/report_sections.compute_table). Run folders on a URI store (s3://) are not indexed:
only local experiment folders are read.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ict_core import rundir
from ict_core.errors import BadInput
from ict_core.records import COMPLETED, DIVERGED, TRIALS_FILE

REUSED_FILE = "reused.json"  # in a seed folder: the run was copied from another experiment, not trained
COPIED = (rundir.CONFIG, rundir.EVALS, rundir.METRICS, rundir.PROVENANCE)  # then summary.json, last


class ReuseError(BadInput):
    """A --reuse folder that holds no experiment."""


def experiment_tables(root: Path) -> list[Path]:
    """trials.parquet of every experiment at or below `root` (Ray's own folders skipped)."""
    if (root / TRIALS_FILE).exists():
        return [root / TRIALS_FILE]
    return sorted(p for p in root.rglob(TRIALS_FILE) if "ray" not in p.relative_to(root).parts[:-1]
                  and "runs" not in p.relative_to(root).parts[:-1])


def reuse_index(dirs, required: bool = True) -> dict[str, dict]:
    """{run_key: {"path": the run folder, "experiment": its experiment, "run_dir": relative}} of every finished
    (completed or diverged) run with a local run folder in the experiments at or below `dirs`. A folder that
    does not exist or holds no experiment is an error when `required` (the --reuse folders)."""
    import pyarrow.parquet as pq

    index: dict[str, dict] = {}
    for raw in dirs or ():
        root = Path(raw).expanduser().resolve()
        tables = experiment_tables(root) if root.is_dir() else []
        if not tables:
            if required:
                raise ReuseError(f"--reuse {raw}: holds no experiment ({TRIALS_FILE}); give an experiment folder "
                                 f"or a campaign folder")
            continue
        for table in tables:
            exp = table.parent
            for row in pq.read_table(table, columns=None).to_pylist():
                key, rel = row.get("run_key"), row.get("run_dir")
                if not key or not rel or row.get("status") not in (COMPLETED, DIVERGED) or row.get("reused"):
                    continue
                folder = exp / rel
                if (folder / rundir.SUMMARY).is_file() and key not in index:
                    index[key] = {"path": str(folder), "experiment": str(row.get("experiment") or exp.name),
                                  "run_dir": rel}
    return index


def copy_run(source: dict, dest: Path) -> dict:
    """Copy a finished run's record (not its checkpoints) into `dest` and mark it reused; returns its summary."""
    src = Path(source["path"])
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    if (src / rundir.SAMPLES).is_dir():
        shutil.copytree(src / rundir.SAMPLES, dest / rundir.SAMPLES, dirs_exist_ok=True)
    (dest / REUSED_FILE).write_text(json.dumps({"experiment": source["experiment"], "run_dir": source["run_dir"]},
                                               sort_keys=True) + "\n")
    # summary.json last: a trial killed mid-copy finds no finished seed and copies again
    shutil.copy2(src / rundir.SUMMARY, dest / rundir.SUMMARY)
    return json.loads((dest / rundir.SUMMARY).read_text())
