"""The Ray Tune trial: one configuration of a search, trained once per seed.

A one-worker CPU trial runs ict_core.trainer.train in the trial process itself (a TorchTrainer would cost ~20 s of
start-up per trial, RAY_NOTES 2); multi-worker or GPU trials hand each seed to tune.ray_train.run_ray_train.

Seeds run one after the other inside the trial, so the searcher sees one observation per configuration: the mean
of the seeds' final metric (noise averaged out, and Optuna's TPE models configurations, not seeds). Each report
carries `trial_step` = training steps done by the whole trial (monotone across seeds), which is ASHA's time
attribute; every report also carries the trial's evaluation history and the finished seeds' summaries as JSON, so
the driver can write every run's rows from the last result alone, whatever way the trial ended.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from ict_core.config import load_config

STATE_FILE = "ict_trial_state.json"
TRAINER_DIR = "trainer"
# Metrics copied from a trainer report into the Tune result and the evaluation history.
REPORT_KEYS = ("step", "total_steps", "num_points", "loss", "fd", "fd_2step", "kid", "loss_train", "loss_heldout",
               "nn_dist", "nn_dist_ref", "images_seen", "elapsed_s")


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
    from tune.space import dataset_dim, paper_huber_c

    flat = cfg.flat()
    if flat["loss.huber_c"] is None:
        flat["loss.huber_c"] = paper_huber_c(dataset_dim(cfg)[1])
    return flat


def _provenance(run_dir: Path) -> dict:
    try:
        prov = json.loads((run_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"git_commit": prov.get("git_commit"), "versions": json.dumps(prov.get("versions", {}), sort_keys=True),
            "device": prov.get("device")}


def _seed_record(seed: int, summary: dict, flat: dict, run_dir: Path, node_id: str) -> dict:
    """What the driver needs of one finished seed to write its trials.parquet row."""
    record = {"seed": seed, "status": summary.get("status", "completed"), "config": summary.get("config") or flat,
              "node_id": node_id, **_provenance(run_dir)}
    for key in ("fd", "fd_2step", "kid", "loss", "loss_train", "loss_heldout", "nn_dist", "nn_dist_ref"):
        record[f"final_{key}"] = _num(summary.get(key))
    record.update(best_fd=_num(summary.get("best_fd")), steps=summary.get("step"),
                  images_seen=summary.get("images_seen"), wall_s=_num(summary.get("wall_s")),
                  world_size=summary.get("world_size", 1))
    if record.get("device") is None:
        record["device"] = summary.get("device")
    return record


def objective(done: list[dict], metric: str) -> float:
    """The searcher's value of a configuration: the mean over seeds of the final metric (NaN if any diverged)."""
    values = [_num(d.get(f"final_{metric}")) for d in done]
    if not values or any(not math.isfinite(v) for v in values):
        return float("nan")
    return sum(values) / len(values)


