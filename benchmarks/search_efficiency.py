"""Does the search save compute over a grid? Dense grid vs Optuna TPE + ASHA vs random search, on digits.

Two problems: the Pseudo-Huber c (one dimension, log scale, the c_scaling space's range) and the lognormal
(p_mean, p_std) (two dimensions, the lognormal space's ranges). Every method is a search through the project's
own machinery (tune.launch.run_search), on a space derived from the shipped one: its params, its searcher and,
for TPE + ASHA, the ASHA settings of one of its budgets (--from-budget) with the grace period scaled to this
benchmark's run length. The comparison is fair by construction:
- every method gets the same given points: none (the shipped spaces hand TPE and random search the paper's
  values first, which on c lie in the flat optimum; the grid got no such head start);
- each method's chosen configuration (its lowest mean final FD over the search's seeds, among configurations
  whose every seed completed) is re-scored on fresh seeds no search saw (train.seed from RESCORE_SEED), so the
  grid's many in-sample minima do not win by the winner's curse; a configuration chosen twice is trained once;
- TPE and random search run under several search seeds (5 by default), and the figures are means over search
  seeds with Student-t intervals; TPE + ASHA against random is tested directly (Welch's t over search seeds).
Printed: per method the re-scored FD (and the in-sample best beside it) as a ratio to the grid's re-scored FD,
compute (images trained, pruned runs included, re-scoring not counted) as a fraction of the grid's, and the
direct TPE + ASHA - random difference with its interval and p-value.

    python benchmarks/search_efficiency.py --quick --storage se       # the small setting: minutes
    python benchmarks/search_efficiency.py --storage se               # the full setting (hours on 2 cores)

With --storage the benchmark resumes: the same command again reads the searches (and re-scorings) that
finished, resumes the one that was interrupted and runs the rest, so a long run can be stopped and continued.
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
import scipy.stats
import yaml

from ict_core.config import preset_overrides
from ict_core.records import COMPLETED, PRUNED, SEARCH_FINISHED, TRIALS_FILE
from tune.space import load_space
from tune.space_schema import budget_preset

PROBLEMS = {"c": "c_scaling", "lognormal": "lognormal"}  # problem -> shipped space it is derived from
METHODS = ("grid", "tpe_asha", "random")

# A cheap digits run: the shipped smoke budget's settings (its evaluation EMA rate included: the default rate
# would leave every short run at its initial weights and every FD equal), a fixed run length and two evaluations
# before the last, so ASHA has rungs to compare at.
FULL = {"steps": 200, "every": 100, "grid_points": 12, "seeds": 3, "samples": None, "search_seeds": 5,
        "rescore_seeds": 3, "eval_samples": 500, "channels": 16, "batch": 32}
QUICK = {"steps": 60, "every": 20, "grid_points": 4, "seeds": 2, "samples": 3, "search_seeds": 5,
         "rescore_seeds": 3, "eval_samples": 100, "channels": 8, "batch": 16}
RESCORE_SEED = 1000  # first train.seed of the re-scoring runs; the searches use 0 .. seeds - 1


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
    # No given points for any method (the shipped spaces' points would be a head start the grid does not get).
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


def search_figures(exp_dir: Path, params=()) -> dict:
    """Best mean-over-seeds final FD of configurations whose every seed completed (the in-sample best), the
    chosen configuration's values of `params`, and images trained in all."""
    trials = pd.read_parquet(exp_dir / TRIALS_FILE)
    ok = trials[trials["status"] == COMPLETED]
    counts = ok.groupby("config_id")["final_fd"].agg(["mean", "count"])
    seeds = trials.groupby("config_id")["seed"].nunique().max()
    full = counts[counts["count"] >= seeds]
    best = float(full["mean"].min()) if not full.empty else float("nan")
    chosen = {}
    if not full.empty:
        row = ok[ok["config_id"] == full["mean"].idxmin()].iloc[0]
        chosen = {k: float(row[k]) for k in params}
    return {"best_fd": best, "images": int(trials["images_seen"].fillna(0).sum()), "runs": len(trials),
            "configs": int(trials["config_id"].nunique()),
            "pruned": int((trials["status"] == PRUNED).sum()), "chosen": chosen}


def rescore_space(problem: str, chosen: dict, setting: dict, from_budget: str) -> dict:
    """A one-configuration grid at `chosen`, trained on rescore_seeds fresh seeds (train.seed RESCORE_SEED, ...).
    Its name depends on the configuration only, so a configuration two searches chose is trained once."""
    tree = derived_space(problem, "grid", setting, 0, from_budget, 1)
    tag = "_".join(f"{k.split('.')[-1]}{v:.6g}" for k, v in sorted(chosen.items()))
    tree["name"] = f"{problem}_rescore_{tag}".replace("-", "m")
    tree["description"] = f"search_efficiency: {problem} re-scored on fresh seeds"
    tree["params"] = {k: {"type": "grid", "values": [v]} for k, v in chosen.items()}
    tree["fixed"] = {**tree["fixed"], "train.seed": RESCORE_SEED}
    tree["seeds"] = setting["rescore_seeds"]
    return tree


