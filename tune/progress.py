"""Driver-side Tune callbacks of a search: Parquet tables after each finished trial, and a compact live table.

Both live in an importable module (not in the search script) because Tune pickles them with the experiment
state and unpickles them on `--resume`.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ray.tune import Callback

from ict_core.config import Config, ConfigError
from ict_core.records import COMPLETED, ERRORED, FINAL_METRICS, PRUNED, RUNNING
from tune.results import ResultTables, write_json_atomic
from tune.results import trial_rows as rows_of_trial
from tune.trial import resolved_flat, trial_config, trial_params


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


class ParquetCallback(Callback):
    """Writes trials.parquet / evals.parquet (atomically) each time a trial of one stratum ends, from the run
    folders its seeds wrote (tune/results.trial_rows), and the stratum's ledger (`strata/<name>.json`: the
    planned number of trials and how each trial that ended, ended), which tells the driver whether the stratum
    finished. Only trials that ended on their own are in it: Tune marks the trials it stops on Ctrl-C as
    terminated, so its own statuses cannot tell an interrupted stratum from a finished one."""

    def __init__(self, experiment_dir: str, experiment: str, space: str, stratum: dict, seeds: int,
                 runs_root: str, ledger: str | None = None, planned: int = 0, experiment_uri: str | None = None,
                 metadata: dict | None = None, hparams: list[str] | None = None, trackers: dict | None = None):
        self.experiment_dir = experiment_dir
        # {"names": [...], "tracking_uri": ...}: the experiment trackers every recorded run goes to (tune/trackers.py)
        self.trackers = trackers
        self.hparams = hparams  # config keys that vary in the experiment: each run's TensorBoard HParams
        self.metadata = metadata  # tune/results.table_metadata: written into both tables' schema metadata
        self.experiment = experiment
        self.space = space
        self.stratum = stratum
        self.seeds = seeds
        self.runs_root = runs_root
        self.ledger = ledger or stratum["name"]  # the Tune experiment's name
        self.planned = planned
        # An experiment in storage (tune/experiment_folder.ExperimentFolder): every write is copied there at once.
        self.experiment_uri = experiment_uri

    def setup(self, **info):
        from tune.experiment_folder import ExperimentFolder

        uri = getattr(self, "experiment_uri", None)  # None in a callback pickled before it existed
        self._exp = ExperimentFolder(uri) if uri else None
        if self._exp is not None:  # the local copy is found by the URI, so a resume may run on another machine
            self.experiment_dir = str(self._exp.dir)
        from tune.trackers import make_trackers

        # Re-read on every (re)start: a restored callback must not hold the tables of a previous driver.
        self.tables = ResultTables(self.experiment_dir, getattr(self, "metadata", None))
        spec = getattr(self, "trackers", None) or {}
        self._trackers = make_trackers(spec.get("names"), self.experiment_dir, self.experiment,
                                       spec.get("tracking_uri"))
        self._ledger_update({})

    def _known(self, trial) -> dict:
        """The config the trial was sent (tune/trial.trial_config), for rows of seeds that wrote none. A trial
        whose values the config refuses failed on them: its row still records what was asked."""
        try:
            return resolved_flat(trial_config(self.stratum["fixed"], trial.config))
        except ConfigError:
            return {**Config().flat(), **self.stratum["fixed"], **trial_params(trial.config)}

    def _record(self, trial, error: str | None) -> None:
        from tune.store import Store

        known = self._known(trial)
        base = int(known.get("train.seed") or 0)
        trial_rows, eval_rows = rows_of_trial(
            Store(self.runs_root), experiment=self.experiment, space=self.space, stratum=self.stratum["name"],
            config_id=trial.trial_id, seeds=[base + i for i in range(self.seeds)], known_config=known, error=error)
        added = self.tables.add(trial_rows, eval_rows)
        # HParams and trackers first, then the tables: a driver killed in between records the run again on
        # resume, and both are keyed by the run (an HParams entry is rewritten, a tracker run found by run_key),
        # so nothing is lost or doubled.
        for row in added:
            write_run_hparams(self.experiment_dir, row, getattr(self, "hparams", None) or [])
            for tracker in getattr(self, "_trackers", []):
                tracker.log_run(row, [e for e in eval_rows if e["trial_id"] == row["trial_id"]])
        if added:
            self.tables.write()
        self._ledger_update({trial.trial_id: ERRORED if error else "ended"})

    def __getstate__(self):  # Tune pickles its callbacks; the storage connection is made again in setup()
        state = dict(self.__dict__)
        state.pop("_exp", None)
        return state

    def _push(self) -> None:
        if getattr(self, "_exp", None) is not None:
            self._exp.push()

    def _ledger_update(self, ended: dict) -> None:
        path = ledger_path(self.experiment_dir, self.ledger)
        try:
            ledger = json.loads(path.read_text())
        except (OSError, ValueError):
            ledger = {}
        ledger.update(stratum=self.stratum["name"], planned=self.planned)
        ledger.setdefault("trials", {}).update(ended)
        write_json_atomic(ledger, path)
        self._push()  # the tables (written just before) and the ledger

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, error_text(trial))


HPARAM_METRICS = tuple(f"final_{k}" for k in FINAL_METRICS) + ("best_fd", "steps", "images_seen", "wall_s")


def write_run_hparams(experiment_dir, row: dict, keys: list[str]) -> bool:
    """A recorded run's TensorBoard HParams (ict_core/events.write_hparams) in its run folder's events: its
    stratum, status and the config `keys`, with its final metrics. Only for run folders on this machine (the
    default storage); a run folder in remote storage (s3://) is left as it is."""
    from ict_core.events import write_hparams

    if not row.get("run_dir") or "://" in str(row["run_dir"]):
        return False
    folder = Path(experiment_dir) / row["run_dir"]
    if not folder.is_dir():
        return False
    values = {"stratum": row.get("stratum"), "status": row.get("status"), **{k: row.get(k) for k in keys}}
    return write_hparams(folder, values, {k: row.get(k) for k in HPARAM_METRICS}, step=int(row.get("steps") or 0))


def searched_keys(plan) -> list[str]:
    """The keys a plan searches: its params, then any other key its points or grid variants set."""
    keys = list(plan.params)
    for stratum in plan.strata:
        for point in list(stratum.points or []) + list(stratum.variants or []):
            keys += [k for k in point if k not in keys]
    return keys


def hparam_keys(plan) -> list[str]:
    """The config keys that vary in a plan's experiment: the searched ones (searched_keys), then fixed keys whose
    value differs between strata (e.g. data.name)."""
    keys = searched_keys(plan)
    for key in sorted({k for s in plan.strata for k in s.fixed}):
        values = {json.dumps(s.fixed.get(key), sort_keys=True, default=str) for s in plan.strata}
        if len(values) > 1 and key not in keys:
            keys.append(key)
    return keys


def ledger_path(experiment_dir, stratum: str) -> Path:
    return Path(experiment_dir) / "strata" / f"{stratum}.json"


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


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressCallback(Callback):
    """One line per evaluation, and after every trial that ends a progress line for the stratum: trials
    done/total, elapsed, ETA (elapsed per trial ended in this session, times the trials left) and the best
    configuration so far (its mean over seeds, the value the searcher sees)."""

    def __init__(self, stratum: str, params: list[str], metric: str, mode: str = "min", total: int = 0,
                 quiet: bool = False):
        self.stratum = stratum
        self.params = params
        self.metric = metric
        self.mode = mode
        self.total = total
        self.quiet = quiet
        self.t0 = time.time()

    def setup(self, **info):
        self.t0 = time.time()
        self.ended: dict[str, str] = {}
        self.before: set[str] = set()

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stdout, flush=True)

    def _shown(self, trial) -> str:
        params = trial_params(trial.config)
        shown = " ".join(f"{k.split('.')[-1]}={_fmt(params.get(k))}" for k in self.params if k in params)
        if not shown and params:
            shown = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())
        return shown

    def _print(self, trial, step, value, status) -> None:
        self._say(f"[{time.time() - self.t0:6.0f}s] {self.stratum:<12} {trial.trial_id:<14} {self._shown(trial):<40} "
                  f"step {_fmt(step):>6}  {self.metric} {_fmt(value):>8}  {status}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.before and not self.ended:
            # Trials a restored run already finished before this session: not counted in the ETA.
            self.before = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR") and t is not trial}
        status = result.get("status", RUNNING)
        if result.get("final"):
            if result.get("seeds_done", 1) == 1:
                return  # the seed's own line already said it; a mean of one adds nothing
            status = f"{status} (mean of {result.get('seeds_done')} seeds)"
        elif "seed" in result:
            status = f"{status} seed {result['seed']}"
        self._print(trial, result.get("step"), result.get(self.metric, float("nan")), status)

    def _ended_line(self, trials, trial, status: str) -> None:
        self.ended[trial.trial_id] = status
        finished = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | set(self.ended)
        done = len(finished)
        total = max(self.total, len(trials), done)
        elapsed = time.time() - self.t0
        this_session = len(finished - self.before)
        eta = _clock(elapsed / this_session * (total - done)) if this_session else "?"
        best, best_trial = None, None
        for t in {t.trial_id: t for t in [*trials, trial]}.values():
            last = t.last_result or {}
            value = last.get(self.metric)
            if not last.get("final") or last.get("status") != COMPLETED or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                continue
            if best is None or (value < best if self.mode == "min" else value > best):
                best, best_trial = value, t
        best_text = (f"best {self.metric} {best:.4g} ({self._shown(best_trial)})" if best is not None
                     else f"best {self.metric} -")
        self._say(f"[{self.stratum}] {done}/{total} trials done ({trial.trial_id} {status}), elapsed "
                  f"{_clock(elapsed)}, ETA {eta}, {best_text}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status = last.get("status", COMPLETED) if last.get("final") else PRUNED
        if status == PRUNED:
            self._print(trial, last.get("step"), last.get(self.metric, float("nan")), PRUNED)
        self._ended_line(trials, trial, status)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trial, (trial.last_result or {}).get("step"), float("nan"),
                    "errored: " + error_text(trial).splitlines()[0][:100])
        self._ended_line(trials, trial, ERRORED)


def summary_lines(trials_df, metric: str, mode: str) -> list[str]:
    """Best configuration per stratum (mean over seeds of final_<metric>), for the end of a search."""
    from analysis.load import flatten_nested

    out = []
    column = f"final_{metric}"
    if trials_df.empty or column not in trials_df:
        return ["no finished trials"]
    trials_df = flatten_nested(trials_df)  # list-valued config columns as text: comparable, printable
    config_cols = [c for c in trials_df.columns if "." in c]
    for stratum, group in trials_df.groupby("stratum", sort=False):
        ok = group[group["status"] == COMPLETED]
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