def ict_trial(config: dict, stratum: dict, seeds: int, metric: str, cpus_per_trial: float = 1.0,
              workers: int = 1, gpus_per_worker: float = 0.0, storage: str | None = None) -> None:
    """Tune function trainable. `stratum` is a plan stratum as a dict (name, fixed, ...)."""
    import ray
    from ray import tune as rt

    node_id = ray.get_runtime_context().get_node_id()
    overrides = {**stratum["fixed"], **trial_params(config)}
    if workers == 1 and gpus_per_worker == 0 and not overrides.get("train.num_threads"):
        overrides["train.num_threads"] = max(1, int(cpus_per_trial))
    base_cfg = load_config(overrides=overrides)
    context = rt.get_context()
    trial_dir = Path(context.get_trial_dir())
    total_steps = base_cfg.train.total_steps

    state = {"seed_index": 0, "done": [], "history": []}
    resume_dir = None
    checkpoint = rt.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt:
            state = json.loads((Path(ckpt) / STATE_FILE).read_text())
            if (Path(ckpt) / TRAINER_DIR).is_dir():
                resume_dir = trial_dir / "_resume" / f"seed_index_{state['seed_index']}"
                shutil.rmtree(resume_dir, ignore_errors=True)
                shutil.copytree(Path(ckpt) / TRAINER_DIR, resume_dir)

    def result(metrics: dict, seed: int, seed_index: int, flat: dict, final: bool = False) -> dict:
        out = {k: _num(metrics.get(k)) for k in REPORT_KEYS if k in metrics}
        out.update(status=metrics.get("status", "running"), seed=seed, node_id=node_id, ict_final=final,
                   ict_stratum=stratum["name"],
                   trial_step=seed_index * total_steps + int(_num(metrics.get("step", 0)) or 0),
                   ict_history=json.dumps(state["history"]), ict_done=json.dumps(state["done"]),
                   ict_current=json.dumps({"seed": seed, "config": flat}))
        return out

    def send(out: dict, checkpoint_dir: str | None, seed_index: int) -> None:
        if checkpoint_dir is None:
            rt.report(out)
            return
        staging = Path(tempfile.mkdtemp(prefix="ict-ckpt-"))
        try:
            shutil.copytree(checkpoint_dir, staging / TRAINER_DIR)
            (staging / STATE_FILE).write_text(json.dumps({**state, "seed_index": seed_index}))
            rt.report(out, checkpoint=rt.Checkpoint.from_directory(str(staging)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    for seed_index in range(state["seed_index"], seeds):
        seed = base_cfg.train.seed + seed_index
        cfg = base_cfg.with_overrides({"train.seed": seed})
        flat = resolved_flat(cfg)
        run_dir = trial_dir / f"seed_{seed}"

        if workers == 1 and gpus_per_worker == 0:
            from ict_core.trainer import train

            def report(metrics: dict, checkpoint_dir: str | None, _seed=seed, _index=seed_index, _flat=flat):
                if metrics.get("evaluated"):
                    state["history"].append({"seed": _seed, **{k: _num(metrics.get(k)) for k in REPORT_KEYS}})
                send(result(metrics, _seed, _index, _flat), checkpoint_dir, _index)

            t0 = time.time()
            summary = train(cfg, report=report, run_dir=run_dir,
                            resume_from=resume_dir if seed_index == state["seed_index"] else None)
            summary.setdefault("wall_s", time.time() - t0)
        else:
            summary = _train_distributed(cfg, workers, gpus_per_worker, cpus_per_trial, storage, trial_dir, seed)
        state["done"].append(_seed_record(seed, summary, flat, run_dir, node_id))
        # A checkpoint between seeds, so a restored trial does not train a finished seed again.
        if seed_index + 1 < seeds:
            staging = Path(tempfile.mkdtemp(prefix="ict-ckpt-"))
            try:
                (staging / STATE_FILE).write_text(json.dumps({**state, "seed_index": seed_index + 1}))
                done_metrics = {**summary, "status": "running"}
                rt.report({**result(done_metrics, seed, seed_index, flat), "ict_between_seeds": True},
                          checkpoint=rt.Checkpoint.from_directory(str(staging)))
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    statuses = {d["status"] for d in state["done"]}
    last = state["done"][-1]
    final = result({"step": last.get("steps") or total_steps}, last["seed"], seeds - 1, last["config"], final=True)
    final[metric] = objective(state["done"], metric)
    final["status"] = "diverged" if "diverged" in statuses else "completed"
    final["seeds_done"] = len(state["done"])
    rt.report(final)


def _train_distributed(cfg, workers: int, gpus_per_worker: float, cpus_per_worker: float, storage,
                       trial_dir: Path, seed: int) -> dict:
    """One seed through Ray Train (tune.ray_train.run_ray_train); rank 0's reports reach Tune through
    TuneReportCallback, and the driver builds the evaluation history from those results."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from tune.ray_train import run_ray_train

    summary = run_ray_train(cfg, workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                            storage=storage or str(trial_dir.parent), name=f"{trial_dir.name}-seed{seed}",
                            resume="auto", run_dir=str(trial_dir / f"seed_{seed}"),
                            callbacks=[TuneReportCallback()])
    summary = dict(summary or {})
    summary.update({k: v for k, v in (summary.get("last_report") or {}).items() if k not in summary})
    summary.setdefault("config", cfg.flat())
    summary.setdefault("world_size", workers)
    return summary
