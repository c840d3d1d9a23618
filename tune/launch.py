"""Running a search's plan (tune/plan.py) on Ray: the experiment folder and its experiment.json, the strata's
Tuners fitted at the same time (tune/tuners.py), --resume and --extend, the designer's later rounds, and how the
search ended (status finished | failed | interrupted). tune/search.py is its command line."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ict_core.records import (COMPLETED, ERRORED, INTERRUPTED, JOURNAL_FILE, RUNNING, SEARCH_FAILED,
                              SEARCH_FINISHED, TRIALS_FILE)
from tune.cluster import connect
from tune.design_rounds import design_rounds
from tune.plan import SearchError, check_max_failures, format_plan, plan_changes, plan_hashes, resolve_plan, resources
from tune.space_schema import Plan
from tune.experiment_folder import ExperimentFolder
from tune.store import RUNS_DIR, StoreError, check_storage, is_uri, join

DEFAULT_STORAGE = "results"
# Tune snapshots its experiment state at most this often; a resume starts from the last snapshot.
SNAPSHOT_S = "2"
# Retries of a failed trial on a cluster (a spot node lost, a raylet killed) when --max-failures is not given.
DEFAULT_CLUSTER_FAILURES = 3


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



def _first_error(exp_dir: Path, strata: list[str]) -> str | None:
    import pandas as pd

    path = exp_dir / TRIALS_FILE
    if not path.exists():
        return None
    rows = pd.read_parquet(path)
    rows = rows[rows["stratum"].isin(strata) & (rows["status"] == ERRORED)]
    return None if rows.empty else str(rows["error"].iloc[0])



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
    write to it (tune/experiment_folder.ExperimentFolder), and a resume reads them back from it. The returned
    folder is the local copy; experiment.json's `experiment_dir` names the URI.
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
    exp, info = _open_experiment(plan, str(storage or DEFAULT_STORAGE), name, resume)
    hashes = plan_hashes(plan)
    changed = plan_changes(info.get("plan_hash", {}), hashes) if info.get("plan_hash") else []
    if changed and not extend:
        raise SearchError(f"--resume: the plan differs from the one {exp} was started with ({'; '.join(changed)}); "
                          "resume with the same --budget, --num-samples and --set, or pass --extend to search the "
                          "changed strata further")

    def fresh_index() -> dict:
        from tune.reuse import reuse_index

        index = reuse_index(reuse)  # a --reuse folder without an experiment fails here, before Ray
        index.update({k: v for k, v in reuse_index([*reuse_optional, exp.dir], required=False).items()
                      if k not in index})
        return index

    index = fresh_index()
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_S)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    connection = connect(address, num_cpus=os.cpu_count())
    try:
        ctx, info = _launch(plan, exp, name, budget, info, hashes, connection,
                            dict(workers=workers_per_trial, gpus_per_worker=gpus_per_worker, ray_train=ray_train,
                                 index=index, quiet=quiet),
                            max_concurrent=max_concurrent, max_failures=max_failures, ray_storage=ray_storage,
                            trackers={"names": list(trackers or []), "tracking_uri": tracking_uri})
        _run_plan(ctx, exp, info, hashes, resume, say, fresh_index,
                  share=len(plan.claims) / max(family or len(plan.claims), len(plan.claims), 1))
    except KeyboardInterrupt:
        info.update(status=INTERRUPTED)
        info.pop("old_hashes", None)
        _write_experiment(exp, info)
        raise
    finally:
        if connection.started:
            ray.shutdown()
    return exp.dir


def _open_experiment(plan: Plan, storage: str, name: str, resume: bool) -> tuple[ExperimentFolder, dict]:
    """The experiment folder (a local copy of a URI one, pulled) and what its experiment.json holds ({} for a new
    one); refuses a folder that exists without --resume, a --resume without one, another space, a moved folder."""
    try:
        check_storage(storage, "--storage")
        exp = ExperimentFolder(join(storage, name) if is_uri(storage) else Path(storage).expanduser().resolve() / name)
        found = exp.exists("experiment.json")
    except StoreError as err:
        raise SearchError(str(err)) from None
    if found and not resume:
        raise SearchError(f"experiment {exp} exists; pass --resume to continue it or --name for a new one")
    if resume and not found:
        raise SearchError(f"--resume: no experiment at {exp} (no experiment.json); check --storage and --name")
    exp.pull()  # a URI experiment: the local copy becomes what storage holds (nothing left of an older copy)
    info = json.loads((exp.dir / "experiment.json").read_text()) if resume else {}
    if info and info.get("space") != plan.space:
        raise SearchError(f"--resume: {exp} holds space {info.get('space')!r}, not {plan.space!r}")
    _check_not_moved(info, exp.location, name)
    return exp, info


def _launch(plan: Plan, exp: ExperimentFolder, name: str, budget: str, info: dict, hashes: dict, connection,
            shared_opts: dict, *, max_concurrent, max_failures, ray_storage, trackers: dict):
    """On the connected Ray: the trials' resources, this run's experiment.json content (status running; its
    `old_hashes` are the strata hashes it was started with, taken out before it is written) and what every
    Tuner of the search shares (tune.tuners.Launch)."""
    from tune.cluster import cluster_shape
    from tune.progress import hparam_keys, searched_keys
    from tune.results import table_metadata
    from tune.tuners import Launch

    res = resources(plan, shared_opts["workers"], shared_opts["gpus_per_worker"], cluster_shape(),
                    shared_opts["ray_train"],
                    # on one machine nothing queues past what fits, as before
                    concurrency_given=max_concurrent is not None and not connection.target.local)
    res["ray"] = connection.target.describe()
    if max_failures is None:
        max_failures = 0 if connection.target.local else DEFAULT_CLUSTER_FAILURES
    res["max_failures"] = int(max_failures)
    old_hashes = info.get("plan_hash", {}).get("strata", {})
    shared = (ray_storage or info.get("shared_storage") or _default_shared(exp, name)).rstrip("/")
    # The Optuna searcher's studies live in the experiment's journal (an experiment started before that keeps
    # the report's rebuilt journal); a grid or random search has no Optuna study to show.
    live = bool(info.get("live_journal")) if info else plan.algorithm == "optuna_tpe"
    info = {"live_journal": live, "experiment": name, "experiment_dir": exp.location, "space": plan.space,
            "budget": budget, "plan": plan.to_dict(), "plan_hash": hashes, "resources": res,
            "provenance": info.get("provenance") or _provenance(),
            "done_strata": [s for s in info.get("done_strata", [])
                            if old_hashes.get(s) in (None, hashes["strata"].get(s))],
            "tune_names": dict(info.get("tune_names", {})), "shared_storage": shared,
            **({"design": info["design"]} if info.get("design") else {}),
            "runs": f"{shared}/{RUNS_DIR}", "status": RUNNING, "old_hashes": old_hashes}
    exp.dir.mkdir(parents=True, exist_ok=True)
    extras = {"metadata": table_metadata(name, plan.space, searched_keys(plan),
                                         plan.metrics if plan.multi else plan.metric,
                                         plan.modes if plan.multi else plan.mode),
              "hparams": hparam_keys(plan), "trackers": trackers}
    ctx = Launch(plan=plan, name=name, exp_dir=exp.dir, experiment_uri=exp.location if exp.is_uri else None,
                 res=res, runs_root=f"{shared}/{RUNS_DIR}", ray_dir=f"{shared}/ray", callback_extras=extras,
                 journal=exp.dir / JOURNAL_FILE if live else None, **shared_opts)
    return ctx, info


def _run_plan(ctx, exp: ExperimentFolder, info: dict, hashes: dict, resume: bool, say, fresh_index,
              share: float) -> None:
    """Every stratum not yet done, all at the same time (tune.tuners.fit_strata); then the design's rounds;
    experiment.json's status says how it ended."""
    from tune.tuners import fit_strata

    old_hashes = info.pop("old_hashes")
    _write_experiment(exp, info)
    say(format_plan(ctx.plan, ctx.res, exp))
    jobs = _stratum_jobs(ctx, info, hashes, old_hashes, resume, say)
    _write_experiment(exp, info)
    interrupted = fit_strata(ctx, jobs, say) if jobs else False
    exp.push()
    failed = _record_outcomes(ctx, jobs, interrupted, info, say)
    if info.get("status") == INTERRUPTED:
        _write_experiment(exp, info)
        return
    plan = ctx.plan
    if not failed and plan.design is not None and plan.claims:
        ended = design_rounds(ctx, exp, info, say, share, fresh_index, _write_experiment)
        if ended == INTERRUPTED:
            info.update(status=INTERRUPTED)
            _write_experiment(exp, info)
            return
        if ended == ERRORED:
            failed.append(info["design"]["pending"]["strata"][0])
    if failed:
        info.update(status=SEARCH_FAILED, failed_strata=failed, first_error=_first_error(ctx.exp_dir, failed))
    else:
        info.update(status=SEARCH_FINISHED, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _write_experiment(exp, info)


def _stratum_jobs(ctx, info: dict, hashes: dict, old_hashes: dict, resume: bool, say) -> list:
    """A tune.tuners.StratumJob per stratum still to search: restored where a resumed stratum's Ray experiment
    is, else a new searcher (an --extend-ed stratum's under a new name, told what the stratum measured)."""
    from ray import tune as rt

    from tune.tuners import StratumJob, scheduler, search_algorithm, shared_concurrency, stratum_seed

    plan, done, names, jobs = ctx.plan, info["done_strata"], info["tune_names"], []
    ctx.per_tuner = shared_concurrency(ctx.res, sum(s.name not in done for s in plan.strata))
    for stratum in plan.strata:
        if stratum.name in done:
            say(f"stratum {stratum.name}: already finished, skipped")
            continue
        stratum_hash = hashes["strata"][stratum.name]
        extending = stratum.name in old_hashes and old_hashes[stratum.name] != stratum_hash
        tune_name = names.get(stratum.name, stratum.name)
        if extending and not tune_name.endswith(stratum_hash[:8]):
            tune_name = f"{stratum.name}-{stratum_hash[:8]}"
        names[stratum.name] = tune_name
        job = StratumJob(stratum, tune_name, plan.seeds, objectives=plan.metrics if plan.multi else None)
        if resume and rt.Tuner.can_restore(f"{ctx.ray_dir}/{tune_name}"):
            jobs.append(job)
            continue
        samples, evaluated = None, []
        if extending:
            recorded, evaluated = _recorded(ctx.exp_dir, stratum.name, plan)
            samples = stratum.num_samples - recorded
            say(f"stratum {stratum.name}: --extend, {recorded} configuration(s) recorded, {max(samples, 0)} more")
            if samples <= 0:
                done.append(stratum.name)
                continue
        # an extended stratum's new searcher draws anew (its name carries the plan's hash)
        job.search_alg, job.param_space, job.num_samples = search_algorithm(
            plan, stratum, ctx.per_tuner, stratum_seed(plan.search_seed, tune_name), samples,
            evaluated, ctx.journal, ctx.name)
        job.planned = job.num_samples if plan.algorithm != "grid" else len(job.param_space["variant"]["grid_search"])
        job.scheduler = scheduler(plan, stratum)
        jobs.append(job)
    return jobs


def _record_outcomes(ctx, jobs: list, interrupted: bool, info: dict, say) -> list[str]:
    """Each fitted stratum's end from its ledger: done (into done_strata), errored (returned), or interrupted
    (experiment.json's status, naming the first such stratum)."""
    from tune.tuners import stratum_outcome

    failed = []
    for job in jobs:
        name, outcome = job.stratum.name, stratum_outcome(ctx.exp_dir, job.tune_name)
        if outcome["interrupted"] or interrupted:
            if info.get("status") != INTERRUPTED:
                info.update(status=INTERRUPTED, interrupted_stratum=name)
            say(f"stratum {name}: interrupted, {outcome['ended']} of {outcome['planned']} trial(s) ended; "
                "continue with --resume")
        elif outcome["errored"]:
            failed.append(name)
            say(f"stratum {name}: {outcome['errored']} of {outcome['planned']} trial(s) errored; not finished "
                "(--resume retries them)")
        else:
            info["done_strata"].append(name)
    return failed
