"""Hyperparameter searches over iCT with Ray Tune + Optuna; results land in Parquet tables.

    python tune/search.py --space c_scaling --budget smoke
    python tune/search.py --space my_space.yaml --budget cpu --num-samples 20 --storage /data/results
    python tune/search.py --space c_scaling --budget smoke --resume      # after a crash or Ctrl-C
    python tune/search.py --space dropout --dry-run                     # print the plan, start nothing
    python tune/search.py --list-spaces

Each stratum of a space (e.g. one data set) is searched on its own, with its own searcher and trial budget, one
stratum after the other. Results: EXPERIMENT_DIR/trials.parquet (one row per training run = one seed of one
configuration), evals.parquet (one row per evaluation) and experiment.json (space, budget, plan, provenance);
Ray's own files go to EXPERIMENT_DIR/ray/<stratum>.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: import the repository's packages, not sibling files of this folder.
    _ROOT = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, _ROOT)

from ict_core.config import ConfigError, parse_overrides  # noqa: E402
from tune.space import BUDGETS, Plan, SpaceError, list_spaces, load_space  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = "results"
# Tune snapshots its experiment state at most this often; a resume starts from the last snapshot.
SNAPSHOT_S = "2"


class SearchError(ValueError):
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


def resources(plan: Plan, workers: int, gpus_per_worker: float, cluster: dict | None) -> dict:
    """Trial resources and the number of concurrent trials that fit the cluster (RAY_NOTES 2).

    A one-worker CPU trial trains in its own process and holds a CPU share; a Ray Train trial holds 0.01 CPU while
    its workers hold their own placement group, so concurrency is computed from the workers' needs."""
    cpus = float((cluster or {}).get("CPU", os.cpu_count() or 1))
    gpus = float((cluster or {}).get("GPU", 0))
    if workers < 1:
        raise SearchError(f"--workers-per-trial must be >= 1, got {workers}")
    if gpus_per_worker < 0:
        raise SearchError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if workers == 1 and gpus_per_worker == 0:
        per_trial = max(1, int(cpus // plan.max_concurrent))
        concurrent = max(1, min(plan.max_concurrent, int(cpus // per_trial)))
        return {"mode": "in-trial", "trial": {"cpu": per_trial}, "cpus_per_trial": per_trial,
                "max_concurrent_trials": concurrent, "cluster": {"CPU": cpus, "GPU": gpus}}
    # One CPU per worker where it fits; on a small machine a share, so one trial still runs (RAY_NOTES 2: 0.49).
    cpus_per_worker = 1.0 if cpus >= 0.01 + workers else max(0.01, math.floor((cpus - 0.01) / workers * 100) / 100)
    need_cpu = 0.01 + workers * cpus_per_worker
    fit = int(cpus // need_cpu)
    if gpus_per_worker > 0:
        fit = min(fit, int(gpus // (workers * gpus_per_worker))) if gpus else 0
    if cluster is not None and fit < 1:
        raise SearchError(f"one trial needs {workers} worker(s) x ({cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU); the cluster has "
                          f"{cpus:g} CPU and {gpus:g} GPU")
    return {"mode": "ray-train", "trial": {"cpu": 0.01}, "cpus_per_trial": cpus_per_worker, "workers": workers,
            "gpus_per_worker": gpus_per_worker, "max_concurrent_trials": max(1, min(plan.max_concurrent, fit)),
            "cluster": {"CPU": cpus, "GPU": gpus}}


def format_plan(plan: Plan, res: dict, exp_dir: Path) -> str:
    lines = [f"space      {plan.space} ({plan.source})", f"question   {plan.question or '-'}",
             f"budget     {plan.budget}", f"experiment {exp_dir}",
             f"search     {plan.algorithm} (seed {plan.search_seed}), metric {plan.metric} ({plan.mode}), "
             f"scheduler {plan.scheduler.get('type')}"
             + (f" (grace_period {plan.scheduler['grace_period']} steps, reduction_factor "
                f"{plan.scheduler['reduction_factor']})" if plan.scheduler.get("type") == "asha" else ""),
             f"seeds      {plan.seeds} per configuration (the searcher sees their mean)",
             f"resources  {res['mode']}: trial {res['trial']}"
             + (f", {res['workers']} worker(s) x ({res['cpus_per_trial']:g} CPU, {res['gpus_per_worker']:g} GPU)"
                if res["mode"] == "ray-train" else "")
             + f", {res['max_concurrent_trials']} concurrent trial(s) on {res['cluster']['CPU']:g} CPU"
               f" / {res['cluster']['GPU']:g} GPU"]
    if plan.params:
        lines.append("searched")
        for key, p in plan.params.items():
            rng = f"[{p.low}, {p.high}]" if p.low is not None else "{" + ", ".join(map(str, p.values)) + "}"
            lines.append(f"  {key:<24} {p.type} {rng}")
    for s in plan.strata:
        lines.append(f"stratum {s.name}: {s.dataset}, d={s.dim}, {s.num_samples} configuration(s) x {plan.seeds} "
                     f"seed(s)")
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
def ray_env() -> dict:
    """Environment the Ray workers need to import this repository's packages."""
    path = os.environ.get("PYTHONPATH", "")
    parts = [p for p in path.split(os.pathsep) if p]
    if str(REPO_ROOT) not in parts:
        parts.insert(0, str(REPO_ROOT))
    return {"PYTHONPATH": os.pathsep.join(parts)}


def start_ray(address: str | None = None) -> bool:
    """Connect to Ray unless already connected; returns True when this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    env = ray_env()
    if address in (None, "", "local"):
        os.environ.update(env)  # the local raylet and its workers inherit it
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                 log_to_driver=False, logging_level="ERROR", configure_logging=True)
    else:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": env})
    return True


def _distribution(p):
    from ray import tune as rt

    if p.type == "loguniform":
        return rt.loguniform(p.low, p.high)
    if p.type == "uniform":
        return rt.uniform(p.low, p.high)
    if p.type == "int":
        return rt.lograndint(p.low, p.high + 1) if p.log else rt.randint(p.low, p.high + 1)
    if p.type == "choice":
        return rt.choice(list(p.values))
    return rt.grid_search(list(p.values))


def stratum_seed(seed: int, stratum: str) -> int:
    """Each stratum its own sampler seed (stable under --strata), so strata do not all try the same values."""
    return seed + zlib.crc32(stratum.encode()) % 100_000


def _search(plan: Plan, stratum, concurrent: int, seed: int):
    """(search_alg, param_space, num_samples) of one stratum; `seed` seeds its sampler."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from ray import tune as rt

    if plan.algorithm == "grid":
        return (BasicVariantGenerator(max_concurrent=concurrent),
                {"variant": rt.grid_search(stratum.variants)}, 1)
    space = {key: _distribution(p) for key, p in plan.params.items()}
    if plan.algorithm == "random":
        return (BasicVariantGenerator(points_to_evaluate=stratum.points or None, max_concurrent=concurrent,
                                      random_state=seed), space, stratum.num_samples)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(metric=plan.metric, mode=plan.mode, points_to_evaluate=stratum.points or None,
                            sampler=optuna.samplers.TPESampler(seed=seed))
    return ConcurrencyLimiter(searcher, max_concurrent=concurrent), space, stratum.num_samples


def _scheduler(plan: Plan, stratum):
    if plan.scheduler.get("type") != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    total_steps = int(stratum.fixed.get("train.total_steps") or _default("train.total_steps"))
    # max_t one step past the last report: ASHA must not stop a trial at its own end, before the final
    # report that carries the mean over seeds.
    return ASHAScheduler(time_attr="trial_step", max_t=plan.seeds * total_steps + 1,
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


def _default_ray_storage(exp_dir: Path, name: str) -> str:
    shared = os.environ.get("ICT_STORAGE", "").rstrip("/")
    return f"{shared}/{name}/ray" if shared else str(exp_dir / "ray")


def run_search(space, budget="smoke", num_samples=None, storage=None, name=None, resume=False,
               workers_per_trial=1, gpus_per_worker=0, *, extra=None, strata=None, address=None,
               max_concurrent=None, quiet=False, ray_storage=None) -> Path:
    """Run (or resume) a search; returns the experiment folder holding trials.parquet and evals.parquet.

    `extra` are dotted overrides for every trial (the CLI's --set), `strata` limits the search to some strata,
    `max_concurrent` overrides the space's concurrency, `address` names a Ray cluster (default: a local one).
    `ray_storage` is where Ray keeps trial checkpoints: EXPERIMENT_DIR/ray by default, or $ICT_STORAGE/NAME/ray
    when that is set (cluster.yaml sets it to s3), since on several nodes it must be shared. The Parquet tables
    are always written by the driver into the local experiment folder."""
    plan = resolve_plan(space, budget, num_samples, extra, strata)
    if max_concurrent is not None:
        plan.max_concurrent = int(max_concurrent)
    name = name or f"{plan.space}-{budget}"
    exp_dir = Path(storage or DEFAULT_STORAGE).expanduser().resolve() / name
    info_path = exp_dir / "experiment.json"
    if info_path.exists() and not resume:
        raise SearchError(f"experiment {exp_dir} exists; pass --resume to continue it or --name for a new one")
    info = json.loads(info_path.read_text()) if (resume and info_path.exists()) else {}
    if info and info.get("space") != plan.space:
        raise SearchError(f"--resume: {exp_dir} holds space {info.get('space')!r}, not {plan.space!r}")

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_S)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune as rt

    from tune.progress import ParquetCallback, ProgressCallback
    from tune.trial import ict_trial

    started = start_ray(address)
    try:
        res = resources(plan, workers_per_trial, gpus_per_worker, ray.cluster_resources())
        done_strata = list(info.get("done_strata", []))
        info = {"experiment": name, "space": plan.space, "budget": budget, "plan": plan.to_dict(),
                "resources": res, "provenance": info.get("provenance") or _provenance(),
                "done_strata": done_strata}
        exp_dir.mkdir(parents=True, exist_ok=True)
        _write_experiment(exp_dir, info)
        def say(text: str) -> None:
            if not quiet:
                print(text, flush=True)

        say(format_plan(plan, res, exp_dir))
        ray_dir = ray_storage or info.get("ray_storage") or _default_ray_storage(exp_dir, name)
        info["ray_storage"] = ray_dir
        _write_experiment(exp_dir, info)
        for stratum in plan.strata:
            if stratum.name in done_strata:
                say(f"stratum {stratum.name}: already finished, skipped")
                continue
            trainable = rt.with_resources(
                rt.with_parameters(ict_trial, stratum={"name": stratum.name, "fixed": stratum.fixed},
                                   seeds=plan.seeds, metric=plan.metric, cpus_per_trial=res["cpus_per_trial"],
                                   workers=workers_per_trial, gpus_per_worker=gpus_per_worker,
                                   storage=str(ray_dir)),
                res["trial"])
            path = f"{ray_dir.rstrip('/')}/{stratum.name}"
            if resume and rt.Tuner.can_restore(path):
                tuner = rt.Tuner.restore(path, trainable=trainable, resume_errored=True)
            else:
                search_alg, param_space, samples = _search(plan, stratum, res["max_concurrent_trials"],
                                                           stratum_seed(plan.search_seed, stratum.name))
                callbacks = [ParquetCallback(str(exp_dir), name, plan.space,
                                             {"name": stratum.name, "fixed": stratum.fixed}),
                             ProgressCallback(stratum.name, list(plan.params), plan.metric, quiet=quiet)]
                tuner = rt.Tuner(
                    trainable, param_space=param_space,
                    tune_config=rt.TuneConfig(metric=plan.metric, mode=plan.mode, search_alg=search_alg,
                                              scheduler=_scheduler(plan, stratum), num_samples=samples,
                                              max_concurrent_trials=res["max_concurrent_trials"],
                                              reuse_actors=True),
                    run_config=rt.RunConfig(name=stratum.name, storage_path=str(ray_dir), callbacks=callbacks,
                                            verbose=0, failure_config=rt.FailureConfig(max_failures=0),
                                            checkpoint_config=rt.CheckpointConfig(num_to_keep=1),
                                            log_to_file=True))
            tuner.fit()
            done_strata.append(stratum.name)
            info["done_strata"] = done_strata
            _write_experiment(exp_dir, info)
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write_experiment(exp_dir, info)
    finally:
        if started:
            ray.shutdown()
    return exp_dir


def print_summary(exp_dir: Path, metric: str, mode: str) -> None:
    import pandas as pd

    from tune.progress import summary_lines

    trials = exp_dir / "trials.parquet"
    print(f"\ntrials: {trials}\nevals:  {exp_dir / 'evals.parquet'}")
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
                   help="where Ray keeps trial checkpoints; must be shared on several nodes, e.g. s3://BUCKET/ict "
                        "(default: EXPERIMENT_DIR/ray, or $ICT_STORAGE/NAME/ray when ICT_STORAGE is set)")
    p.add_argument("--name", help="experiment name (default <space>-<budget>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment of the same name")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit without Ray")
    p.add_argument("--list-spaces", action="store_true", help="list the shipped spaces and exit")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted config override for every trial, e.g. --set data.path=/data/cifar (repeatable)")
    p.add_argument("--strata", help="comma-separated strata to run (default: all)")
    p.add_argument("--max-concurrent", type=int, help="concurrent trials (default: the space's)")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
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
        if args.dry_run:
            plan = resolve_plan(args.space, args.budget, args.num_samples, extra, strata)
            if args.max_concurrent:
                plan.max_concurrent = args.max_concurrent
            name = args.name or f"{plan.space}-{args.budget}"
            res = resources(plan, args.workers_per_trial, args.gpus_per_worker, None)
            print(format_plan(plan, res, Path(args.storage).expanduser().resolve() / name))
            return 0
        exp_dir = run_search(args.space, args.budget, args.num_samples, args.storage, args.name, args.resume,
                             args.workers_per_trial, args.gpus_per_worker, extra=extra, strata=strata,
                             address=args.address, max_concurrent=args.max_concurrent,
                             ray_storage=args.ray_storage)
        plan = load_space(args.space)
        print_summary(exp_dir, plan.metric, plan.mode)
        return 0
    except (SpaceError, SearchError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