def _run(tree: dict, storage: Path, quiet: bool) -> tuple[Path, float]:
    """Run (or resume, or read back) the search of `tree` under `storage`; its path and the wall seconds spent
    now."""
    from tune.launch import run_search

    path = storage / "spaces" / f"{tree['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    exp_dir = storage / tree["name"]
    info = exp_dir / "experiment.json"
    again = info.exists()
    t0 = time.time()
    if not (again and json.loads(info.read_text()).get("status") == SEARCH_FINISHED):
        exp_dir = run_search(path, "smoke", storage=storage, name=tree["name"], quiet=quiet, resume=again)
    return exp_dir, time.time() - t0


def rescored_fd(exp_dir: Path) -> float:
    """Mean final FD of the completed re-scoring runs (NaN if none completed)."""
    trials = pd.read_parquet(exp_dir / TRIALS_FILE)
    ok = trials[trials["status"] == COMPLETED]
    return float(ok["final_fd"].mean()) if len(ok) else float("nan")


def run_benchmark(setting: dict, problems, storage: Path, from_budget: str, quiet: bool = True) -> list[dict]:
    from tune.tuners import start_ray

    rows = []
    walls_path = storage / "wall_s.json"  # wall seconds per search, summed over the invocations that ran it
    started = start_ray()  # one local Ray for every search; run_search leaves a running Ray alone
    try:
        for problem in problems:
            params = list(load_space(PROBLEMS[problem]).params)
            grid_configs = setting["grid_points"] ** len(params)
            samples = setting["samples"] or max(4, math.ceil(grid_configs / 6))
            for method in METHODS:
                search_seeds = [0] if method == "grid" else list(range(setting["search_seeds"]))
                for search_seed in search_seeds:
                    tree = derived_space(problem, method, setting, search_seed, from_budget, samples)
                    exp_dir, wall = _run(tree, storage, quiet)
                    walls = json.loads(walls_path.read_text()) if walls_path.exists() else {}
                    walls[tree["name"]] = round(walls.get(tree["name"], 0.0) + wall, 1)
                    figures = search_figures(exp_dir, params)
                    rescored = float("nan")
                    if figures["chosen"]:
                        again = rescore_space(problem, figures["chosen"], setting, from_budget)
                        rescore_dir, wall = _run(again, storage, quiet)
                        walls[again["name"]] = round(walls.get(again["name"], 0.0) + wall, 1)
                        rescored = rescored_fd(rescore_dir)
                    walls_path.write_text(json.dumps(walls, indent=1))
                    rows.append({"problem": problem, "method": method, "search_seed": search_seed,
                                 "wall_s": walls[tree["name"]], "rescored_fd": rescored, **figures})
                    print(f"[search_efficiency] {problem} {method} seed {search_seed}: chose {figures['chosen']}, "
                          f"in-sample fd {figures['best_fd']:.4g}, re-scored fd {rescored:.4g}, "
                          f"{figures['images']:,} images, {figures['runs']} runs ({figures['pruned']} pruned), "
                          f"{rows[-1]['wall_s']} s", flush=True)
    finally:
        if started:
            import ray

            ray.shutdown()
    return rows


def _t_summary(values) -> tuple[float, float, float]:
    """Mean of `values` with its 95% Student-t interval over them (NaN ends with fewer than two)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    if v.size < 2:
        return (float(v.mean()), math.nan, math.nan)
    half = float(scipy.stats.t.ppf(0.975, v.size - 1)) * v.std(ddof=1) / math.sqrt(v.size)
    return (float(v.mean()), float(v.mean() - half), float(v.mean() + half))


def ratios(rows: list[dict]) -> pd.DataFrame:
    """Per problem and method, over search seeds (mean and 95% t interval): the re-scored FD of the chosen
    configuration / the grid's re-scored FD (the outcome), the in-sample best FD / the grid's in-sample best (what
    the searcher saw), and images / the grid's images."""
    df = pd.DataFrame(rows)
    if "rescored_fd" not in df.columns:
        df["rescored_fd"] = math.nan
    out = []
    for problem, group in df.groupby("problem", sort=False):
        grid = group[group["method"] == "grid"].iloc[0]
        for method, sub in group.groupby("method", sort=False):
            rescored = _t_summary(sub["rescored_fd"] / grid["rescored_fd"])
            in_sample = _t_summary(sub["best_fd"] / grid["best_fd"])
            compute = _t_summary(sub["images"] / grid["images"])
            out.append({"problem": problem, "method": method, "search_seeds": len(sub),
                        "rescored_ratio": rescored[0], "rescored_ratio_lo": rescored[1],
                        "rescored_ratio_hi": rescored[2], "best_fd_ratio": in_sample[0],
                        "best_fd_ratio_lo": in_sample[1], "best_fd_ratio_hi": in_sample[2],
                        "compute_fraction": compute[0], "compute_fraction_lo": compute[1],
                        "compute_fraction_hi": compute[2], "grid_rescored_fd": grid["rescored_fd"],
                        "grid_best_fd": grid["best_fd"], "grid_images": int(grid["images"])})
    return pd.DataFrame(out)


