"""The Ray Tune trial: one configuration of a search, trained once per seed, each seed into its own run folder.

Seeds run one after the other inside the trial, each into `RUNS_ROOT/<stratum>/<trial_id>/seed_<seed>` in the
experiment's storage (tune/store.py). A one-worker CPU trial runs ict_core.trainer.train in the trial process
itself (a TorchTrainer costs ~20 s of start-up per trial, docs/ARCHITECTURE.md, Trial resources), and so does a
one-worker GPU trial, which holds its GPU itself; multi-worker or `ray_train=True` trials hand each seed to
tune.ray_train.run_ray_train. Both paths report the same few keys
to Tune, built by `tune_result`, and nothing else: the driver builds every Parquet row from the run folders (tune/results.py).

What a trial reports (every evaluation of every seed, then one final result):
  trial_step  ASHA's time attribute: the first seed's step. It stays at total_steps while later seeds train
              (and jumps there when the first seed diverges), so every rung compares first seeds at increasing
              steps and never a later seed's early state.
  step, seed  the seed's own step, and which seed
  status      running | completed | diverged (of the seed; of the configuration in the final result)
  <metric>    the seed's evaluation metric (ASHA reads it at the rungs); in the final result the mean over
              seeds, the one value the searcher learns (tune/searcher.py)
  final       True only in the final result; seeds_done there counts the seeds
A restarted trial (driver restart, --resume, resume_errored) reads the seeds that already finished from their
summary.json and resumes an unfinished seed from the newest checkpoint in its run folder.
"""
from __future__ import annotations

import math
import shutil
import time
from functools import partial
from pathlib import Path

from ray.tune.integration.ray_train import TuneReportCallback

from ict_core.config import Config, load_config, resolve_config
from ict_core import rundir
from ict_core.records import COMPLETED, DIVERGED, INTERRUPTED, RUNNING
from ict_core.stop import StopRequest
from tune.inputs import localize_inputs
from tune.store import FINISHED, Store, seed_folder, trial_folder


def _num(value):
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def trial_params(config: dict) -> dict:
    """Tune's config of a trial -> dotted overrides (a grid trial holds its variant under "variant")."""
    params = {k: v for k, v in config.items() if k != "variant"}
    params.update(config.get("variant") or {})
    return params


def resolved_flat(cfg) -> dict:
    """Config.flat() with the paper's huber_c filled in, as the trainer resolves it."""
    flat = cfg.flat()
    if flat["loss.huber_c"] is None:
        flat["loss.huber_c"] = resolve_config(cfg).loss.huber_c
    return flat


def trial_config(stratum_fixed: dict, config: dict, threads: int | None = None) -> Config:
    """The Config one trial of a stratum trains, built here only: the stratum's fixed settings, then Tune's
    config of the trial (trial_params). `threads`: train.num_threads where the trial leaves it unset (a trial
    that trains in its own process takes its CPUs). The driver's ParquetCallback (tune/progress.py) rebuilds a
    trial's config with it for the trial's rows. Raises ConfigError for a value the config refuses."""
    overrides = {**stratum_fixed, **trial_params(config)}
    if threads and not overrides.get("train.num_threads"):
        overrides["train.num_threads"] = threads
    return load_config(overrides=overrides)


def tune_result(metrics: dict, *, seed_index: int, seed: int, total_steps: int, metric: str,
                objectives=()) -> dict:
    """The keys one trainer report sends to Tune, the same on both trial paths (see the module docstring)."""
    step = int(_num(metrics.get("step")) if math.isfinite(_num(metrics.get("step"))) else 0)
    status = metrics.get("status") or RUNNING
    # A first seed that diverged jumps to total_steps: ASHA records its NaN at every rung left, so no rung is
    # left for a later seed's early values to be judged at.
    first = seed_index == 0 and status != DIVERGED
    return {"trial_step": step if first else int(total_steps), "step": step, "seed": int(seed), "status": status,
            **{m: _num(metrics.get(m)) for m in (metric, *(objectives or ()))}, "final": False}


