"""Which searched parameter mattered: Optuna's parameter importances from a study rebuilt out of trials.parquet.

A search's own Optuna study lives inside Ray's searcher and is not kept; the tables are. `rebuild_studies`
turns the runs of each (experiment, stratum) back into an Optuna study: one trial per configuration
(config_id), its value the mean `metric` over the configuration's completed seeds, state FAIL when any seed
diverged or errored (a configuration that breaks is not a good one by its survivors), PRUNED when the
scheduler stopped it. Distributions come from the searched params in experiment.json's plan, widened to hold
every value the tables record (the plan's fixed points, e.g. the paper's c, may lie outside the range), or
are inferred from the data when no plan is at hand. Only keys that take two or more values among the
completed configurations are kept: a key at one value cannot explain anything.

`param_importances` ranks the keys with Optuna's default evaluator (fANOVA, seeded), and needs
MIN_COMPLETED completed configurations; with fewer it says so instead of ranking. `export_journal` writes
the studies into one Optuna journal file, which `optuna-dashboard FILE` opens (docs/ANALYSIS.md).

Shape: trials as load_results gives them (experiment, experiment_dir, stratum, config_id, seed, status,
the metric and dotted config columns).
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import EXPERIMENT_FILE, require_columns
from analysis.selection import config_columns, value_token
from ict_core.records import COMPLETED, DIVERGED, ERRORED, JOURNAL_FILE, PRUNED
from ict_core.fileio import atomic_path

# fANOVA fits a random forest on the completed trials; below this many it ranks noise.
MIN_COMPLETED = 6
FAILED = (DIVERGED, ERRORED)


@dataclass
class RebuiltStudy:
    """One (experiment, stratum) as an Optuna study, with what it could not rank and why."""

    experiment: str
    experiment_dir: str
    stratum: str
    study: object  # optuna.Study
    params: list[str]
    num_complete: int
    num_fail: int
    num_pruned: int
    importances: dict = field(default_factory=dict)
    reason: str = ""  # why there are no importances (empty when there are)

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.stratum}"


def plan_params(experiment_dir: str | Path) -> dict:
    """The searched params of experiment.json's plan ({key: {type, low, high, values, log}}), {} if unknown."""
    try:
        info = json.loads((Path(experiment_dir) / EXPERIMENT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    plan = info.get("plan") if isinstance(info, dict) else None
    params = plan.get("params") if isinstance(plan, dict) else None
    return params if isinstance(params, dict) else {}


def _choice(value):
    """A value Optuna accepts as a categorical choice (None, bool, int, float, str)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value_token(value)


def _numbers(values: pd.Series) -> np.ndarray | None:
    x = pd.to_numeric(values, errors="coerce")
    if x.isna().any() or values.map(lambda v: isinstance(v, bool)).any():
        return None
    return x.to_numpy(float)


def distribution(key: str, values: pd.Series, spec: dict | None = None):
    """The Optuna distribution of `key`: from the plan's spec when given, widened to hold `values`; else
    inferred (numbers: float, or int when all are integers, log when positive and spanning more than 10x;
    anything else: categorical)."""
    import optuna.distributions as od

    spec = spec or {}
    kind = spec.get("type")
    x = _numbers(values)
    if kind in ("choice", "grid") or x is None:
        choices = [_choice(v) for v in spec.get("values") or []]
        for v in values:
            if _choice(v) not in choices:
                choices.append(_choice(v))
        return od.CategoricalDistribution(choices)
    low, high = float(np.min(x)), float(np.max(x))
    if kind in ("loguniform", "uniform", "int"):
        low, high = min(low, float(spec["low"])), max(high, float(spec["high"]))
        log = bool(spec.get("log")) or kind == "loguniform"
    else:
        log = bool(low > 0 and high / low > 10)
    integer = kind == "int" or (kind is None and np.all(x == np.round(x)) and
                                values.map(lambda v: isinstance(v, (int, np.integer))).all())
    if integer:
        return od.IntDistribution(int(math.floor(low)), int(math.ceil(high)), log=log and low >= 1)
    return od.FloatDistribution(low, high, log=log and low > 0)


def _param_value(dist, value):
    import optuna.distributions as od

    if isinstance(dist, od.CategoricalDistribution):
        return _choice(value)
    if isinstance(dist, od.IntDistribution):
        return int(value)
    return float(value)


@contextmanager
def _quiet_optuna():
    """Optuna logs a line per study created; the report makes one per stratum, so lower it meanwhile."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def rebuild_study(group: pd.DataFrame, metric: str = "final_fd", params: dict | None = None,
                  direction: str = "minimize"):
    """One (experiment, stratum) of `trials` as an in-memory Optuna study; returns (study, keys, counts).

    params: the plan's searched params ({} or None: inferred from the keys that vary between configurations).
    """
    import optuna

    require_columns(group, ["config_id", "seed", "status", metric], "trials")
    per_config = []
    for config_id, runs in group.groupby("config_id", sort=False):
        states = set(runs["status"].astype(str))
        done = runs[runs["status"].astype(str) == COMPLETED]
        values = pd.to_numeric(done[metric], errors="coerce")
        if states & set(FAILED):
            state = optuna.trial.TrialState.FAIL
        elif len(done) and values.notna().all() and len(done) == len(runs):
            state = optuna.trial.TrialState.COMPLETE
        elif PRUNED in states:
            state = optuna.trial.TrialState.PRUNED
        else:
            state = optuna.trial.TrialState.FAIL
        per_config.append((str(config_id), runs, state, float(values.mean()) if len(done) else math.nan))
    complete_rows = pd.concat([r.iloc[:1] for _, r, s, _ in per_config if s == optuna.trial.TrialState.COMPLETE]
                              or [group.iloc[0:0]])
    candidates = [k for k in (params or {}) if k in group.columns] or config_columns(group)
    keys = [k for k in candidates if k in group.columns and group[k].notna().all()
            and complete_rows[k].map(value_token).nunique() > 1]
    dists = {k: distribution(k, group[k], (params or {}).get(k)) for k in keys}
    with _quiet_optuna():
        study = optuna.create_study(direction=direction)
    for config_id, runs, state, value in per_config:
        first = runs.iloc[0]
        attrs = {"config_id": config_id, "seeds": [int(s) for s in runs["seed"]],
                 "statuses": [str(s) for s in runs["status"]],
                 metric: [None if not np.isfinite(v) else float(v) for v in pd.to_numeric(runs[metric], errors="coerce")]}
        if "run_dir" in runs.columns:
            attrs["run_dirs"] = [str(d) for d in runs["run_dir"]]
        study.add_trial(optuna.trial.create_trial(
            params={k: _param_value(dists[k], first[k]) for k in keys}, distributions=dists,
            value=value if state == optuna.trial.TrialState.COMPLETE else None, state=state, user_attrs=attrs))
    counts = {s: sum(1 for *_, st, _ in per_config if st == getattr(optuna.trial.TrialState, s.upper()))
              for s in ("complete", "fail", "pruned")}
    return study, keys, counts


def param_importances(study, keys: list[str], seed: int = 0) -> tuple[dict, str]:
    """(importance per key, normalised to sum 1, largest first; "" ) or ({}, why none can be given)."""
    import optuna

    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if not keys:
        return {}, "no searched key takes two or more values among the completed configurations"
    if complete < MIN_COMPLETED:
        return {}, (f"{complete} completed configuration{'s' if complete != 1 else ''}; importances need at "
                    f"least {MIN_COMPLETED}")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=list(keys))
    return {k: float(v) for k, v in sorted(found.items(), key=lambda kv: -kv[1])}, ""


