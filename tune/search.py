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
the shared storage instead when one is given). Exit codes: 0 finished, 1 trials errored (the first error is
printed; --resume retries them), 2 bad input, 130 interrupted (--resume continues). docs/ARCHITECTURE.md has
the details.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import zlib
from pathlib import Path

from ict_core.cli import BadInput, bad_input, check_data_paths, check_writable_folder
from ict_core.config import load_config, parse_overrides
from ict_core.records import (COMPLETED, ERRORED, EVALS_FILE, INTERRUPTED, RUNNING, SEARCH_FAILED, SEARCH_FINISHED,
                              TRIALS_FILE)
from tune.cluster import ClusterShape, connect, pythonpath_env, resolve_address, trial_resources
from tune.space import BUDGETS, Plan, SpaceError, describe_search, list_spaces, load_space
from tune.storage import RUNS_DIR

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
    """--dry-run: the files every stratum's trials read exist here (data.path, eval.inception_path)."""
    for stratum in plan.strata:
        try:
            check_data_paths(load_config(overrides=stratum.first_config(plan.params)))
        except BadInput as err:
            raise SearchError(f"{plan.space}, stratum {stratum.name}: {err}") from None


def format_plan(plan: Plan, res: dict, exp_dir: Path) -> str:
    lines = [f"space      {plan.space} ({plan.source})", f"question   {plan.question or '-'}",
             f"budget     {plan.budget} (preset tune/budgets/{plan.budget}.yaml under every stratum's fixed keys)",
             f"experiment {exp_dir}",
             f"search     {plan.algorithm} (seed {plan.search_seed}), metric {plan.metric} ({plan.mode}), "
             f"scheduler {plan.scheduler.get('type')}"
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
    return "\n".join(lines)


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
            evaluated: list[tuple[dict, float]] = ()):
    """(search_alg, param_space, num_samples) of one stratum; `seed` seeds its sampler. `evaluated` are
    (params, value) pairs an earlier run of the stratum measured (--extend), told to Optuna before it starts."""
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
    if evaluated:
        done = [p for p, _ in evaluated]
        points = done + [p for p in points if p not in done]
        rewards = [v for _, v in evaluated]
        points = points[:len(rewards)]  # OptunaSearch needs one reward per point; the given points ran before
    searcher = SeedMeanOptuna(metric=plan.metric, mode=plan.mode, points_to_evaluate=points or None,
                              evaluated_rewards=rewards,
                              sampler=make_sampler(seed, stratum.num_samples, len(stratum.points)))
    return RetryAwareLimiter(searcher, max_concurrent=concurrent), space, samples


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


def _write_experiment(exp_dir: Path, info: dict) -> None:
    from tune.results import write_json_atomic

    write_json_atomic(info, exp_dir / "experiment.json")


def _check_not_moved(info: dict, exp_dir: Path, name: str) -> None:
    """Refuse to resume an experiment folder that was moved or copied from where it was created: Ray's saved
    search state (in its shared storage) names the old folder, so a resume here would train into, and record in,
    the old one while this one stays unfinished."""
    if not info:
        return
    shared = str(info.get("shared_storage") or "")
    old = info.get("experiment_dir")
    if old is None and shared and "://" not in shared and not os.environ.get("ICT_STORAGE"):
        old = shared if Path(shared).name == name else None  # experiments recorded before experiment_dir
    if old and Path(old) != exp_dir and (shared == old or "://" not in shared and Path(shared).is_relative_to(old)):
        raise SearchError(f"--resume: {exp_dir} was created as {old} and has been moved or copied since; its saved "
                          f"search state names the old folder, so resuming here would train into that one. Resume "
                          f"it where it was created (move it back to {old}), or start a new search with --name "
                          f"(its tables and run folders stay readable where they are)")


def _default_shared(exp_dir: Path, name: str) -> str:
    shared = os.environ.get("ICT_STORAGE", "").rstrip("/")
    return f"{shared}/{name}" if shared else str(exp_dir)