def objective(summaries: list[dict], metric: str) -> float:
    """The searcher's value of a configuration: the mean over seeds of the final metric (NaN if any diverged)."""
    values = [_num(s.get(metric)) for s in summaries]
    if not values or any(not math.isfinite(v) for v in values):
        return float("nan")
    return sum(values) / len(values)


def final_result(summaries: list[dict], seeds: list[int], total_steps: int, metric: str,
                 objectives=()) -> dict:
    """The trial's final result: the mean over seeds of `metric` and of every other objective of a
    multi-objective search (`objectives`)."""
    diverged = any(s.get("status") == DIVERGED for s in summaries)
    return {"trial_step": int(total_steps), "step": int(_num(summaries[-1].get("step")) or 0) if summaries else 0,
            "seed": int(seeds[len(summaries) - 1]), "status": DIVERGED if diverged else COMPLETED,
            **{m: objective(summaries, m) for m in (metric, *(objectives or ()))},
            "final": True, "seeds_done": len(summaries)}


def node_file(rel: str) -> str:
    """Which Ray node trained a seed in the trial process, beside (not inside) the seed's run folder, which
    belongs to the trainer. Ray Train runs record their ranks' nodes in the run folder's workers.jsonl."""
    return f"{rel}.node.json"


def _write_node(store: Store, rel: str, resume_step: int | None = None) -> None:
    """The node of this start of the seed, and the checkpoint step it resumed from (None: from the start)."""
    import json
    import os
    import socket

    import ray

    store.write_text(node_file(rel), json.dumps({"node_id": ray.get_runtime_context().get_node_id(),
                                                 "hostname": socket.gethostname(), "pid": os.getpid(),
                                                 "resume_step": resume_step}) + "\n")


def _has_checkpoint(run_dir: Path) -> bool:
    return _checkpoint_step(run_dir) is not None


def _checkpoint_step(run_dir: Path) -> int | None:
    """Step of the newest complete checkpoint in a run folder, None when there is none."""
    steps = [int(p.name.split("_")[1]) for p in (run_dir / rundir.CHECKPOINTS).glob("step_*")
             if (p / rundir.STATE).is_file() and p.name.split("_")[1].isdigit()]
    return max(steps) if steps else None


def ict_trial(config: dict, stratum: dict, seeds: int, metric: str, runs_root: str, cpus_per_trial: float = 1.0,
              workers: int = 1, gpus_per_worker: float = 0.0, ray_train: bool = False,
              ray_storage: str | None = None, reuse: dict | None = None, objectives: list | None = None) -> None:
    """Tune function trainable. `stratum` is a plan stratum as a dict (name, fixed, ...); `runs_root` is where run
    folders go (tune/store.py); `ray_storage` holds the Ray Train runs' own state when `ray_train`. `reuse` is
    tune/reuse.reuse_index: a seed whose run_key is in it is copied from there, not trained."""
    from ray import tune as rt

    ray_train = ray_train or workers > 1
    trial_id = rt.get_context().get_trial_id()
    store = Store(runs_root)
    base_cfg = trial_config(stratum["fixed"], config, threads=None if ray_train else max(1, int(cpus_per_trial)))
    seed_list = [base_cfg.train.seed + i for i in range(seeds)]

    folder = trial_folder(stratum["name"], trial_id)
    with store.capture_output(folder):
        _remove_file(store, f"{folder}/{STOPPED_FILE}")
        if not ray_train:  # an in-process seed stops with a checkpoint on the driver's STOP_FILE (SearchStop)
            store.write_text(f"{folder}/{RUNNING_FILE}", f"{time.time()}\n")
        try:
            summaries = _train_seeds(store, stratum, trial_id, folder, base_cfg, seed_list, metric, ray_train,
                                     workers, gpus_per_worker, cpus_per_trial, ray_storage, runs_root, reuse,
                                     objectives)
        finally:  # ended (finished, errored, or stopped by a scheduler at a report): nothing is left training
            _remove_file(store, f"{folder}/{RUNNING_FILE}")
        rt.report(final_result(summaries, seed_list, base_cfg.train.total_steps, metric, objectives))


