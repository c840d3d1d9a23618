"""A search's plan, made without Ray: the resolved space (strata, searched keys, seeds), the trials' resources and
concurrency, the checks made before any cluster work, the printed plan, its compute estimate and power lines, and
the plan's identity (hashes that --resume compares). tune/search.py (one search) and tune/campaign.py (several)
both plan through this module; tune/launch.py runs a plan."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

from ict_core.errors import BadInput
from ict_core.config import load_config
from ict_core.records import TRIALS_FILE
from tune.cluster import ClusterShape, trial_resources
from tune.findings import hours_text
from tune.space import load_space
from tune.space_schema import Plan, SpaceError
from tune.startup import describe_search
from tune.inputs import input_problem

# Keys that decide what a training step costs; configurations equal in these share one timing.
COST_KEYS = ("data.name", "data.resolution", "network.channels", "network.channel_mult", "network.num_blocks",
             "network.attn_resolutions", "train.batch_size", "loss.objective", "loss.teacher", "train.precision",
             "train.device")
EVAL_PROBE_IMAGES = 2 * 256  # the Evaluator's train and held-out loss probes (two forwards per image each)


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



# ---- plan identity (--resume refuses a changed plan unless --extend) ---------------------------------
_NOT_PLAN = ("source", "description", "question", "max_concurrent", "skipped_strata", "strata", "claims", "design")


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def plan_hashes(plan: Plan) -> dict:
    """{"search": hash of the searcher/scheduler/seed settings, "strata": {name: hash of search + stratum}}."""
    d = plan.to_dict()
    search = _hash({k: v for k, v in d.items() if k not in _NOT_PLAN})
    return {"search": search, "strata": {s["name"]: _hash({"search": search, **s}) for s in d["strata"]}}


def plan_changes(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("search") != new["search"]:
        out.append("search settings (budget, params, seeds, scheduler, algorithm or metric)")
    for name, h in new["strata"].items():
        if name in old.get("strata", {}) and old["strata"][name] != h:
            out.append(f"stratum {name}")
    return out



# ---- compute estimate ------------------------------------------------------------------------------------------
def plan_compute(plan) -> list[dict]:
    """Per stratum: runs, training steps, images and evaluations the search trains at most (no early stopping)."""
    rows = []
    for stratum in plan.strata:
        cfg = load_config(overrides=stratum.first_config(plan.params))
        runs = stratum.num_samples * plan.seeds
        steps = cfg.train.total_steps
        every = cfg.eval.every
        evals = steps // every + (1 if steps % every else 0) if every else 1  # every `every` steps and the last
        rows.append({"space": plan.space, "stratum": stratum.name, "runs": runs, "steps_per_run": steps,
                     "images": runs * steps * cfg.train.batch_size, "evals_per_run": evals, "cfg": cfg})
    return rows


def _cost_key(cfg) -> str:
    flat = cfg.flat()
    return json.dumps({k: flat[k] for k in COST_KEYS}, sort_keys=True)


def measure_step_seconds(cfg, threads: int, steps: int = 4, warmup: int = 2, clock=time.perf_counter) -> float:
    """Median seconds of one real training step of `cfg` on this machine with `threads` torch threads, by `clock`
    (wall time by default; benchmarks/campaign_cost.py passes time.process_time for CPU time).

    Uses the trainer's own step (data, noise, teacher and student passes, optimizer, EMA), like
    benchmarks/step_cost.py, without its evaluation."""
    import statistics

    import torch

    from ict_core.trainer import Run as _Run

    before = torch.get_num_threads()
    cfg = cfg.with_overrides({"train.num_threads": max(1, int(threads)), "eval.grid": False})
    try:
        with tempfile.TemporaryDirectory(prefix="campaign-timing-") as run_dir:
            run = _Run(cfg, None, run_dir, None)
            run.student.train()
            times = []
            for i in range(warmup + steps):
                t0 = clock()
                run.train_step()
                if i >= warmup:
                    times.append(clock() - t0)
            return statistics.median(times)
    finally:
        torch.set_num_threads(before)


def estimate_seconds(row: dict, step_s: float, concurrent: int) -> float:
    """Wall seconds of one stratum: training steps plus evaluations (sampling, one- and two-step, and the loss
    probes, counted as forward passes at a third of a training step per batch) spread over the concurrent
    trials. Feature-network training and Ray start-up are left out."""
    cfg = row["cfg"]
    batch = cfg.train.batch_size
    forwards_per_eval = 3 * cfg.eval.num_samples + 2 * EVAL_PROBE_IMAGES
    eval_s = forwards_per_eval / batch * step_s / 3
    per_run = row["steps_per_run"] * step_s + row["evals_per_run"] * eval_s
    return row["runs"] * per_run / max(1, concurrent)


def load_note() -> str:
    """The load a step time was measured under: a measurement on a busy machine is slower than on an idle one."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "under a load that could not be read"
    return f"under a 1-min load average of {load:.2f} on {os.cpu_count()} CPU(s); it scales with the load"


