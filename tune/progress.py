"""Driver-side Tune callbacks of a search: Parquet tables after each finished trial, and a compact live table.

Both live in an importable module (not in the search script) because Tune pickles them with the experiment
state and unpickles them on `--resume`.
"""
from __future__ import annotations

import json
import math
import sys
import time

from ray.tune import Callback

from tune.results import EVAL_METRICS, ResultTables, rows_from_result
from tune.trial import resolved_flat, trial_params


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


class ParquetCallback(Callback):
    """Writes trials.parquet / evals.parquet (atomically) each time a trial of one stratum ends."""

    def __init__(self, experiment_dir: str, experiment: str, space: str, stratum: dict):
        self.experiment_dir = experiment_dir
        self.experiment = experiment
        self.space = space
        self.stratum = stratum
        self._history: dict[str, list] = {}

    def setup(self, **info):
        # Re-read on every (re)start: a restored callback must not hold the tables of a previous driver.
        self.tables = ResultTables(self.experiment_dir)
        self._history = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "ict_history" in result or "step" not in result or not result.get("evaluated", True):
            return
        # Ray Train trials forward rank 0's trainer metrics only: keep the evaluation history here. Seeds run
        # one after the other, so a step that does not increase starts the next seed.
        history = self._history.setdefault(trial.trial_id, [])
        seed = history[-1]["seed"] if history else self._current(trial)["seed"]
        if history and result["step"] <= history[-1]["step"]:
            seed += 1
        history.append({"seed": seed, **{k: result.get(k) for k in ("step", *EVAL_METRICS)}})

    def _current(self, trial) -> dict:
        from ict_core.config import load_config

        overrides = {**self.stratum["fixed"], **trial_params(trial.config)}
        try:
            cfg = load_config(overrides=overrides)
            return {"seed": cfg.train.seed, "config": resolved_flat(cfg)}
        except Exception:  # noqa: BLE001 - the row must still be written, with what is known
            return {"seed": overrides.get("train.seed", 0), "config": overrides}

    def _record(self, trial, error: str | None) -> None:
        trial_rows, eval_rows = rows_from_result(
            trial.last_result or {}, experiment=self.experiment, space=self.space, stratum=self.stratum["name"],
            config_id=trial.trial_id, current=self._current(trial), error=error,
            history=self._history.pop(trial.trial_id, None))
        if self.tables.add(trial_rows, eval_rows):
            self.tables.write()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error_text(trial))


def error_text(trial, limit: int = 4000) -> str:
    """The trial's error: the exception line first, then the end of the traceback."""
    text = ""
    try:
        if trial.error_file:
            with open(trial.error_file) as fh:
                text = fh.read()
    except OSError:
        pass
    if not text:
        err = trial.get_error() if hasattr(trial, "get_error") else None
        text = str(err) if err is not None else "unknown error"
    lines = [l for l in text.strip().splitlines() if l.strip()]
    head = lines[-1] if lines else "unknown error"
    return (head + "\n" + text.strip()[-limit:]) if len(lines) > 1 else head


class ProgressCallback(Callback):
    """One line per evaluation and per finished trial: stratum, trial, params, step, metric, status."""

    def __init__(self, stratum: str, params: list[str], metric: str, quiet: bool = False):
        self.stratum = stratum
        self.params = params
        self.metric = metric
        self.quiet = quiet
        self.t0 = time.time()

    def setup(self, **info):
        self.t0 = time.time()

    def _print(self, trial, step, value, status) -> None:
        params = trial_params(trial.config)
        shown = " ".join(f"{k.split('.')[-1]}={_fmt(params.get(k))}" for k in self.params if k in params)
        if not shown and params:
            shown = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())
        line = (f"[{time.time() - self.t0:6.0f}s] {self.stratum:<12} {trial.trial_id:<14} {shown:<40} "
                f"step {_fmt(step):>6}  {self.metric} {_fmt(value):>8}  {status}")
        if not self.quiet:
            print(line, file=sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("ict_between_seeds"):
            return
        status = result.get("status", "running")
        if result.get("ict_final"):
            if result.get("seeds_done", 1) == 1:
                return  # the seed's own line already said it; a mean of one adds nothing
            status = f"{status} (mean of {result.get('seeds_done')} seeds)"
        elif "seed" in result:
            status = f"{status} seed {result['seed']}"
        self._print(trial, result.get("trial_step", result.get("step")), result.get(self.metric, float("nan")),
                    status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if not last.get("ict_final") and last.get("status") not in ("completed", "diverged"):
            self._print(trial, last.get("trial_step"), last.get(self.metric, float("nan")), "pruned")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trial, (trial.last_result or {}).get("trial_step"), float("nan"),
                    "errored: " + error_text(trial).splitlines()[0][:100])


def summary_lines(trials_df, metric: str, mode: str) -> list[str]:
    """Best configuration per stratum (mean over seeds of final_<metric>), for the end of a search."""
    out = []
    column = f"final_{metric}"
    if trials_df.empty or column not in trials_df:
        return ["no finished trials"]
    config_cols = [c for c in trials_df.columns if "." in c]
    for stratum, group in trials_df.groupby("stratum", sort=False):
        ok = group[group["status"] == "completed"]
        counts = group["status"].value_counts().to_dict()
        if ok.empty:
            out.append(f"{stratum}: no completed run ({json.dumps(counts)})")
            continue
        means = ok.groupby("config_id")[column].mean()
        means = means[means.notna()]
        if means.empty:
            out.append(f"{stratum}: no finite {column} ({json.dumps(counts)})")
            continue
        best_id = means.idxmin() if mode == "min" else means.idxmax()
        best = ok[ok["config_id"] == best_id].iloc[0]
        varying = [c for c in config_cols if group[c].nunique(dropna=False) > 1 and c != "train.seed"]
        shown = ", ".join(f"{c}={_fmt(best[c])}" for c in varying) or "(single configuration)"
        n_seeds = int((ok["config_id"] == best_id).sum())
        out.append(f"{stratum}: best {metric} {means[best_id]:.4g} (mean of {n_seeds} seed(s)) with {shown}; "
                   f"runs: {json.dumps(counts)}")
    return out
