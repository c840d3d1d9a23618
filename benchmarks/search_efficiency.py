"""Does the search save compute over a grid? Dense grid vs Optuna TPE + ASHA vs random search, on digits.

Two problems: the Pseudo-Huber c (one dimension, log scale, the c_scaling space's range) and the lognormal
(p_mean, p_std) (two dimensions, the lognormal space's ranges). Every method is a search through the project's
own machinery (tune.search.run_search), on a space derived from the shipped one: its params, its searcher and,
for TPE + ASHA, the ASHA settings of one of its budgets (--from-budget) with the grace period scaled to this
benchmark's run length. All methods train the same seeds (train.seed 0, 1, ... per configuration) for the same
number of steps; TPE and random search run under several search seeds. Printed, from this one run: each method's
best FD (the best configuration's mean final FD over its seeds, as the searcher saw it) as a ratio to the grid's
best, and its compute (images trained, pruned runs included) as a fraction of the grid's.

    python benchmarks/search_efficiency.py --quick                    # minutes: proves the script end to end
    python benchmarks/search_efficiency.py --storage se               # the full setting (hours on 2 cores)

With --storage the benchmark resumes: the same command again reads the searches that finished, resumes the one
that was interrupted and runs the rest, so a long run can be stopped and continued.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ict_core.config import preset_overrides
from ict_core.records import COMPLETED, PRUNED, SEARCH_FINISHED, TRIALS_FILE
from tune.space import budget_preset, load_space

PROBLEMS = {"c": "c_scaling", "lognormal": "lognormal"}  # problem -> shipped space it is derived from
METHODS = ("grid", "tpe_asha", "random")

# A cheap digits run: the shipped smoke budget's settings (its evaluation EMA rate included: the default rate
# would leave every short run at its initial weights and every FD equal), a fixed run length and two evaluations
# before the last, so ASHA has rungs to compare at.
FULL = {"steps": 200, "every": 100, "grid_points": 12, "seeds": 3, "samples": None, "search_seeds": 3,
        "eval_samples": 500, "channels": 16, "batch": 32}
QUICK = {"steps": 60, "every": 20, "grid_points": 3, "seeds": 1, "samples": 3, "search_seeds": 2,
         "eval_samples": 100, "channels": 8, "batch": 16}


def grid_values(param: dict, count: int) -> list:
    """`count` values spanning a searched range: log-spaced for log-scale params, evenly spaced otherwise."""
    low, high = float(param["low"]), float(param["high"])
    log = param.get("type") == "loguniform" or bool(param.get("log"))
    values = np.geomspace(low, high, count) if log else np.linspace(low, high, count)
    return [float(f"{v:.6g}") for v in values]


def derived_space(problem: str, method: str, setting: dict, search_seed: int, from_budget: str,
                  num_samples: int) -> dict:
    """A space tree for one (problem, method, search seed): the shipped space's params on digits only."""
    shipped = load_space(PROBLEMS[problem])
    tree = shipped.tree
    params = {k: dict(v) for k, v in tree["params"].items()}
    # The smoke budget's settings (network, learning rate, evaluation EMA, ...), at this run length.
    smoke = {k: v for k, v in preset_overrides(str(budget_preset("smoke"))).items() if k not in params}
    smoke.update((tree.get("budgets", {}).get("smoke") or {}).get("fixed") or {})
    fixed = {**smoke, **(tree.get("fixed") or {}), "data.name": "digits", "network.channels": setting["channels"],
             "train.total_steps": setting["steps"], "train.batch_size": setting["batch"],
             "eval.every": setting["every"], "eval.num_samples": setting["eval_samples"], "eval.grid": False}
    if setting.get("cache_dir"):
        fixed["eval.cache_dir"] = setting["cache_dir"]
    out = {"name": f"{problem}_{method}_s{search_seed}", "description": f"search_efficiency: {problem} by {method}",
           "fixed": fixed, "metric": "fd", "mode": "min", "seeds": setting["seeds"], "max_concurrent": 2,
           "strata": [{"name": "digits", "fixed": {"data.name": "digits"}}]}
    if method == "grid":
        out["params"] = {k: {"type": "grid", "values": grid_values(p, setting["grid_points"])}
                         for k, p in params.items()}
        out["search"] = {"algorithm": "grid", "seed": 0}
        out["scheduler"] = {"type": "none"}
        out["budgets"] = {"smoke": {}}
        return out
    out["params"] = params
    if tree.get("points"):
        out["points"] = tree["points"]  # the shipped first trials (the paper's values), as the real searches run them
    out["search"] = {"algorithm": "optuna_tpe" if method == "tpe_asha" else "random", "seed": search_seed}
    scheduler = {"type": "none"}
    if method == "tpe_asha":
        shipped_budget = tree.get("budgets", {}).get(from_budget, {})
        sched = dict(shipped_budget.get("scheduler") or tree.get("scheduler") or {})
        if sched.get("type") != "asha":
            sched = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
        budget_keys = {**preset_overrides(str(budget_preset(from_budget))), **(shipped_budget.get("fixed") or {})}
        total = int(budget_keys.get("train.total_steps", setting["steps"]))
        # Same fraction of the run as the shipped budget's grace period, on an evaluation step.
        grace = sched["grace_period"] / total * setting["steps"]
        grace = max(setting["every"], int(round(grace / setting["every"])) * setting["every"])
        scheduler = {"type": "asha", "grace_period": grace, "reduction_factor": sched["reduction_factor"]}
    out["scheduler"] = scheduler
    out["budgets"] = {"smoke": {"num_samples": num_samples}}
    return out