def compute_lines(plan, res: dict, timings: dict, measure: bool = True) -> tuple[list[str], dict]:
    """The compute lines of one search's plan (per stratum: runs, steps, images, and the measured step time with the
    load it was measured under and the hours it gives, or "not measured"), and its totals {runs, images,
    seconds, timed, untimed}. `timings` caches step times by cost key across searches."""
    lines, total = [], {"runs": 0, "images": 0, "seconds": 0.0, "timed": 0, "untimed": 0}
    asha = plan.scheduler.get("type") == "asha"
    for row in plan_compute(plan):
        line = (f"compute {row['stratum']}: {row['runs']} run(s) x {row['steps_per_run']} steps = "
                f"{row['images']:,} images" + (" at most (ASHA stops some runs early)" if asha else ""))
        if measure:
            key = _cost_key(row["cfg"])
            if key not in timings:
                note = load_note()
                try:
                    timings[key] = (measure_step_seconds(row["cfg"], res["cpus_per_trial"]), note)
                except BadInput as err:  # e.g. train.device=cuda without a GPU, or data under a storage URI
                    timings[key] = (float("nan"), f"not timed here ({err})")
            step_s, note = timings[key]
            if math.isfinite(step_s):
                seconds = estimate_seconds(row, step_s, res["max_concurrent_trials"])
                line += (f"; {1e3 * step_s:.1f} ms/step measured here ({res['cpus_per_trial']} thread(s), {note}), "
                         f"{res['max_concurrent_trials']} concurrent -> about {hours_text(seconds)}")
                total["seconds"] += seconds
                total["timed"] += 1
            else:
                line += f"; {note}"
                total["untimed"] += 1
        else:
            line += "; time not measured (--no-timing)"
            total["skipped"] = total.get("skipped", 0) + 1
        lines.append(line)
        total["runs"] += row["runs"]
        total["images"] += row["images"]
    cap = design_cap(plan, total)
    if cap:
        lines.append(cap["line"])
        total["cap_runs"], total["cap_seconds"] = cap["runs"], cap["seconds"]
    return lines, total


def design_cap(plan, first: dict) -> dict | None:
    """The compute of a sequential design at its cap (the space budget's max_runs): the first round's runs above
    are what every search trains; open claims then add seeds up to max_runs runs in all, each costing the first
    round's mean per run. None without a design."""
    design = getattr(plan, "design", None)
    if design is None or not getattr(design, "max_runs", None) or not first["runs"]:
        return None
    runs = max(int(design.max_runs), first["runs"])
    seconds = first["seconds"] * runs / first["runs"] if first.get("timed") and not first.get("untimed") else math.nan
    when = f" -> about {hours_text(seconds)}" if math.isfinite(seconds) else ""
    return {"runs": runs, "seconds": seconds,
            "line": f"compute at the design's cap: at most {runs} run(s) (max_runs; seeds_min {design.seeds_min} "
                    f"to seeds_max {design.seeds_max}){when}"}


def total_line(what: str, total: dict) -> str:
    """The last line of a dry run: runs, images and the estimated time (or why there is none), and the runs and
    time at the designs' caps (every open claim taken to seeds_max within max_runs)."""
    timed = (f", about {hours_text(total['seconds'])} on this machine (training and evaluation; Ray start-up and "
             f"feature-network training not counted)" if total.get("timed") else "")
    skipped = ", time not measured" if total.get("skipped") and not total.get("timed") else ""
    untimed = f"; {total['untimed']} stratum(s) could not be timed here" if total.get("untimed") else ""
    cap = ""
    if total.get("cap_runs"):
        cap_s = total.get("cap_seconds", math.nan)
        cap = (f"; at most {total['cap_runs']} runs at the designs' caps (max_runs, first rounds included)"
               + (f", about {hours_text(cap_s)}" if total.get("timed") and math.isfinite(cap_s) else ""))
    return f"{what}, {total['runs']} runs, {total['images']:,} images{timed}{skipped}{untimed}{cap}"
