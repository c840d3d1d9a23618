"""The Ray Tune trial: one configuration of a search, trained once per seed, each seed into its own run folder.

Seeds run one after the other inside the trial, each into `RUNS_ROOT/<stratum>/<trial_id>/seed_<seed>` in the
experiment's storage (tune/storage.py). A one-worker CPU trial runs ict_core.trainer.train in the trial process
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

from ict_core.config import load_config, resolve_config
from ict_core import rundir
from ict_core.records import COMPLETED, DIVERGED, RUNNING
from tune.storage import FINISHED, RunStore, seed_folder, trial_folder


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


def trial_overrides(stratum_fixed: dict, config: dict, cpus_per_trial: float, in_process: bool) -> dict:
    overrides = {**stratum_fixed, **trial_params(config)}
    if in_process and not overrides.get("train.num_threads"):
        overrides["train.num_threads"] = max(1, int(cpus_per_trial))
    return overrides


def tune_result(metrics: dict, *, seed_index: int, seed: int, total_steps: int, metric: str) -> dict:
    """The keys one trainer report sends to Tune, the same on both trial paths (see the module docstring)."""
    step = int(_num(metrics.get("step")) if math.isfinite(_num(metrics.get("step"))) else 0)
    status = metrics.get("status") or RUNNING
    # A first seed that diverged jumps to total_steps: ASHA records its NaN at every rung left, so no rung is
    # left for a later seed's early values to be judged at.
    first = seed_index == 0 and status != DIVERGED
    return {"trial_step": step if first else int(total_steps), "step": step, "seed": int(seed), "status": status,
            metric: _num(metrics.get(metric)), "final": False}


def objective(summaries: list[dict], metric: str) -> float:
    """The searcher's value of a configuration: the mean over seeds of the final metric (NaN if any diverged)."""
    values = [_num(s.get(metric)) for s in summaries]
    if not values or any(not math.isfinite(v) for v in values):
        return float("nan")
    return sum(values) / len(values)


def final_result(summaries: list[dict], seeds: list[int], total_steps: int, metric: str) -> dict:
    diverged = any(s.get("status") == DIVERGED for s in summaries)
    return {"trial_step": int(total_steps), "step": int(_num(summaries[-1].get("step")) or 0) if summaries else 0,
            "seed": int(seeds[len(summaries) - 1]), "status": DIVERGED if diverged else COMPLETED,
            metric: objective(summaries, metric), "final": True, "seeds_done": len(summaries)}


def node_file(rel: str) -> str:
    """Which Ray node trained a seed in the trial process, beside (not inside) the seed's run folder, which
    belongs to the trainer. Ray Train runs record their ranks' nodes in the run folder's workers.jsonl."""
    return f"{rel}.node.json"


def _write_node(store: RunStore, rel: str, resume_step: int | None = None) -> None:
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
              ray_storage: str | None = None) -> None:
    """Tune function trainable. `stratum` is a plan stratum as a dict (name, fixed, ...); `runs_root` is where run
    folders go (tune/storage.py); `ray_storage` holds the Ray Train runs' own state when `ray_train`."""
    from ray import tune as rt

    ray_train = ray_train or workers > 1
    trial_id = rt.get_context().get_trial_id()
    store = RunStore(runs_root)
    base_cfg = load_config(overrides=trial_overrides(stratum["fixed"], config, cpus_per_trial, not ray_train))
    total_steps = base_cfg.train.total_steps
    seed_list = [base_cfg.train.seed + i for i in range(seeds)]

    with store.capture_output(trial_folder(stratum["name"], trial_id)):
        summaries = []
        for index, seed in enumerate(seed_list):
            rel = seed_folder(stratum["name"], trial_id, seed)
            summary = store.read_json(f"{rel}/{rundir.SUMMARY}")
            if summary is None or summary.get("status") not in FINISHED:
                cfg = base_cfg.with_overrides({"train.seed": seed})
                send = partial(tune_result, seed_index=index, seed=seed, total_steps=total_steps, metric=metric)
                if ray_train:
                    summary = _seed_ray_train(cfg, store, rel, send, workers, gpus_per_worker, cpus_per_trial,
                                              ray_storage or runs_root, f"{stratum['name']}-{trial_id}-seed{seed}")
                else:
                    summary = _seed_in_process(cfg, store, rel, send)
            summaries.append(summary)
        rt.report(final_result(summaries, seed_list, total_steps, metric))


def _seed_in_process(cfg, store: RunStore, rel: str, send) -> dict:
    from ray import tune as rt

    from ict_core.trainer import train

    local = store.local_dir(rel)
    resume = _has_checkpoint(local)
    if not resume and local.exists():
        shutil.rmtree(local)  # a start that wrote files but no checkpoint: begin again, cleanly
    _write_node(store, rel, _checkpoint_step(local) if resume else None)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        store.push(rel, local)
        if metrics.get("evaluated", True) or metrics.get("status") != RUNNING:
            rt.report(send(metrics))

    t0 = time.time()
    try:
        summary = train(cfg, report=report, run_dir=local, resume_from=local if resume else None)
    finally:
        store.push(rel, local)
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


def _seed_ray_train(cfg, store: RunStore, rel: str, send, workers: int, gpus_per_worker: float,
                    cpus_per_worker: float, ray_storage: str, name: str) -> dict:
    """One seed through Ray Train (tune.ray_train.run_ray_train) into the same run folder layout."""
    from tune.ray_train import run_ray_train

    kwargs = {"run_uri": store.uri(rel)} if store.is_uri else {"run_dir": str(store.local_dir(rel))}
    summary = run_ray_train(cfg, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                            storage=ray_storage, name=name.replace("/", "_"), resume="auto",
                            callbacks=[TrialReportCallback(send)], **kwargs)
    return dict(summary or {})