def search_figures(exp_dir: Path) -> dict:
    """Best mean-over-seeds final FD of configurations whose every seed completed, and images trained in all."""
    trials = pd.read_parquet(exp_dir / TRIALS_FILE)
    ok = trials[trials["status"] == COMPLETED]
    counts = ok.groupby("config_id")["final_fd"].agg(["mean", "count"])
    seeds = trials.groupby("config_id")["seed"].nunique().max()
    full = counts[counts["count"] >= seeds]
    best = float(full["mean"].min()) if not full.empty else float("nan")
    return {"best_fd": best, "images": int(trials["images_seen"].fillna(0).sum()), "runs": len(trials),
            "configs": int(trials["config_id"].nunique()),
            "pruned": int((trials["status"] == PRUNED).sum())}


def run_benchmark(setting: dict, problems, storage: Path, from_budget: str, quiet: bool = True) -> list[dict]:
    from tune.search import run_search, start_ray

    rows = []
    walls_path = storage / "wall_s.json"  # wall seconds per search, summed over the invocations that ran it
    started = start_ray()  # one local Ray for every search; run_search leaves a running Ray alone
    try:
        for problem in problems:
            n_dims = len(load_space(PROBLEMS[problem]).params)
            grid_configs = setting["grid_points"] ** n_dims
            samples = setting["samples"] or max(4, math.ceil(grid_configs / 6))
            for method in METHODS:
                search_seeds = [0] if method == "grid" else list(range(setting["search_seeds"]))
                for search_seed in search_seeds:
                    tree = derived_space(problem, method, setting, search_seed, from_budget, samples)
                    path = storage / "spaces" / f"{tree['name']}.yaml"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(yaml.safe_dump(tree, sort_keys=False))
                    exp_dir = storage / tree["name"]
                    info = exp_dir / "experiment.json"
                    again = info.exists()
                    t0 = time.time()
                    if not (again and json.loads(info.read_text()).get("status") == SEARCH_FINISHED):
                        exp_dir = run_search(path, "smoke", storage=storage, name=tree["name"], quiet=quiet,
                                             resume=again)
                    walls = json.loads(walls_path.read_text()) if walls_path.exists() else {}
                    walls[tree["name"]] = round(walls.get(tree["name"], 0.0) + time.time() - t0, 1)
                    walls_path.write_text(json.dumps(walls, indent=1))
                    figures = search_figures(exp_dir)
                    rows.append({"problem": problem, "method": method, "search_seed": search_seed,
                                 "wall_s": walls[tree["name"]], **figures})
                    print(f"[search_efficiency] {problem} {method} seed {search_seed}: best fd "
                          f"{figures['best_fd']:.4g}, {figures['images']:,} images, {figures['runs']} runs "
                          f"({figures['pruned']} pruned), {rows[-1]['wall_s']} s", flush=True)
    finally:
        if started:
            import ray

            ray.shutdown()
    return rows