def rebuild_studies(trials: pd.DataFrame, metric: str = "final_fd", seed: int = 0,
                    direction: str = "minimize") -> list[RebuiltStudy]:
    """A RebuiltStudy per (experiment folder, stratum), importances computed where enough trials completed."""
    require_columns(trials, ["experiment", "stratum", "config_id", "seed", "status", metric], "trials")
    out = []
    folder_key = "experiment_dir" if "experiment_dir" in trials.columns else "experiment"
    for (folder, stratum), group in trials.groupby([folder_key, "stratum"], sort=True):
        params = plan_params(folder) if folder_key == "experiment_dir" else {}
        study, keys, counts = rebuild_study(group, metric=metric, params=params, direction=direction)
        importances, reason = param_importances(study, keys, seed=seed)
        out.append(RebuiltStudy(
            experiment=str(group["experiment"].iloc[0]), experiment_dir=str(folder), stratum=str(stratum),
            study=study, params=keys, num_complete=counts["complete"], num_fail=counts["fail"],
            num_pruned=counts["pruned"], importances=importances, reason=reason))
    return out


def importance_table(studies: list[RebuiltStudy]) -> pd.DataFrame:
    """One row per (experiment, stratum, key): importance and rank; a row with key "-" and the reason when
    a study has no importances."""
    rows = []
    for s in studies:
        base = {"experiment": s.experiment, "stratum": s.stratum, "completed": s.num_complete,
                "failed": s.num_fail, "pruned": s.num_pruned}
        if not s.importances:
            rows.append({**base, "key": "-", "importance": math.nan, "rank": math.nan, "note": s.reason})
        for rank, (key, value) in enumerate(s.importances.items(), start=1):
            rows.append({**base, "key": key, "importance": float(value), "rank": rank,
                         "note": "one searched key: 1 by construction" if len(s.importances) == 1 else ""})
    return pd.DataFrame(rows, columns=["experiment", "stratum", "key", "importance", "rank", "completed", "failed",
                                       "pruned", "note"])


def export_journal(studies: list[RebuiltStudy], path: str | Path) -> Path:
    """Write `studies` into a fresh Optuna journal file at `path` (replaced whole: a journal only appends),
    one Optuna study per RebuiltStudy, named "experiment/stratum". Returns the path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.unlink()  # the journal backend starts its own file
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp)))
        for s in studies:
            with _quiet_optuna():
                study = optuna.create_study(storage=storage, study_name=s.name, directions=s.study.directions)
            study.set_user_attr("experiment", s.experiment)
            study.set_user_attr("stratum", s.stratum)
            study.add_trials(s.study.get_trials(deepcopy=False))
    return path


def live_journal(experiment_dir: str | Path) -> bool:
    """Whether the experiment's journal holds the search's own Optuna studies, written while it ran
    (experiment.json `live_journal`); the report then leaves it as it is instead of writing rebuilt ones."""
    try:
        info = json.loads((Path(experiment_dir) / EXPERIMENT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(isinstance(info, dict) and info.get("live_journal")) and (Path(experiment_dir) / JOURNAL_FILE).exists()


def load_journal(path: str | Path) -> dict:
    """{study name: optuna.Study} of a journal file written by export_journal. Public API: how a script or a
    notebook opens the studies of a finished experiment (optuna-dashboard reads the same file)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}