def _train_seeds(store, stratum, trial_id, folder, base_cfg, seed_list, metric, ray_train, workers, gpus_per_worker,
                 cpus_per_trial, ray_storage, runs_root, reuse=None, objectives=None) -> list[dict]:
    """Each seed's summary, in order; a seed that finished before (its summary.json) is not trained again, and one
    whose run_key is in `reuse` (tune/reuse.reuse_index) is copied from there, not trained."""
    from ray import tune as rt

    total_steps = base_cfg.train.total_steps
    summaries = []
    for index, seed in enumerate(seed_list):
        rel = seed_folder(stratum["name"], trial_id, seed)
        summary = store.read_json(f"{rel}/{rundir.SUMMARY}")
        if summary is None or summary.get("status") not in FINISHED:
            cfg = base_cfg.with_overrides({"train.seed": seed})
            source = _reusable(cfg, seed, reuse, store)
            if source is not None:
                from tune.reuse import copy_run

                summary = copy_run(source, Path(store.uri(rel)))
                rt.report({**tune_result({**summary, "evaluated": True}, seed_index=index, seed=seed,
                                         total_steps=total_steps, metric=metric, objectives=objectives)})
                summaries.append(summary)
                continue
            send = partial(tune_result, seed_index=index, seed=seed, total_steps=total_steps, metric=metric,
                           objectives=objectives)
            if ray_train:
                summary = _seed_ray_train(cfg, store, rel, send, workers, gpus_per_worker, cpus_per_trial,
                                          ray_storage or runs_root, f"{stratum['name']}-{trial_id}-seed{seed}")
            else:
                # Inputs under a URI (data.path, eval.inception_path) are read from this node's cache; Ray
                # Train fetches them on each worker's node.
                summary = _seed_in_process(localize_inputs(cfg), store, rel, send)
        if summary.get("status") == INTERRUPTED:  # the driver's Ctrl-C (StopTrialsOnInterrupt)
            store.write_text(f"{folder}/{STOPPED_FILE}", f"{summary.get('step')}\n")
            while True:  # the checkpoint is written; ending here would tell Tune the trial finished
                time.sleep(1.0)  # Tune ends this actor once the driver hands the interrupt over
        summaries.append(summary)
    return summaries


STOP_FILE = "STOP"  # at the root of the runs store: the search driver asks its running trials to stop (Ctrl-C)
RUNNING_FILE, STOPPED_FILE = "running", "stopped"  # in a trial's folder: it trains; it stopped with a checkpoint


class SearchStop(StopRequest):
    """The trainer's stop request inside a trial: set once the driver has written STOP_FILE (polled at most once a
    second, every 5 s on a URI store). The loop then writes a checkpoint after the current step, so a resumed search
    continues the seed from the step it reached rather than from its last evaluation."""

    def __init__(self, store: Store):
        self._store, self._own, self._next = store, None, 0.0
        super().__init__()

    @property
    def signal(self) -> str | None:
        now = time.monotonic()
        if self._own is None and now >= self._next:
            self._next = now + (5.0 if self._store.is_uri else 1.0)
            if self._store.exists(STOP_FILE):
                self._own = "a stop of the search"
        return self._own

    @signal.setter
    def signal(self, value) -> None:
        self._own = value