# ---- plan identity (--resume refuses a changed plan unless --extend) ---------------------------------
_NOT_PLAN = ("source", "description", "question", "max_concurrent", "skipped_strata", "strata")


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
    sets it to s3). The Parquet tables are always written by the driver into the local experiment folder.
    A resumed search refuses a changed plan unless `extend`: then changed strata run again under a new
    searcher that is told what the stratum already measured, up to the new number of configurations.
    `ray_train` sends one-worker CPU trials through Ray Train too. `max_failures`: how often Ray retries a
    trial that failed (a lost node, a killed process) from its run folder's last checkpoint before it counts as
    errored (default: 0 on a new local instance, DEFAULT_CLUSTER_FAILURES on a cluster)."""
    plan = resolve_plan(space, budget, num_samples, extra, strata)
    check_max_failures(max_failures)
    if max_concurrent is not None:
        if isinstance(max_concurrent, bool) or int(max_concurrent) < 1:
            raise SearchError(f"--max-concurrent must be an integer >= 1, got {max_concurrent!r}")
        plan.max_concurrent = int(max_concurrent)
    name = name or f"{plan.space}-{budget}"
    exp_dir = Path(storage or DEFAULT_STORAGE).expanduser().resolve() / name
    info_path = exp_dir / "experiment.json"
    if info_path.exists() and not resume:
        raise SearchError(f"experiment {exp_dir} exists; pass --resume to continue it or --name for a new one")
    if resume and not info_path.exists():
        raise SearchError(f"--resume: no experiment at {exp_dir} (no experiment.json); check --storage and --name")
    info = json.loads(info_path.read_text()) if resume else {}
    if info and info.get("space") != plan.space:
        raise SearchError(f"--resume: {exp_dir} holds space {info.get('space')!r}, not {plan.space!r}")
    _check_not_moved(info, exp_dir, name)
    hashes = plan_hashes(plan)
    changed = _plan_changes(info.get("plan_hash", {}), hashes) if info.get("plan_hash") else []
    if changed and not extend:
        raise SearchError(f"--resume: the plan differs from the one {exp_dir} was started with ({'; '.join(changed)}); "
                          "resume with the same --budget, --num-samples and --set, or pass --extend to search the "
                          "changed strata further")

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_S)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune as rt

    from tune.progress import ParquetCallback, ProgressCallback
    from tune.trial import ict_trial

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
        shared = (ray_storage or info.get("shared_storage") or _default_shared(exp_dir, name)).rstrip("/")
        info = {"experiment": name, "experiment_dir": str(exp_dir), "space": plan.space, "budget": budget,
                "plan": plan.to_dict(),
                "plan_hash": hashes, "resources": res, "provenance": info.get("provenance") or _provenance(),
                "done_strata": done_strata, "tune_names": tune_names, "shared_storage": shared,
                "runs": f"{shared}/{RUNS_DIR}", "status": RUNNING}
        exp_dir.mkdir(parents=True, exist_ok=True)
        _write_experiment(exp_dir, info)
        say(format_plan(plan, res, exp_dir))
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
            _write_experiment(exp_dir, info)
            trainable = rt.with_resources(
                rt.with_parameters(ict_trial, stratum={"name": stratum.name, "fixed": stratum.fixed},
                                   seeds=plan.seeds, metric=plan.metric, runs_root=runs_root,
                                   cpus_per_trial=res["cpus_per_trial"], workers=workers_per_trial,
                                   gpus_per_worker=gpus_per_worker, ray_train=ray_train, ray_storage=ray_dir),
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
                                                           samples, evaluated)
                stratum_info = {"name": stratum.name, "fixed": stratum.fixed}
                planned = samples if plan.algorithm != "grid" else len(param_space["variant"]["grid_search"])
                callbacks = [ParquetCallback(str(exp_dir), name, plan.space, stratum_info, plan.seeds, runs_root,
                                             ledger=tune_name, planned=planned),
                             ProgressCallback(stratum.name, list(plan.params), plan.metric, plan.mode,
                                              total=planned, quiet=quiet)]
                tuner = rt.Tuner(
                    trainable, param_space=param_space,
                    tune_config=rt.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=search_alg,
                                              scheduler=_scheduler(plan, stratum), num_samples=samples,
                                              max_concurrent_trials=res["max_concurrent_trials"],
                                              reuse_actors=True),
                    run_config=rt.RunConfig(name=tune_name, storage_path=ray_dir, callbacks=callbacks,
                                            verbose=0, failure_config=rt.FailureConfig(max_failures=res["max_failures"]),
                                            log_to_file=True))
            tuner.fit()
            outcome = _stratum_outcome(exp_dir, tune_name)
            if outcome["interrupted"]:
                info.update(status=INTERRUPTED, interrupted_stratum=stratum.name)
                _write_experiment(exp_dir, info)
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
            _write_experiment(exp_dir, info)
        info["done_strata"] = done_strata
        if failed:
            info.update(status=SEARCH_FAILED, failed_strata=failed, first_error=_first_error(exp_dir, failed))
        else:
            info.update(status=SEARCH_FINISHED, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        _write_experiment(exp_dir, info)
    except KeyboardInterrupt:
        info.update(status=INTERRUPTED)
        _write_experiment(exp_dir, info)
        raise
    finally:
        if started:
            ray.shutdown()
    return exp_dir


def _first_error(exp_dir: Path, strata: list[str]) -> str | None:
    import pandas as pd

    path = exp_dir / TRIALS_FILE
    if not path.exists():
        return None
    rows = pd.read_parquet(path)
    rows = rows[rows["stratum"].isin(strata) & (rows["status"] == ERRORED)]
    return None if rows.empty else str(rows["error"].iloc[0])


def print_summary(exp_dir: Path, metric: str, mode: str) -> None:
    import pandas as pd

    from tune.progress import summary_lines

    trials = exp_dir / TRIALS_FILE
    print(f"\ntrials: {trials}\nevals:  {exp_dir / EVALS_FILE}")
    print(f"read:   python -c \"import pandas as pd; print(pd.read_parquet('{trials}'))\"")
    if trials.exists():
        for line in summary_lines(pd.read_parquet(trials), metric, mode):
            print(line)
    print(f"report: python analysis/report.py {exp_dir}")


# ---- CLI --------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", help="a shipped space name (see --list-spaces) or a path to a .yaml file")
    p.add_argument("--budget", default="smoke", help=f"one of {', '.join(BUDGETS)} (default smoke)")
    p.add_argument("--num-samples", type=int, help="configurations per stratum (default: the budget's)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="results folder (default ./results)")
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
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit without Ray")
    p.add_argument("--list-spaces", action="store_true", help="list the shipped spaces and exit")
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
        check_writable_folder(args.storage, "--storage")
        check_max_failures(args.max_failures)
        if args.dry_run:
            plan = resolve_plan(args.space, args.budget, args.num_samples, extra, strata)
            check_plan_paths(plan)
            if args.max_concurrent:
                plan.max_concurrent = args.max_concurrent
            name = args.name or f"{plan.space}-{args.budget}"
            res = resources(plan, args.workers_per_trial, args.gpus_per_worker, None, args.ray_train)
            res["ray"] = "would use " + resolve_address(args.address).describe()
            print(format_plan(plan, res, Path(args.storage).expanduser().resolve() / name))
            return 0
        exp_dir = run_search(args.space, args.budget, args.num_samples, args.storage, args.name, args.resume,
                             args.workers_per_trial, args.gpus_per_worker, extra=extra, strata=strata,
                             address=args.address, max_concurrent=args.max_concurrent,
                             ray_storage=args.ray_storage, extend=args.extend, ray_train=args.ray_train,
                             max_failures=args.max_failures)
    except BadInput as err:
        return bad_input(err)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    plan = load_space(args.space)
    print_summary(exp_dir, plan.metric, plan.mode)
    info = json.loads((exp_dir / "experiment.json").read_text())
    if info.get("status") == INTERRUPTED:
        print(f"interrupted; continue with: {_resume_command(argv)}", file=sys.stderr)
        return 130
    if info.get("status") == SEARCH_FAILED:
        first = (info.get("first_error") or "unknown error").strip().splitlines()[0]
        print(f"error: trials errored in stratum(s) {', '.join(info.get('failed_strata', []))}; the first error:\n"
              f"  {first}\n(the whole traceback is in the error column of {exp_dir / TRIALS_FILE}, the "
              f"trial's output in its runs/<stratum>/<trial_id>/stderr.log)\nfix it, then retry the errored trials "
              f"with: {_resume_command(argv)}", file=sys.stderr)
        return 1
    return 0


def _resume_command(argv) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return "python tune/search.py " + " ".join(args)


if __name__ == "__main__":
    sys.exit(main())