def direct_test(rows: list[dict], a: str = "tpe_asha", b: str = "random") -> pd.DataFrame:
    """Per problem: mean re-scored FD of method a minus method b over their search seeds, Welch's 95% interval and
    p-value (negative: a chose better configurations), and the same for images trained."""
    df = pd.DataFrame(rows)
    out = []
    for problem, group in df.groupby("problem", sort=False):
        row = {"problem": problem, "a": a, "b": b}
        for column in ("rescored_fd", "images"):
            x = group.loc[group["method"] == a, column].astype(float).dropna().to_numpy()
            y = group.loc[group["method"] == b, column].astype(float).dropna().to_numpy()
            diff, lo, hi, p = math.nan, math.nan, math.nan, math.nan
            if x.size >= 2 and y.size >= 2:
                va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
                diff = float(x.mean() - y.mean())
                if va + vb > 0:
                    df_w = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
                    half = float(scipy.stats.t.ppf(0.975, df_w)) * math.sqrt(va + vb)
                    lo, hi = diff - half, diff + half
                    p = float(2 * scipy.stats.t.sf(abs(diff) / math.sqrt(va + vb), df_w))
            row.update({f"{column}_diff": diff, f"{column}_lo": lo, f"{column}_hi": hi, f"{column}_p": p,
                        "n_a": int(x.size), "n_b": int(y.size)})
        out.append(row)
    return pd.DataFrame(out)


def _ci(v, lo, hi) -> str:
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{v:.3f}"


def format_table(table: pd.DataFrame, direct: pd.DataFrame | None = None) -> str:
    lines = [f"{'problem':<10} {'method':<9} {'seeds':>5}  {'re-scored FD / grid':<24} {'in-sample best / grid':<24} "
             f"{'images / grid images':<24}"]
    for r in table.itertuples():
        lines.append(f"{r.problem:<10} {r.method:<9} {r.search_seeds:>5}  "
                     f"{_ci(r.rescored_ratio, r.rescored_ratio_lo, r.rescored_ratio_hi):<24} "
                     f"{_ci(r.best_fd_ratio, r.best_fd_ratio_lo, r.best_fd_ratio_hi):<24} "
                     f"{_ci(r.compute_fraction, r.compute_fraction_lo, r.compute_fraction_hi):<24}")
    for r in ([] if direct is None else direct.itertuples()):
        lines.append(f"{r.problem}: {r.a} - {r.b}, re-scored FD {r.rescored_fd_diff:.3g} "
                     f"[{r.rescored_fd_lo:.3g}, {r.rescored_fd_hi:.3g}] (Welch p = {r.rescored_fd_p:.2g}, "
                     f"{r.n_a} vs {r.n_b} search seeds); images {r.images_diff:.3g} [{r.images_lo:.3g}, "
                     f"{r.images_hi:.3g}] (p = {r.images_p:.2g})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shrink everything to prove the script in minutes")
    p.add_argument("--problems", default="c,lognormal", help="comma-separated: c, lognormal (default both)")
    p.add_argument("--from-budget", default="cpu", help="shipped budget whose ASHA settings TPE+ASHA uses")
    p.add_argument("--steps", type=int, help="training steps per run (default 200; --quick 60)")
    p.add_argument("--grid-points", type=int, help="grid values per dimension (default 12; --quick 4)")
    p.add_argument("--seeds", type=int, help="seeds per configuration in the searches (default 3; --quick 2)")
    p.add_argument("--num-samples", type=int, help="configurations per TPE / random search "
                                                   "(default: a sixth of the grid's, at least 4; --quick 3)")
    p.add_argument("--search-seeds", type=int, help="search seeds of TPE and random (default 5)")
    p.add_argument("--rescore-seeds", type=int, help="fresh seeds each chosen configuration is re-scored on "
                                                     "(default 3)")
    p.add_argument("--storage", help="folder for the searches, kept, and resumed when the command is run again "
                                     "(default: a temporary folder, removed at the end)")
    p.add_argument("--cache-dir", default="", help="eval.cache_dir for the feature network (default: the usual)")
    args = p.parse_args(argv)
    setting = dict(QUICK if args.quick else FULL)
    for key, value in (("steps", args.steps), ("grid_points", args.grid_points), ("seeds", args.seeds),
                       ("samples", args.num_samples), ("search_seeds", args.search_seeds),
                       ("rescore_seeds", args.rescore_seeds)):
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
    direct = direct_test(rows)
    print(format_table(table, direct))
    print(json.dumps({"setting": setting, "searches": rows, "ratios": json.loads(table.to_json(orient="records")),
                      "direct": json.loads(direct.to_json(orient="records"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
