"""Ray's side of a search: each stratum's searcher and scheduler, its Tuner (built in one place, build_tuner, for
the strata and for the designer's rounds alike), and fitting the strata of a search at the same time
(fit_strata), so that their trials share the cluster. tune/launch.py decides what runs; this module runs it.

Strata at once: each stratum keeps its own Tuner (its own Ray experiment ray/<tune_name>, Optuna study, ASHA
brackets, ledger), and all of them are fitted together, each in a thread of the driver; Ray's scheduler shares
the cluster between their trials. Tune runs in a thread without signal handlers, so a Ctrl-C reaches every
stratum through one shared event (StopStrataOnInterrupt). docs/DESIGN.md, "Strata at once", says why this and
not one Tuner over all strata."""
from __future__ import annotations

import json
import math
import os
import threading
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ict_core.records import ERRORED
from tune.cluster import connect
from tune.space_schema import Plan
from tune.trial import StopTrialsOnInterrupt

# ---- Ray --------------------------------------------------------------------------------------


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


def search_algorithm(plan: Plan, stratum, concurrent: int, seed: int, num_samples: int | None = None,
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


def scheduler(plan: Plan, stratum):
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

# ---- one stratum's Tuner ------------------------------------------------------------------------------------
@dataclass
class Launch:
    """What every Tuner of one search shares: the plan, where things go, the trials' resources, the reuse index,
    the table metadata and trackers the ParquetCallback writes with."""
    plan: Plan
    name: str
    exp_dir: Path
    experiment_uri: str | None
    res: dict
    runs_root: str
    ray_dir: str
    workers: int = 1
    gpus_per_worker: float = 0.0
    ray_train: bool = False
    index: dict = field(default_factory=dict)
    callback_extras: dict = field(default_factory=dict)
    quiet: bool = False
    journal: Path | None = None  # the Optuna journal that holds the strata's studies live (tune/searcher.py)
    per_tuner: int | None = None  # each Tuner's concurrency (shared_concurrency); None: the search's whole


@dataclass
class StratumJob:
    """One Tuner to fit: a stratum's search (or a design round's grid) under the Ray experiment `tune_name`.
    `search_alg` None: restore the Ray experiment at ray_dir/tune_name (a resume)."""
    stratum: Any
    tune_name: str
    seeds: int
    planned: int = 0
    param_space: dict | None = None
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    objectives: list | None = None
    legacy: bool = False  # restored under the trainable name of an experiment written before strata ran at once


TRAINABLE = "ict_trial"


def shared_concurrency(res: dict, tuners: int) -> int:
    """Each Tuner's concurrency when `tuners` are fitted together. Where Ray holds trials to what fits now (one
    machine, a fixed cluster) each may have the search's whole concurrency in flight: what does not fit waits in
    Tune's queue, and a slot a finished stratum leaves is taken by another. Where trials queue as demand for the
    autoscaler, each gets its share, so the demand stays at the plan's concurrency however many strata there are."""
    total = int(res["max_concurrent_trials"])
    if not res.get("queue") or tuners <= 1:
        return total
    return max(1, math.ceil(total / tuners))


def trainable_name(tune_name: str) -> str:
    """Each Tuner's trainable its own name: Tune registers trainables by name, so two strata fitted at once under
    one name would run each other's (their parameters differ)."""
    return f"{TRAINABLE}-{tune_name}"


def _trainable(ctx: Launch, job: StratumJob, name: str):
    from ray import tune as rt

    from tune.trial import ict_trial

    trainable = rt.with_resources(
        rt.with_parameters(ict_trial, stratum={"name": job.stratum.name, "fixed": job.stratum.fixed},
                           seeds=job.seeds, metric=ctx.plan.metric, runs_root=ctx.runs_root,
                           cpus_per_trial=ctx.res["cpus_per_trial"], workers=ctx.workers,
                           gpus_per_worker=ctx.gpus_per_worker, ray_train=ctx.ray_train, ray_storage=ctx.ray_dir,
                           reuse=ctx.index, objectives=job.objectives),
        ctx.res["trial"])
    trainable._name = name  # noqa: SLF001 - the name Tune registers it under (Experiment.get_trainable_name)
    return trainable


def build_tuner(ctx: Launch, job: StratumJob):
    """The Tuner of one job: restored from its Ray experiment when `job.search_alg` is None (an experiment
    written before strata ran at once is restored under its old trainable name and marks the job legacy), else
    a new one whose callbacks write the experiment's tables and the job's ledger (tune/progress.py)."""
    from ray import tune as rt

    from tune.progress import ParquetCallback, ProgressCallback

    path = f"{ctx.ray_dir}/{job.tune_name}"
    plan = ctx.plan
    if job.search_alg is None:
        try:
            return rt.Tuner.restore(path, trainable=_trainable(ctx, job, trainable_name(job.tune_name)),
                                    resume_errored=True)
        except ValueError as err:
            if f"expected '{TRAINABLE}'" not in str(err):  # Tune: "... but expected 'ict_trial'."
                raise
            job.legacy = True
            return rt.Tuner.restore(path, trainable=_trainable(ctx, job, TRAINABLE), resume_errored=True)
    stratum_info = {"name": job.stratum.name, "fixed": job.stratum.fixed}
    callbacks = [ParquetCallback(str(ctx.exp_dir), ctx.name, plan.space, stratum_info, job.seeds, ctx.runs_root,
                                 ledger=job.tune_name, planned=job.planned, experiment_uri=ctx.experiment_uri,
                                 **ctx.callback_extras),
                 ProgressCallback(job.stratum.name, list(plan.params), plan.metric, plan.mode, total=job.planned,
                                  quiet=ctx.quiet)]
    multi = plan.multi and job.objectives is not None  # a multi-objective searcher holds its metrics itself
    return rt.Tuner(
        _trainable(ctx, job, trainable_name(job.tune_name)), param_space=job.param_space,
        tune_config=rt.TuneConfig(metric=None if multi else plan.metric, mode=None if multi else plan.mode,
                                  search_alg=job.search_alg, scheduler=job.scheduler, num_samples=job.num_samples,
                                  max_concurrent_trials=ctx.per_tuner or ctx.res["max_concurrent_trials"],
                                  reuse_actors=True),
        run_config=rt.RunConfig(name=job.tune_name, storage_path=ctx.ray_dir, callbacks=callbacks, verbose=0,
                                log_to_file=True,
                                failure_config=rt.FailureConfig(max_failures=ctx.res["max_failures"])))


# ---- strata at once ---------------------------------------------------------------------------------------
class StopStrataOnInterrupt(StopTrialsOnInterrupt):
    """StopTrialsOnInterrupt over several strata whose Tuners run in threads: the first Ctrl-C asks every running
    trial to stop at a checkpoint (tune/trial.py's STOP file), then sets `event`, which every Tune loop of the
    search polls instead of its own signal handler (Tune installs none outside the main thread)."""

    def __init__(self, store, strata: list[str], event: threading.Event, grace_s: float = 20.0, say=print):
        super().__init__(store, strata[0] if strata else "", grace_s, say)
        self.strata, self.event = strata, event

    def _pending(self) -> list[str]:
        if self.store.is_uri:
            return ["?"]
        root = Path(self.store.root)
        from tune.trial import RUNNING_FILE, STOPPED_FILE

        return [p.parent.name for s in self.strata for p in (root / s).glob(f"*/{RUNNING_FILE}")
                if not (p.parent / STOPPED_FILE).exists()]

    def _hand_over(self) -> None:
        if not self._handed:
            self._handed = True
            self.event.set()


def _distinct_trial_ids(jobs: list[StratumJob]) -> None:
    """Tune's grid and random generator names its trials from a time-based prefix (uuid1; ray/tune/search/
    basic_variant.py), so two made within the same ~0.4 ms name their trials alike, and the tables key each
    run by its trial id: give each generator of these jobs a prefix of its own."""
    seen = set()
    for job in jobs:
        prefix = getattr(job.search_alg, "_uuid_prefix", None)
        if prefix is None:
            continue
        while prefix in seen:
            prefix = uuid.uuid4().hex[:5] + "_"
        job.search_alg._uuid_prefix = prefix  # noqa: SLF001
        seen.add(prefix)


@contextmanager
def _tune_in_threads(event: threading.Event):
    """While Tuners fit in threads: every Tune loop polls `event` for an interrupt (in the main thread Tune makes
    its own from a signal handler, which a thread cannot install), and trainables register one at a time (Tune's
    registry flushes a dict that another thread's registration would change under it: "dictionary changed size
    during iteration", seen here with two strata)."""
    import ray.tune.tune as tune_module
    from ray.tune.registry import _global_registry as registry

    own = tune_module._setup_signal_catching  # noqa: SLF001
    register, lock = registry.register, threading.Lock()

    def register_in_turn(*args, **kwargs):
        with lock:
            return register(*args, **kwargs)

    tune_module._setup_signal_catching = lambda: event  # noqa: SLF001
    registry.register = register_in_turn
    try:
        yield
    finally:
        tune_module._setup_signal_catching = own  # noqa: SLF001
        registry.__dict__.pop("register", None)


def fit_strata(ctx: Launch, jobs: list[StratumJob], say: Callable = print) -> bool:
    """Fit the jobs' Tuners; True when a Ctrl-C interrupted them. One job (or any legacy one among several: their
    trainables share a name) is fitted as before, one after another in the main thread; several are fitted at the
    same time, each in its own thread, sharing the cluster."""
    from tune.store import Store

    store = Store(ctx.runs_root)
    _distinct_trial_ids(jobs)
    tuners = [(job, build_tuner(ctx, job)) for job in jobs]
    if len(tuners) == 1 or any(job.legacy for job in jobs):
        for job, tuner in tuners:
            with StopTrialsOnInterrupt(store, job.stratum.name, say=say) as guard:
                tuner.fit()
            if guard.interrupted:
                return True
        return False
    event = threading.Event()
    errors: list[BaseException] = []

    def fit(tuner) -> None:
        try:
            tuner.fit()
        except BaseException as err:  # noqa: BLE001 - raised again in the main thread
            errors.append(err)

    threads = [threading.Thread(target=fit, args=(tuner,), name=f"fit-{job.tune_name}", daemon=True)
               for job, tuner in tuners]
    with _tune_in_threads(event), \
            StopStrataOnInterrupt(store, [job.stratum.name for job in jobs], event, say=say) as guard:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)  # short waits: the main thread takes Ctrl-C between them
    if errors:
        raise errors[0]
    return guard.interrupted


def stratum_outcome(exp_dir: Path, tune_name: str) -> dict:
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
