"""Hyperparameter searches over iCT with Ray Tune + Optuna; results land in Parquet tables.

    python tune/search.py --space c_scaling --budget smoke
    python tune/search.py --space my_space.yaml --budget cpu --num-samples 20 --storage /data/results
    python tune/search.py --space c_scaling --budget smoke --resume      # after a crash or Ctrl-C
    python tune/search.py --space c_scaling --budget smoke --num-samples 6 --resume --extend   # search further
    python tune/search.py --space dropout --dry-run                     # print the plan, start nothing
    python tune/search.py --list-spaces

Each stratum of a space (e.g. one data set) is searched on its own, with its own searcher and trial budget, one
stratum after the other. Results: EXPERIMENT_DIR/trials.parquet (one row per training run = one seed of one
configuration), evals.parquet (one row per evaluation), both built from the run folders, and experiment.json
(space, budget, plan and its hash, status, provenance). Every seed's run folder goes to
EXPERIMENT_DIR/runs/<stratum>/<trial_id>/seed_<seed>, Ray's own files to EXPERIMENT_DIR/ray/<stratum> (both under
the shared storage instead when one is given). With --storage s3://BUCKET/PREFIX all of it goes to the bucket
(tune/store.py), and --resume and analysis/report.py read it from there. Exit codes: 0 finished, 1 trials
errored (the first error is printed; --resume retries them), 2 bad input, 130 interrupted (--resume continues).
docs/ARCHITECTURE.md has the details.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
import zlib
from pathlib import Path

from analysis.importance import JOURNAL_FILE
from ict_core.cli import bad_input, command
from ict_core.errors import BadInput
from ict_core.config import load_config, parse_overrides
from ict_core.records import (COMPLETED, ERRORED, EVALS_FILE, INTERRUPTED, RUNNING, SEARCH_FAILED, SEARCH_FINISHED,
                              TRIALS_FILE)
from tune import REPO_ROOT
from tune.cluster import ClusterShape, connect, pythonpath_env, resolve_address, trial_resources
from tune.space import load_space
from tune.space_schema import BUDGETS, Plan, SpaceError, list_spaces
from tune.startup import describe_search
from tune.store import (RUNS_DIR, ExperimentFolder, StoreError, check_storage, check_storage_option, input_problem,
                        is_uri, join)

DEFAULT_STORAGE = "results"
# Tune snapshots its experiment state at most this often; a resume starts from the last snapshot.
SNAPSHOT_S = "2"
# Retries of a failed trial on a cluster (a spot node lost, a raylet killed) when --max-failures is not given.
DEFAULT_CLUSTER_FAILURES = 3


class SearchError(BadInput):
    """A search that cannot start (bad arguments, an experiment that exists without --resume)."""


# ---- plan --------------------------------------------------------------------------------------
def resolve_plan(space, budget="smoke", num_samples=None, extra=None, strata=None) -> Plan:
    plan = load_space(space).plan(budget, num_samples=num_samples, extra=extra)
    if strata:
        names = [s.name for s in plan.strata]
        unknown = [s for s in strata if s not in names]
        if unknown:
            raise SpaceError(f"--strata: unknown stratum {unknown[0]!r}; this plan has {', '.join(names)}")
        plan.strata = [s for s in plan.strata if s.name in strata]
    return plan


def resources(plan: Plan, workers: int, gpus_per_worker: float, cluster: ClusterShape | dict | None,
              ray_train: bool = False, concurrency_given: bool = False) -> dict:
    """Trial resources and the number of concurrent trials (tune.cluster.trial_resources; docs/ARCHITECTURE.md,
    Trial resources). `cluster` is the connected cluster's shape, a {"CPU", "GPU"} dict of a fixed cluster, or
    None (--dry-run: this machine)."""
    if isinstance(cluster, dict):
        cluster = ClusterShape(float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0)))
    try:
        return trial_resources(plan.max_concurrent, workers, gpus_per_worker, cluster, ray_train, concurrency_given)
    except BadInput as err:
        raise SearchError(str(err)) from None


def check_max_failures(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
        raise SearchError(f"--max-failures must be an integer >= 0 (or -1: retry without limit), got {value!r}")


def check_plan_paths(plan: Plan) -> None:
    """--dry-run: the files every stratum's trials read exist where the trials read them (data.path,
    eval.inception_path): a URI in storage (each node fetches it into its cache), a path on this machine (the
    plan made it absolute; on a cluster every node must have it at that path, see README "Data on every node")."""
    from ict_core.datasets import NEEDS_PATH

    for stratum in plan.strata:
        cfg = load_config(overrides=stratum.first_config(plan.params))
        inputs = {}
        if cfg.data.name in NEEDS_PATH:
            inputs["data.path"] = cfg.data.path
        if cfg.eval.features == "inception":
            inputs["eval.inception_path"] = cfg.eval.inception_path
        for key, value in inputs.items():
            problem = input_problem(key, value)
            if problem:
                raise SearchError(f"{plan.space}, stratum {stratum.name}: {problem} (see README, Data sets)")


def format_plan(plan: Plan, res: dict, exp_dir) -> str:
    lines = [f"space      {plan.space} ({plan.source})", f"question   {plan.question or '-'}",
             f"budget     {plan.budget} (preset tune/budgets/{plan.budget}.yaml under every stratum's fixed keys)",
             f"experiment {exp_dir}",
             f"search     {plan.algorithm} (seed {plan.search_seed}), "
             + (f"metrics {', '.join(f'{m} ({d})' for m, d in zip(plan.metrics, plan.modes))} (multi-objective), "
                if plan.multi else f"metric {plan.metric} ({plan.mode}), ")
             + f"scheduler {plan.scheduler.get('type')}"
             + (f" (grace_period {plan.scheduler['grace_period']} steps, reduction_factor "
                f"{plan.scheduler['reduction_factor']})" if plan.scheduler.get("type") == "asha" else ""),
             f"seeds      {plan.seeds} per configuration (the searcher sees their mean)",
             f"resources  {res['mode']}: trial {res['trial']}"
             + (f", {res['workers']} worker(s) x ({res['cpus_per_trial']:g} CPU, {res['gpus_per_worker']:g} GPU)"
                if res["mode"] == "ray-train" else "")
             + f", {res['max_concurrent_trials']} concurrent trial(s) on {res['cluster']['CPU']:g} CPU"
               f" / {res['cluster']['GPU']:g} GPU"
             + (" (trials that do not fit yet wait for the autoscaler)" if res.get("queue") else "")]
    if res.get("ray"):
        lines.insert(4, f"ray        {res['ray']}" + (f"; {res['shape']}" if res.get("shape") else "")
                     + f"; a failed trial is retried up to {res.get('max_failures', 0)} time(s)")
    if plan.params:
        lines.append("searched")
        for key, p in plan.params.items():
            rng = f"[{p.low}, {p.high}]" if p.low is not None else "{" + ", ".join(map(str, p.values)) + "}"
            lines.append(f"  {key:<24} {p.type} {rng}")
    for s in plan.strata:
        lines.append(f"stratum {s.name}: {s.dataset}, d={s.dim}, {s.num_samples} configuration(s) x {plan.seeds} "
                     f"seed(s)" + (f": {describe_search(s.num_samples, len(s.points))}"
                                   if plan.algorithm == "optuna_tpe" else ""))
        lines.append("  fixed  " + ", ".join(f"{k}={v}" for k, v in s.fixed.items()))
        if s.points:
            lines.append("  points " + "; ".join(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in p.items()) for p in s.points))
        first = s.first_config(plan.params)
        lines.append("  first  " + ", ".join(f"{k}={v}" for k, v in first.items() if k not in s.fixed))
    for skipped in plan.skipped_strata:
        lines.append(f"skipped stratum {skipped}")
    if plan.design is not None:
        d = plan.design
        lines.append(f"design     claims start at {d.seeds_min} seeds; open ones get more at looks "
                     f"{', '.join(map(str, d.plan))} up to {d.seeds_max} ({d.spending} alpha spending, Holm over the "
                     f"declared claims, alpha {d.alpha:g})"
                     + (f", at most {d.max_runs} runs in all" if d.max_runs else ""))
    return "\n".join(lines)


def plan_power(plan: Plan, pilot_dirs, exp_dir: Path | None = None, family: int | None = None) -> list[str]:
    """The dry-run's power lines (tune/pilot.py): from --pilot folders, else from this experiment's own table
    once it holds two looks (a design round past the first, or two seeds per configuration), else unknown."""
    from tune.pilot import load_pilot, power_lines

    family = len(plan.claims) if family is None else family
    if pilot_dirs:
        return power_lines(plan, load_pilot(pilot_dirs), family, "--pilot " + " ".join(map(str, pilot_dirs)))
    if exp_dir is not None and (exp_dir / TRIALS_FILE).exists():
        own = load_pilot([exp_dir])
        if not own.empty and int(own.groupby("config_id")["seed"].nunique().max()) >= 2:
            return power_lines(plan, own, family, f"this experiment ({exp_dir})")
    return power_lines(plan, load_pilot([]), family, "no pilot given")


# ---- Ray --------------------------------------------------------------------------------------
ray_env = pythonpath_env  # the environment Ray's workers need to import this repository's packages


def start_ray(address: str | None = None) -> bool:
    """Join or start Ray (tune.cluster.connect: --address, RAY_ADDRESS, a running cluster here, else a new local
    instance) unless already connected; returns True when this call connected (and must shut Ray down)."""
    return connect(address, num_cpus=os.cpu_count()).started


def _distribution(p, values=None):
    from ray import tune as rt

    if p.type == "loguniform":
        return rt.loguniform(p.low, p.high)
    if p.type == "uniform":
        return rt.uniform(p.low, p.high)
    if p.type == "int":
        return rt.lograndint(p.low, p.high + 1) if p.log else rt.randint(p.low, p.high + 1)
    if p.type == "choice":
        return rt.choice(list(values if values is not None else p.values))
    return rt.grid_search(list(p.values))


def stratum_seed(seed: int, stratum: str) -> int:
    """Each stratum its own sampler seed (stable under --strata), so strata do not all try the same values."""
    return seed + zlib.crc32(stratum.encode()) % 100_000


def _search(plan: Plan, stratum, concurrent: int, seed: int, num_samples: int | None = None,
            evaluated: list[tuple[dict, float]] = (), journal: Path | None = None, experiment: str = ""):
    """(search_alg, param_space, num_samples) of one stratum; `seed` seeds its sampler. `evaluated` are
    (params, value) pairs an earlier run of the stratum measured (--extend), told to Optuna before it starts.
    `journal`: the Optuna journal file that holds the stratum's study ("experiment/stratum") live; a study
    already there (a resumed or extended stratum) is continued and holds what was measured, so nothing is told
    twice."""
    from ray.tune.search import BasicVariantGenerator

    from ray import tune as rt

    samples = stratum.num_samples if num_samples is None else num_samples
    if plan.algorithm == "grid":
        measured = [p for p, _ in evaluated]
        variants = [v for v in stratum.variants if {k: v.get(k) for k in plan.params} not in measured]
        return (BasicVariantGenerator(max_concurrent=concurrent), {"variant": rt.grid_search(variants)}, 1)
    space = {key: _distribution(p, stratum.choices.get(key)) for key, p in plan.params.items()}
    if plan.algorithm == "random":
        return (BasicVariantGenerator(points_to_evaluate=stratum.points or None, max_concurrent=concurrent,
                                      random_state=seed), space, samples)
    import optuna

    from tune.searcher import RetryAwareLimiter, SeedMeanOptuna, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = list(stratum.points or [])
    rewards = None
    storage, study_name = None, None
    if journal is not None:
        from tune.searcher import journal_storage, study_exists

        storage, study_name = journal_storage(journal), study_label(experiment, stratum.name)
        if study_exists(storage, study_name):
            points, evaluated = [], ()  # the study holds them (asked, enqueued or told by the earlier run)
    if evaluated:
        done = [p for p, _ in evaluated]
        points = done + [p for p in points if p not in done]
        rewards = [v for _, v in evaluated]
        points = points[:len(rewards)]  # OptunaSearch needs one reward per point; the given points ran before
    searcher = SeedMeanOptuna(metric=plan.metrics if plan.multi else plan.metric,
                              mode=plan.modes if plan.multi else plan.mode, points_to_evaluate=points or None,
                              evaluated_rewards=rewards,
                              sampler=make_sampler(seed, stratum.num_samples, len(stratum.points)),
                              storage=storage, study_name=study_name,
                              study_attrs={"experiment": experiment, "stratum": stratum.name} if storage else None)
    return RetryAwareLimiter(searcher, max_concurrent=concurrent), space, samples


def study_label(experiment: str, stratum: str) -> str:
    """The name of a stratum's Optuna study in the experiment's journal (as the report's rebuilt ones)."""
    return f"{experiment}/{stratum}"


def _scheduler(plan: Plan, stratum):
    if plan.scheduler.get("type") != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    total_steps = int(stratum.fixed.get("train.total_steps") or _default("train.total_steps"))
    # trial_step is the first seed's step (tune/trial.py), so every rung lies within the first seed. max_t one
    # step past its end: ASHA must not stop a trial at max_t, before the later seeds and the final report.
    return ASHAScheduler(time_attr="trial_step", max_t=total_steps + 1,
                         grace_period=int(plan.scheduler["grace_period"]),
                         reduction_factor=float(plan.scheduler["reduction_factor"]))


def _default(key: str):
    from ict_core.config import Config

    return Config().flat()[key]


def _provenance() -> dict:
    from ict_core import provenance

    return {**provenance.git_commit(), "versions": provenance.versions(), "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _write_experiment(exp: ExperimentFolder, info: dict) -> None:
    from tune.results import write_json_atomic

    write_json_atomic(info, exp.dir / "experiment.json")
    exp.push()  # a URI experiment: what changed goes to storage now


def _same_place(a: str, b: str) -> bool:
    if is_uri(a) or is_uri(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a) == Path(b)


def _check_not_moved(info: dict, exp_dir: str, name: str) -> None:
    """Refuse to resume an experiment folder that was moved or copied from where it was created: Ray's saved
    search state (in its shared storage) names the old folder, so a resume here would train into, and record in,
    the old one while this one stays unfinished."""
    if not info:
        return
    shared = str(info.get("shared_storage") or "")
    old = info.get("experiment_dir")
    if old is None and shared and not is_uri(shared) and not os.environ.get("ICT_STORAGE"):
        old = shared if Path(shared).name == name else None  # experiments recorded before experiment_dir
    if old and not _same_place(old, exp_dir) and (shared == old or not is_uri(shared) and not is_uri(old)
                                                  and Path(shared).is_relative_to(old)):
        raise SearchError(f"--resume: {exp_dir} was created as {old} and has been moved or copied since; its saved "
                          f"search state names the old folder, so resuming here would train into that one. Resume "
                          f"it where it was created (move it back to {old}), or start a new search with --name "
                          f"(its tables and run folders stay readable where they are)")


def _default_shared(exp: ExperimentFolder, name: str) -> str:
    if exp.is_uri:  # everything of the search under one URI
        return exp.location
    shared = os.environ.get("ICT_STORAGE", "").rstrip("/")
    return f"{shared}/{name}" if shared else str(exp.dir)


# ---- plan identity (--resume refuses a changed plan unless --extend) ---------------------------------
_NOT_PLAN = ("source", "description", "question", "max_concurrent", "skipped_strata", "strata", "claims", "design")


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_hashes(plan: Plan) -> dict:
    """{"search": hash of the searcher/scheduler/seed settings, "strata": {name: hash of search + stratum}}."""
    d = plan.to_dict()
    search = _hash({k: v for k, v in d.items() if k not in _NOT_PLAN})
    return {"search": search, "strata": {s["name"]: _hash({"search": search, **s}) for s in d["strata"]}}


def _plan_changes(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("search") != new["search"]:
        out.append("search settings (budget, params, seeds, scheduler, algorithm or metric)")
    for name, h in new["strata"].items():
        if name in old.get("strata", {}) and old["strata"][name] != h:
            out.append(f"stratum {name}")
    return out


def _recorded(exp_dir: Path, stratum: str, plan: Plan) -> tuple[int, list[tuple[dict, float]]]:
    """Configurations of a stratum already in trials.parquet without error, and (params, mean metric) of those
    whose seeds all completed: what --extend tells a new searcher."""
    import pandas as pd

    path = exp_dir / TRIALS_FILE
    if not path.exists():
        return 0, []
    rows = pd.read_parquet(path)
    rows = rows[rows["stratum"] == stratum]
    if rows.empty:
        return 0, []
    good = rows.groupby("config_id")["status"].apply(lambda st: not (st == ERRORED).any())
    evaluated = []
    for config_id, group in rows.groupby("config_id"):
        column = f"final_{plan.metric}"
        if (group["status"] == COMPLETED).all() and column in group and group[column].notna().all():
            evaluated.append(({k: group[k].iloc[0].item() if hasattr(group[k].iloc[0], "item") else group[k].iloc[0]
                               for k in plan.params}, float(group[column].mean())))
    return int(good.sum()), evaluated


def _stratum_outcome(exp_dir: Path, tune_name: str) -> dict:
    """Whether a stratum finished: as many trials ended on their own as were planned, none with an error
    (its ledger, tune/progress.ParquetCallback)."""
    from tune.progress import ledger_path

    try:
        ledger = json.loads(ledger_path(exp_dir, tune_name).read_text())
    except (OSError, ValueError):
        ledger = {}
    ended = list(ledger.get("trials", {}).values())
    planned = int(ledger.get("planned") or 0)
    return {"planned": planned, "ended": len(ended), "errored": ended.count(ERRORED),
            "interrupted": len(ended) < max(planned, 1)}


def run_search(space, budget="smoke", num_samples=None, storage=None, name=None, resume=False,
               workers_per_trial=1, gpus_per_worker=0, *, extra=None, strata=None, address=None,
               max_concurrent=None, quiet=False, ray_storage=None, extend=False, ray_train=False,
               reuse=(), reuse_optional=(), family: int | None = None, trackers=None, tracking_uri=None,
               max_failures=None) -> Path:
    """Run (or resume) a search; returns the experiment folder holding trials.parquet, evals.parquet and
    experiment.json, whose `status` says how it ended: finished | failed (some trials errored; `first_error`) |
    interrupted (Ctrl-C; --resume continues).

    `extra` are dotted overrides for every trial (the CLI's --set), `strata` limits the search to some strata,
    `max_concurrent` overrides the space's concurrency (on a cluster it submits that many whatever fits now),
    `address` names a Ray cluster (default: tune.cluster.resolve_address: RAY_ADDRESS, a running cluster on this
    node, else a new local instance; the plan's `ray` line says which).
    `ray_storage` is the experiment's shared storage, which every node must see: run folders go to its `runs/`,
    Ray's state to its `ray/`. Default: the experiment folder, or $ICT_STORAGE/NAME when that is set (cluster.yaml
    sets it to s3). `storage` may be a URI (s3://...): then the experiment folder, its shared storage included, is
    STORAGE/NAME there; the driver writes the tables, ledgers and experiment.json into a local copy and pushes each
    write to it (tune/store.ExperimentFolder), and a resume reads them back from it. The returned folder is the
    local copy; experiment.json's `experiment_dir` names the URI.
    A resumed search refuses a changed plan unless `extend`: then changed strata run again under a new
    searcher that is told what the stratum already measured, up to the new number of configurations.
    `ray_train` sends one-worker CPU trials through Ray Train too. A run whose run_key is already finished in
    this experiment, in the experiments at or below the `reuse` folders (each must hold one) or below the
    `reuse_optional` ones (a campaign's folder) is copied, not trained (tune/reuse.py). `family` is the number of
    claims the error rate is held over (a campaign's: its searches' claims together); this search's claims share
    alpha x (its claims / family) among them by Holm, so the campaign's family-wise rate stays at alpha.
    `trackers` ("mlflow", "wandb") receive every recorded run (tune/trackers.py); `tracking_uri` is MLflow's
    (default: a SQLite store in the experiment folder). `max_failures`: how often Ray retries a trial that failed
    (a lost node, a killed process) from its run folder's last checkpoint before it counts as errored (default: 0
    on a new local instance, DEFAULT_CLUSTER_FAILURES on a cluster)."""
    from tune.trackers import check_trackers

    trackers = check_trackers(trackers, tracking_uri)
    plan = resolve_plan(space, budget, num_samples, extra, strata)
    check_max_failures(max_failures)
    if max_concurrent is not None:
        if isinstance(max_concurrent, bool) or int(max_concurrent) < 1:
            raise SearchError(f"--max-concurrent must be an integer >= 1, got {max_concurrent!r}")
        plan.max_concurrent = int(max_concurrent)
    name = name or f"{plan.space}-{budget}"
    storage = str(storage or DEFAULT_STORAGE)
    try:
        check_storage(storage, "--storage")
        exp = ExperimentFolder(join(storage, name) if is_uri(storage) else Path(storage).expanduser().resolve() / name)
        found = exp.exists("experiment.json")
    except StoreError as err:
        raise SearchError(str(err)) from None
    exp_dir, info_path = exp.dir, exp.dir / "experiment.json"
    if found and not resume:
        raise SearchError(f"experiment {exp} exists; pass --resume to continue it or --name for a new one")
    if resume and not found:
        raise SearchError(f"--resume: no experiment at {exp} (no experiment.json); check --storage and --name")
    exp.pull()  # a URI experiment: the local copy becomes what storage holds (nothing left of an older copy)
    info = json.loads(info_path.read_text()) if resume else {}
    if info and info.get("space") != plan.space:
        raise SearchError(f"--resume: {exp} holds space {info.get('space')!r}, not {plan.space!r}")
    _check_not_moved(info, exp.location, name)
    hashes = plan_hashes(plan)
    changed = _plan_changes(info.get("plan_hash", {}), hashes) if info.get("plan_hash") else []
    if changed and not extend:
        raise SearchError(f"--resume: the plan differs from the one {exp} was started with ({'; '.join(changed)}); "
                          "resume with the same --budget, --num-samples and --set, or pass --extend to search the "
                          "changed strata further")

    from tune.reuse import reuse_index

    index = reuse_index(reuse)  # a --reuse folder without an experiment fails here, before Ray
    index.update({k: v for k, v in reuse_index([*reuse_optional, exp_dir], required=False).items()
                  if k not in index})
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_S)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune as rt

    from tune.progress import ParquetCallback, ProgressCallback, hparam_keys, searched_keys
    from tune.results import table_metadata
    from tune.store import Store
    from tune.trial import StopTrialsOnInterrupt, ict_trial

    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    connection = connect(address, num_cpus=os.cpu_count())
    started = connection.started
    try:
        from tune.cluster import cluster_shape

        res = resources(plan, workers_per_trial, gpus_per_worker, cluster_shape(), ray_train,
                        # on one machine nothing queues past what fits, as before
                        concurrency_given=max_concurrent is not None and not connection.target.local)
        res["ray"] = connection.target.describe()
        if max_failures is None:
            max_failures = 0 if connection.target.local else DEFAULT_CLUSTER_FAILURES
        res["max_failures"] = int(max_failures)
        old_hashes = info.get("plan_hash", {}).get("strata", {})
        done_strata = [s for s in info.get("done_strata", []) if old_hashes.get(s) in (None, hashes["strata"].get(s))]
        tune_names = dict(info.get("tune_names", {}))
        shared = (ray_storage or info.get("shared_storage") or _default_shared(exp, name)).rstrip("/")
        # The Optuna searcher's studies live in the experiment's journal (an experiment started before that keeps
        # the report's rebuilt journal); a grid or random search has no Optuna study to show.
        live = bool(info.get("live_journal")) if info else plan.algorithm == "optuna_tpe"
        journal = exp_dir / JOURNAL_FILE if live else None
        info = {"live_journal": live, "experiment": name, "experiment_dir": exp.location, "space": plan.space,
                "budget": budget, "plan": plan.to_dict(),
                "plan_hash": hashes, "resources": res, "provenance": info.get("provenance") or _provenance(),
                "done_strata": done_strata, "tune_names": tune_names, "shared_storage": shared,
                **({"design": info["design"]} if info.get("design") else {}),
                "runs": f"{shared}/{RUNS_DIR}", "status": RUNNING}
        exp_dir.mkdir(parents=True, exist_ok=True)
        _write_experiment(exp, info)
        say(format_plan(plan, res, exp))
        ray_dir, runs_root = f"{shared}/ray", f"{shared}/{RUNS_DIR}"
        failed = []
        for stratum in plan.strata:
            if stratum.name in done_strata:
                say(f"stratum {stratum.name}: already finished, skipped")
                continue
            stratum_hash = hashes["strata"][stratum.name]
            extending = stratum.name in old_hashes and old_hashes[stratum.name] != stratum_hash
            tune_name = tune_names.get(stratum.name, stratum.name)
            if extending and not tune_name.endswith(stratum_hash[:8]):
                tune_name = f"{stratum.name}-{stratum_hash[:8]}"
            tune_names[stratum.name] = tune_name
            info["tune_names"] = tune_names
            _write_experiment(exp, info)
            trainable = rt.with_resources(
                rt.with_parameters(ict_trial, stratum={"name": stratum.name, "fixed": stratum.fixed},
                                   seeds=plan.seeds, metric=plan.metric, runs_root=runs_root,
                                   cpus_per_trial=res["cpus_per_trial"], workers=workers_per_trial,
                                   gpus_per_worker=gpus_per_worker, ray_train=ray_train, ray_storage=ray_dir,
                                   reuse=index, objectives=plan.metrics if plan.multi else None),
                res["trial"])
            path = f"{ray_dir}/{tune_name}"
            if resume and rt.Tuner.can_restore(path):
                tuner = rt.Tuner.restore(path, trainable=trainable, resume_errored=True)
            else:
                samples, evaluated = None, []
                if extending:
                    recorded, evaluated = _recorded(exp_dir, stratum.name, plan)
                    samples = stratum.num_samples - recorded
                    say(f"stratum {stratum.name}: --extend, {recorded} configuration(s) recorded, "
                        f"{max(samples, 0)} more")
                    if samples <= 0:
                        done_strata.append(stratum.name)
                        continue
                search_alg, param_space, samples = _search(plan, stratum, res["max_concurrent_trials"],
                                                           # an extended stratum's new searcher
                                                           # draws anew (its name carries the plan's hash)
                                                           stratum_seed(plan.search_seed, tune_name),
                                                           samples, evaluated, journal, name)
                stratum_info = {"name": stratum.name, "fixed": stratum.fixed}
                planned = samples if plan.algorithm != "grid" else len(param_space["variant"]["grid_search"])
                callbacks = [ParquetCallback(str(exp_dir), name, plan.space, stratum_info, plan.seeds, runs_root,
                                             ledger=tune_name, planned=planned,
                                             experiment_uri=exp.location if exp.is_uri else None,
                                             metadata=table_metadata(name, plan.space, searched_keys(plan),
                                                                     plan.metrics if plan.multi else plan.metric,
                                                                     plan.modes if plan.multi else plan.mode),
                                             hparams=hparam_keys(plan),
                                             trackers={"names": list(trackers or []),
                                                       "tracking_uri": tracking_uri}),
                             ProgressCallback(stratum.name, list(plan.params), plan.metric, plan.mode,
                                              total=planned, quiet=quiet)]
                tuner = rt.Tuner(
                    trainable, param_space=param_space,
                    # A multi-objective searcher holds its metrics itself (Tune's own take one).
                    tune_config=rt.TuneConfig(metric=None if plan.multi else plan.metric,
                                              mode=None if plan.multi else plan.mode, search_alg=search_alg,
                                              scheduler=_scheduler(plan, stratum), num_samples=samples,
                                              max_concurrent_trials=res["max_concurrent_trials"],
                                              reuse_actors=True),
                    run_config=rt.RunConfig(name=tune_name, storage_path=ray_dir, callbacks=callbacks,
                                            verbose=0, log_to_file=True,
                                            failure_config=rt.FailureConfig(max_failures=res["max_failures"])))
            with StopTrialsOnInterrupt(Store(runs_root), stratum.name, say=say) as guard:
                tuner.fit()
            exp.push()
            outcome = _stratum_outcome(exp_dir, tune_name)
            if outcome["interrupted"] or guard.interrupted:
                info.update(status=INTERRUPTED, interrupted_stratum=stratum.name)
                _write_experiment(exp, info)
                say(f"stratum {stratum.name}: interrupted, {outcome['ended']} of {outcome['planned']} trial(s) "
                    f"ended; continue with --resume")
                return exp_dir
            if outcome["errored"]:
                failed.append(stratum.name)
                say(f"stratum {stratum.name}: {outcome['errored']} of {outcome['planned']} trial(s) errored; "
                    "not finished (--resume retries them)")
                continue
            done_strata.append(stratum.name)
            info["done_strata"] = done_strata
            _write_experiment(exp, info)
        info["done_strata"] = done_strata
        if not failed and plan.design is not None and plan.claims:
            def fresh_index():
                out = reuse_index(reuse)
                out.update({k: v for k, v in reuse_index([*reuse_optional, exp_dir], required=False).items()
                            if k not in out})
                return out

            def make_trainable(stratum, seeds):
                return rt.with_resources(
                    rt.with_parameters(ict_trial, stratum={"name": stratum.name, "fixed": stratum.fixed},
                                       seeds=seeds, metric=plan.metric, runs_root=runs_root,
                                       cpus_per_trial=res["cpus_per_trial"], workers=workers_per_trial,
                                       gpus_per_worker=gpus_per_worker, ray_train=ray_train, ray_storage=ray_dir,
                                       reuse=fresh_index()),
                    res["trial"])

            share = len(plan.claims) / max(family or len(plan.claims), len(plan.claims))
            extras = {"metadata": table_metadata(name, plan.space, searched_keys(plan), plan.metric, plan.mode),
                      "hparams": hparam_keys(plan),
                      "trackers": {"names": list(trackers or []), "tracking_uri": tracking_uri}}
            ended = _design_rounds(plan, exp, name, info, res, runs_root, ray_dir, make_trainable, say, quiet,
                                   share, extras)
            if ended == INTERRUPTED:
                info.update(status=INTERRUPTED)
                _write_experiment(exp, info)
                return exp_dir
            if ended == ERRORED:
                failed.append(info["design"]["pending"]["strata"][0])
        if failed:
            info.update(status=SEARCH_FAILED, failed_strata=failed, first_error=_first_error(exp_dir, failed))
        else:
            info.update(status=SEARCH_FINISHED, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        _write_experiment(exp, info)
    except KeyboardInterrupt:
        info.update(status=INTERRUPTED)
        _write_experiment(exp, info)
        raise
    finally:
        if started:
            ray.shutdown()
    return exp_dir


def _design_rounds(plan: Plan, exp: ExperimentFolder, name: str, info: dict, res: dict, runs_root: str, ray_dir: str,
                   make_trainable, say, quiet: bool, share: float = 1.0,
                   callback_extras: dict | None = None) -> str:
    """The design's later rounds (tune/designer.py, tune/rounds.py): test every declared claim on the runs so far
    (Holm over the claims, group-sequential per claim), then train only the arms of the claims still open, up to
    their next planned look, earlier seeds copied (tune/reuse.py), until no claim moves. Its state lives in
    experiment.json's `design` (looks per claim, decided claims, verdicts, the pending round), so --resume
    continues an interrupted round. `share` scales alpha (a campaign splits it between its searches by their
    number of claims). Returns "finished", INTERRUPTED or ERRORED."""
    import pandas as pd
    from ray import tune as rt
    from ray.tune.search import BasicVariantGenerator

    from ict_core.config import coerce
    from tune.designer import DECIDED, holm_verdicts, next_round
    from tune.progress import ParquetCallback, ProgressCallback
    from tune.store import Store
    from tune.trial import StopTrialsOnInterrupt
    from tune.rounds import UNTESTABLE, claim_arms, claim_data, signatures, verdict_record

    exp_dir = exp.dir
    callback_extras = callback_extras or {}
    design = plan.design
    state = info.setdefault("design", {})
    state.setdefault("looks", {})
    state.setdefault("decided", [])
    state.setdefault("round", 1)
    metric = f"final_{plan.metric}"
    while True:
        trials = pd.read_parquet(exp_dir / TRIALS_FILE)
        pending = state.get("pending")
        if pending is None:
            arms, data = {}, []
            for claim in plan.claims:
                found = claim_arms(claim, trials, metric, plan.mode)
                d = claim_data(claim, found, state["looks"].get(claim.name, []), design.seeds_max,
                               plan.mode) if found else None
                if d is not None:
                    arms[claim.name] = found
                    data.append(d)
            verdicts = holm_verdicts(data, design.alpha * share, design.spending, state["decided"])
            state["looks"].update({d.name: d.looks for d in data})
            state["decided"] = [k for k, v in verdicts.items() if v.state == DECIDED]
            state["verdicts"] = {c.name: verdict_record(verdicts[c.name]) if c.name in verdicts
                                 else {"state": UNTESTABLE} for c in plan.claims}
            say(f"design round {state['round']}: " + "; ".join(
                f"{k} {v['state']}" + (f" at {v['seeds']} seeds" if "seeds" in v else "")
                for k, v in state["verdicts"].items()))
            trained = set(zip(signatures(trials), trials["seed"].astype(int)))
            seeds_now = {d.name: d.looks[-1] for d in data}
            targets = next_round(seeds_now, verdicts, design, {k: a["arms"] for k, a in arms.items()}, trained)
            grow = {k: t for k, t in targets.items() if t > seeds_now[k]}
            if not grow:
                info["design"] = state
                _write_experiment(exp, info)
                return "finished"
            by_name = {c.name: c for c in plan.claims}
            jobs: dict = {}
            for claim_name, target in grow.items():
                claim = by_name[claim_name]
                stratum = next(s for s in plan.strata if s.name == claim.stratum)
                keys = list(plan.params) + [k for v in stratum.variants for k in v if k not in plan.params]
                for sig in arms[claim_name]["arms"]:
                    row = arms[claim_name]["overrides"][sig]
                    overrides = {k: coerce(k, row[k].item() if hasattr(row[k], "item") else row[k])
                                 for k in dict.fromkeys(keys) if k in row.index and row[k] is not None
                                 and not (isinstance(row[k], float) and row[k] != row[k])}
                    old = jobs.get((claim.stratum, sig))
                    jobs[(claim.stratum, sig)] = {"stratum": claim.stratum, "overrides": overrides,
                                                  "target": max(target, old["target"] if old else 0)}
            pending = {"round": state["round"] + 1, "jobs": list(jobs.values()),
                       "strata": sorted({j["stratum"] for j in jobs.values()})}
            state["pending"] = pending
            info["design"] = state
            _write_experiment(exp, info)
        groups: dict = {}
        for job in pending["jobs"]:
            groups.setdefault((job["stratum"], int(job["target"])), []).append(job["overrides"])
        for (stratum_name, target), variants in sorted(groups.items()):
            stratum = next(s for s in plan.strata if s.name == stratum_name)
            tune_name = f"{stratum_name}-round{pending['round']}-{target}seeds"
            trainable = make_trainable(stratum, target)
            path = f"{ray_dir}/{tune_name}"
            say(f"design round {pending['round']}: {stratum_name}, {len(variants)} configuration(s) to {target} seeds")
            if rt.Tuner.can_restore(path):
                tuner = rt.Tuner.restore(path, trainable=trainable, resume_errored=True)
            else:
                stratum_info = {"name": stratum.name, "fixed": stratum.fixed}
                callbacks = [ParquetCallback(str(exp_dir), name, plan.space, stratum_info, target, runs_root,
                                             ledger=tune_name, planned=len(variants),
                                             experiment_uri=exp.location if exp.is_uri else None,
                                             **callback_extras),
                             ProgressCallback(stratum.name, list(plan.params), plan.metric, plan.mode,
                                              total=len(variants), quiet=quiet)]
                tuner = rt.Tuner(
                    trainable, param_space={"variant": rt.grid_search(variants)},
                    tune_config=rt.TuneConfig(metric=plan.metric, mode=plan.mode,
                                              search_alg=BasicVariantGenerator(
                                                  max_concurrent=res["max_concurrent_trials"]),
                                              num_samples=1, max_concurrent_trials=res["max_concurrent_trials"],
                                              reuse_actors=True),
                    run_config=rt.RunConfig(name=tune_name, storage_path=ray_dir, callbacks=callbacks, verbose=0,
                                            failure_config=rt.FailureConfig(max_failures=res["max_failures"]),
                                            log_to_file=True))
            with StopTrialsOnInterrupt(Store(runs_root), stratum_name, say=say) as guard:
                tuner.fit()
            exp.push()
            outcome = _stratum_outcome(exp_dir, tune_name)
            if outcome["interrupted"] or guard.interrupted:
                return INTERRUPTED
            if outcome["errored"]:
                return ERRORED
        state["round"] = pending["round"]
        state["pending"] = None
        info["design"] = state
        _write_experiment(exp, info)


def _first_error(exp_dir: Path, strata: list[str]) -> str | None:
    import pandas as pd

    path = exp_dir / TRIALS_FILE
    if not path.exists():
        return None
    rows = pd.read_parquet(path)
    rows = rows[rows["stratum"].isin(strata) & (rows["status"] == ERRORED)]
    return None if rows.empty else str(rows["error"].iloc[0])


def print_summary(exp_dir: Path, metric: str, mode: str, location: str | None = None) -> None:
    """The end of a search: where its tables are (`location`: the URI of an experiment in storage) and the best
    configuration per stratum."""
    import pandas as pd

    from tune.progress import summary_lines

    trials = exp_dir / TRIALS_FILE
    where = location or str(exp_dir)
    if not trials.exists():  # interrupted before any run was recorded: point at nothing that is not there
        print(f"\nno run recorded yet in {where} ({TRIALS_FILE} is written when the first run ends)")
        return
    print(f"\ntrials: {join(where, TRIALS_FILE)}"
          + (f"\nevals:  {join(where, EVALS_FILE)}" if (exp_dir / EVALS_FILE).exists() else ""))
    code = f"import pandas as pd; print(pd.read_parquet({join(where, TRIALS_FILE)!r}))"
    print(f"read:   {shlex.quote(sys.executable)} -c {shlex.quote(code)}")
    for line in summary_lines(pd.read_parquet(trials), metric, mode):
        print(line)
    print(f"report: {command('ict-report', shlex.quote(str(REPO_ROOT / 'analysis' / 'report.py')))} "
          f"{shlex.quote(where)}")


# ---- CLI --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help="a shipped space name (see --list-spaces) or a path to a .yaml file")
    p.add_argument("--budget", default="smoke", help=f"one of {', '.join(BUDGETS)} (default smoke)")
    p.add_argument("--num-samples", type=int, help="configurations per stratum (default: the budget's)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0)")
    p.add_argument("--storage", default=os.environ.get("ICT_STORAGE") or DEFAULT_STORAGE,
                   help="where experiments go: a folder or a URI such as s3://BUCKET/PREFIX (then the tables, "
                        "run folders and Ray's state all go there; a resume reads them back from it) "
                        "(default $ICT_STORAGE when set, else ./results)")
    p.add_argument("--ray-storage", default=None,
                   help="the experiment's shared storage (run folders in runs/, Ray's state in ray/); must be seen "
                        "by every node, e.g. s3://BUCKET/ict/NAME (default: the experiment folder, or "
                        "$ICT_STORAGE/NAME when ICT_STORAGE is set)")
    p.add_argument("--name", help="experiment name (default <space>-<budget>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment of the same name")
    p.add_argument("--extend", action="store_true",
                   help="with --resume: accept a changed plan (e.g. more --num-samples) and search the changed "
                        "strata further, telling the searcher what they already measured")
    p.add_argument("--ray-train", action="store_true",
                   help="run every trial's seeds through Ray Train, even with one CPU worker (the GPU path)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan and its compute (runs, steps, images, and the time a few real "
                        "training steps measured here give) and exit without Ray")
    p.add_argument("--no-timing", action="store_true", help="with --dry-run: count runs and images, time no steps")
    p.add_argument("--list-spaces", action="store_true", help="list the shipped spaces and exit")
    p.add_argument("--reuse", nargs="+", metavar="DIR",
                   help="experiment (or campaign) folders whose finished runs are copied, not trained again, "
                        "where a trial's run_key matches (tune/reuse.py); this experiment's own runs always are")
    p.add_argument("--pilot", nargs="+", metavar="DIR",
                   help="with --dry-run: earlier experiment folder(s) whose seed spread gives each claim's smallest "
                        "detectable effect (80%% power at seeds_max), e.g. docs/findings/cpu/weighting")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted config override for every trial, e.g. --set data.path=/data/cifar (repeatable)")
    p.add_argument("--strata", help="comma-separated strata to run (default: all)")
    p.add_argument("--max-concurrent", type=int, help="concurrent trials (default: the space's)")
    p.add_argument("--address", help="Ray cluster address; 'local' starts a private local instance (default: "
                                     "RAY_ADDRESS, else the cluster running on this node, else a new local one)")
    p.add_argument("--max-failures", type=int, default=None,
                   help=f"retries of a failed trial (a lost node), each from its run folder's last checkpoint; -1 "
                        f"retries without limit (default: 0 on a new local instance, {DEFAULT_CLUSTER_FAILURES} on a "
                        f"cluster)")
    p.add_argument("--tracker", action="append", default=[], metavar="NAME",
                   help="also log every recorded run (full config, every evaluation metric) to mlflow or wandb "
                        "(repeatable; the mlflow / wandb extras); W&B runs offline unless WANDB_MODE is set")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --tracker mlflow (default: a local SQLite store, "
                                          "EXPERIMENT_DIR/mlflow.db)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.list_spaces:
            for name in list_spaces():
                space = load_space(name)
                print(f"{name:<16} {space.question or space.description}")
            return 0
        if not args.space:
            raise SearchError("--space is required (a shipped name or a .yaml path); see --list-spaces")
        extra = parse_overrides(args.set)
        strata = [s for s in (args.strata or "").split(",") if s]
        check_storage_option(args.storage, "--storage", SearchError)
        from tune.trackers import check_trackers

        check_trackers(args.tracker, args.tracking_uri)
        check_max_failures(args.max_failures)
        if args.dry_run:
            plan = resolve_plan(args.space, args.budget, args.num_samples, extra, strata)
            check_plan_paths(plan)
            if args.max_concurrent:
                plan.max_concurrent = args.max_concurrent
            name = args.name or f"{plan.space}-{args.budget}"
            res = resources(plan, args.workers_per_trial, args.gpus_per_worker, None, args.ray_train)
            res["ray"] = "would use " + resolve_address(args.address).describe()
            exp_dir = None if is_uri(args.storage) else Path(args.storage).expanduser().resolve() / name
            print(format_plan(plan, res, join(args.storage, name) if exp_dir is None else exp_dir))
            from tune.campaign import compute_lines, total_line  # the campaign's estimate, for one search

            lines, total = compute_lines(plan, res, {}, measure=not args.no_timing)
            print("\n".join(lines + [total_line(f"search: {len(plan.strata)} stratum(s)", total)]))
            print("\n".join(plan_power(plan, args.pilot, exp_dir)))
            return 0
        exp_dir = run_search(args.space, args.budget, args.num_samples, args.storage, args.name, args.resume,
                             args.workers_per_trial, args.gpus_per_worker, extra=extra, strata=strata,
                             address=args.address, max_concurrent=args.max_concurrent,
                             ray_storage=args.ray_storage, extend=args.extend, ray_train=args.ray_train,
                             reuse=args.reuse or (), trackers=args.tracker, tracking_uri=args.tracking_uri,
                             max_failures=args.max_failures)
    except BadInput as err:
        return bad_input(err)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    plan = load_space(args.space)
    info = json.loads((exp_dir / "experiment.json").read_text())
    print_summary(exp_dir, plan.metric, plan.mode, info.get("experiment_dir"))
    if info.get("status") == INTERRUPTED:
        print(f"interrupted; continue with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    if info.get("status") == SEARCH_FAILED:
        first = (info.get("first_error") or "unknown error").strip().splitlines()[0]
        print(f"error: trials errored in stratum(s) {', '.join(info.get('failed_strata', []))}; the first error:\n"
              f"  {first}\n(the whole traceback is in the error column of {join(str(info.get('experiment_dir') or exp_dir), TRIALS_FILE)}, the "
              f"trial's output in its runs/<stratum>/<trial_id>/stderr.log)\nfix it, then retry the errored trials "
              f"with: {_resume_command(argv)}", file=sys.stderr)
        return 1
    return 0


def _resume_command(argv) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return f"{search_command()} " + " ".join(shlex.quote(a) for a in args)


def search_command() -> str:
    """ict-search as a printed hint gives it: a command that works from any folder (ict_core.cli.command)."""
    return command("ict-search", shlex.quote(str(REPO_ROOT / "tune" / "search.py")))


if __name__ == "__main__":
    sys.exit(main())