def ratios(rows: list[dict]) -> pd.DataFrame:
    """Per problem and method: best FD / grid's best and images / grid's images, mean and range over search seeds."""
    df = pd.DataFrame(rows)
    out = []
    for problem, group in df.groupby("problem", sort=False):
        grid = group[group["method"] == "grid"].iloc[0]
        for method, sub in group.groupby("method", sort=False):
            fd_ratio = sub["best_fd"] / grid["best_fd"]
            compute = sub["images"] / grid["images"]
            out.append({"problem": problem, "method": method, "search_seeds": len(sub),
                        "best_fd_ratio": fd_ratio.mean(), "best_fd_ratio_min": fd_ratio.min(),
                        "best_fd_ratio_max": fd_ratio.max(), "compute_fraction": compute.mean(),
                        "compute_fraction_min": compute.min(), "compute_fraction_max": compute.max(),
                        "grid_best_fd": grid["best_fd"], "grid_images": int(grid["images"])})
    return pd.DataFrame(out)


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'problem':<10} {'method':<9} {'seeds':>5}  {'best FD / grid best':<24} {'images / grid images':<24}"]
    for r in table.itertuples():
        fd = f"{r.best_fd_ratio:.3f} [{r.best_fd_ratio_min:.3f}, {r.best_fd_ratio_max:.3f}]"
        cp = f"{r.compute_fraction:.3f} [{r.compute_fraction_min:.3f}, {r.compute_fraction_max:.3f}]"
        lines.append(f"{r.problem:<10} {r.method:<9} {r.search_seeds:>5}  {fd:<24} {cp:<24}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shrink everything to prove the script in minutes")
    p.add_argument("--problems", default="c,lognormal", help="comma-separated: c, lognormal (default both)")
    p.add_argument("--from-budget", default="cpu", help="shipped budget whose ASHA settings TPE+ASHA uses")
    p.add_argument("--steps", type=int, help="training steps per run (default 200; --quick 60)")
    p.add_argument("--grid-points", type=int, help="grid values per dimension (default 12; --quick 3)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default 3; --quick 1)")
    p.add_argument("--num-samples", type=int, help="configurations per TPE / random search "
                                                   "(default: a sixth of the grid's, at least 4; --quick 3)")
    p.add_argument("--search-seeds", type=int, help="search seeds of TPE and random (default 3; --quick 2)")
    p.add_argument("--storage", help="folder for the searches, kept, and resumed when the command is run again "
                                     "(default: a temporary folder, removed at the end)")
    p.add_argument("--cache-dir", default="", help="eval.cache_dir for the feature network (default: the usual)")
    args = p.parse_args(argv)
    setting = dict(QUICK if args.quick else FULL)
    for key, value in (("steps", args.steps), ("grid_points", args.grid_points), ("seeds", args.seeds),
                       ("samples", args.num_samples), ("search_seeds", args.search_seeds)):
        if value is not None:
            if value < 1:
                p.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
            setting[key] = value
    if setting["steps"] % setting["every"]:
        setting["every"] = max(1, setting["steps"] // 3)
    setting["cache_dir"] = args.cache_dir
    problems = [s for s in args.problems.split(",") if s]
    bad = [s for s in problems if s not in PROBLEMS]
    if bad:
        p.error(f"--problems: unknown {bad[0]!r}; allowed: {', '.join(PROBLEMS)}")
    storage = Path(args.storage) if args.storage else Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    storage = storage.resolve()
    print(f"[search_efficiency] setting {json.dumps(setting)}; searches in {storage}", flush=True)
    try:
        rows = run_benchmark(setting, problems, storage, args.from_budget)
    finally:
        if not args.storage:
            shutil.rmtree(storage, ignore_errors=True)
    table = ratios(rows)
    print(format_table(table))
    print(json.dumps({"setting": setting, "searches": rows,
                      "ratios": json.loads(table.to_json(orient="records"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