class StopTrialsOnInterrupt:
    """Around one stratum's tuner.fit() in the driver's main thread: the first Ctrl-C writes STOP_FILE, waits up to
    `grace_s` until every trial that marked itself running has marked itself stopped (its seed's checkpoint is
    written), then hands the interrupt to Tune through SIGUSR1, which Tune always treats as Ctrl-C: it saves its
    state with those trials still running and ends them, so --resume restarts each, and each seed resumes from its
    checkpoint. A second Ctrl-C hands over at once. Tune's own SIGINT handler would end the trials where they
    stand: their actors are busy in the function until its next report, so nothing else reaches them in time."""

    def __init__(self, store: Store, stratum: str, grace_s: float = 20.0, say=print):
        self.store, self.stratum, self.grace_s, self.say = store, stratum, grace_s, say
        self.interrupted = False
        self._handed = False
        self._previous = None
        self._env = None

    def __enter__(self) -> "StopTrialsOnInterrupt":
        import os
        import signal
        import threading

        _remove_file(self.store, STOP_FILE)
        if threading.current_thread() is threading.main_thread():
            self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import os
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            if self._env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env
        _remove_file(self.store, STOP_FILE)

    def _handle(self, signum, frame) -> None:
        import threading

        if self.interrupted:
            self._hand_over()
            return
        self.interrupted = True
        self.say("\n[search] Ctrl-C: each running trial writes a checkpoint of the step it reached, then the search "
                 "stops (Ctrl-C again stops at once, losing the steps since each seed's last checkpoint)")
        self.store.write_text(STOP_FILE, "stop\n")
        threading.Thread(target=self._wait_then_hand_over, daemon=True).start()

    def _pending(self) -> list[str]:
        """Trials of this stratum marked running and not yet stopped (local stores; URI stores wait the grace)."""
        if self.store.is_uri:
            return ["?"]
        root = Path(self.store.root) / self.stratum
        return [p.parent.name for p in root.glob(f"*/{RUNNING_FILE}") if not (p.parent / STOPPED_FILE).exists()]

    def _wait_then_hand_over(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and self._pending():
            time.sleep(0.2)
        self._hand_over()

    def _hand_over(self) -> None:
        import _thread
        import os
        import signal

        if self._handed:
            return
        self._handed = True
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            _thread.interrupt_main()  # Tune is not running its loop: stop as a plain Ctrl-C would
        else:
            os.kill(os.getpid(), signal.SIGUSR1)


def _remove_file(store: Store, rel: str) -> None:
    if store.exists(rel):
        store.remove(rel)


def _reusable(cfg, seed: int, reuse: dict | None, store: Store) -> dict | None:
    """The index entry of a finished run with this seed's run_key, if any (local stores only)."""
    if not reuse or store.is_uri:
        return None
    from ict_core.config import resolve_config
    from tune.results import NOT_TRAINED, run_key

    flat = resolve_config(cfg).flat()
    return reuse.get(run_key({k: v for k, v in flat.items() if k not in NOT_TRAINED}, seed))


def _seed_in_process(cfg, store: Store, rel: str, send) -> dict:
    from ray import tune as rt

    from ict_core.trainer import train

    sync = store.working_copy(rel)  # what an earlier attempt stored, checkpoints included
    local = sync.local
    resume = _has_checkpoint(local)
    if not resume and local.exists():
        shutil.rmtree(local)  # a start that wrote files but no checkpoint: begin again, cleanly
        if store.is_uri:
            store.remove(rel)
    _write_node(store, rel, _checkpoint_step(local) if resume else None)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        sync.push()  # only what changed since the last report; pruned checkpoints leave storage too
        if metrics.get("evaluated", True) or metrics.get("status") != RUNNING:
            rt.report(send(metrics))

    t0 = time.time()
    try:
        summary = train(cfg, report=report, run_dir=local, resume_from=local if resume else None,
                        stop=SearchStop(store))
    finally:
        sync.push()
    summary.setdefault("wall_s", time.time() - t0)
    return summary


class TrialReportCallback(TuneReportCallback):
    """Forwards rank 0's reports of a Ray Train run to this Tune trial, reduced by `send` to the trial's keys
    (Ray's TuneReportCallback forwards them whole, without trial_step or seed)."""

    def __init__(self, send):
        super().__init__()
        self._send = send

    def after_report(self, run_context, metrics, checkpoint):
        row = metrics[0]
        if row.get("evaluated", True) or row.get("status") != RUNNING:
            self._training_actor_item_queue.put(self._send(row))


def _seed_ray_train(cfg, store: Store, rel: str, send, workers: int, gpus_per_worker: float,
                    cpus_per_worker: float, ray_storage: str, name: str) -> dict:
    """One seed through Ray Train (tune.ray_train.run_ray_train) into the same run folder layout."""
    from tune.ray_train import run_ray_train

    kwargs = {"run_uri": store.uri(rel)} if store.is_uri else {"run_dir": store.uri(rel)}
    summary = run_ray_train(cfg, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                            storage=ray_storage, name=name.replace("/", "_"), resume="auto",
                            callbacks=[TrialReportCallback(send)], **kwargs)
    return dict(summary or {})
