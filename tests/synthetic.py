"""Synthetic experiment tables with planted answers, in the documented Parquet schema.

Test fixtures, also handy for trying the analysis without a search: each `planted_*` function returns trials
(and evals) rows whose true answer is known, with seed-to-seed noise; `write_experiment` writes them
as an experiment folder. Config columns come from ict_core.config defaults, so the tables look like
the ones tune/ writes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ict_core.config import Config

DATASETS = {"digits-8": 64, "patches-16": 768, "patches-32": 3072, "patches-64": 12288}


def _flat_config() -> dict:
    flat = {}
    for key, value in Config().flat().items():
        flat[key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return flat


def trial_row(experiment: str, trial_id: str, seed: int, dataset: str = "digits-8", status: str = "completed",
              final_fd: float = math.nan, stratum: str | None = None, space: str = "synthetic",
              config: dict | None = None, **metrics) -> dict:
    """One trials.parquet row: default config with `config` overrides; config_id from the config."""
    name, _, resolution = dataset.rpartition("-")
    cfg = _flat_config()
    cfg.update({"data.name": name, "data.resolution": int(resolution), "train.seed": seed})
    cfg.update(config or {})
    dim = DATASETS.get(dataset, 64)
    if cfg["loss.huber_c"] is None:
        cfg["loss.huber_c"] = 0.00054 * math.sqrt(dim)
    identity = {k: v for k, v in cfg.items() if k != "train.seed"}
    row = {
        "experiment": experiment, "space": space, "stratum": stratum or dataset, "trial_id": trial_id,
        "config_id": f"cfg{abs(hash(json.dumps(identity, sort_keys=True, default=str))) % 10**8:08d}",
        "seed": seed, "status": status, "error": "boom" if status == "errored" else None,
        **cfg, "dataset": dataset, "dim": dim,
        "final_fd": final_fd, "best_fd": final_fd, "final_fd_2step": final_fd, "final_kid": math.nan,
        "final_loss": 0.1, "final_loss_train": 0.1, "final_loss_heldout": 0.1, "final_nn_dist": 0.2,
        "final_nn_dist_ref": 0.2, "steps": cfg["train.total_steps"],
        "images_seen": cfg["train.total_steps"] * cfg["train.batch_size"], "wall_s": 1.0, "device": "cpu",
        "world_size": 1, "git_commit": "synthetic", "versions": "{}",
    }
    row.update(metrics)
    return row


def write_experiment(folder: str | Path, trials: list[dict], evals: list[dict] | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(trials).to_parquet(folder / "trials.parquet", index=False)
    if evals is not None:
        pd.DataFrame(evals).to_parquet(folder / "evals.parquet", index=False)
    return folder


def planted_c_scaling(rng: np.random.Generator, b: float = 0.5, a: float = 0.00054, seeds: int = 5,
                      noise: float = 0.3, datasets=("digits-8", "patches-16", "patches-32", "patches-64"),
                      experiment: str = "c_scaling", random_c: int = 0) -> list[dict]:
    """FD = 10 + 4 (ln c - ln c*)^2 + noise, c* = a d^b, on a grid of c spaced by 2x around c*.

    random_c > 0: instead, that many c drawn log-uniformly over the search space's range [1e-4, 1]
    plus the paper's c first, as the c_scaling search does (use seeds=1 to mimic it)."""
    rows = []
    for dataset in datasets:
        c_star = a * DATASETS[dataset] ** b
        # The grid does not contain c* itself, so the fit must interpolate between grid points.
        grid = c_star * 2.0 ** (np.arange(-3, 4) + rng.uniform(-0.5, 0.5))
        if random_c:
            grid = np.r_[0.00054 * DATASETS[dataset] ** 0.5, np.exp(rng.uniform(np.log(1e-4), 0.0, random_c))]
        for c in grid:
            for seed in range(seeds):
                fd = 10 + 4 * math.log(c / c_star) ** 2 + rng.normal(0, noise)
                rows.append(trial_row(experiment, f"{dataset}-{c:.5g}-{seed}", seed, dataset, final_fd=fd,
                                      space="c_scaling", config={"loss.huber_c": float(c)}))
    rows.append(trial_row(experiment, "diverged-0", 0, "digits-8", status="diverged",
                          config={"loss.huber_c": 1e-5}))
    return rows


def planted_dropout(rng: np.random.Generator, best=None, seeds: int = 4, noise: float = 0.3,
                    experiment: str = "dropout", rates=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5)) -> list[dict]:
    """FD quadratic in dropout with its minimum at best[objective]; the generalisation gap falls by
    0.005 and the nearest-neighbour ratio rises by 0.06 per 0.1 of dropout. rates=None mimics the
    dropout search: 0.3 and 0.0 first, then 18 rates drawn uniformly in [0, 0.6], one seed each."""
    best = best or {"consistency": 0.3, "diffusion": 0.1}
    rows = []
    for objective, p_best in best.items():
        grid = np.r_[0.3, 0.0, rng.uniform(0.0, 0.6, 18).round(4)] if rates is None else rates
        for p in grid:
            for seed in range(seeds):
                fd = 8 + 40 * (p - p_best) ** 2 + rng.normal(0, noise)
                gap = 0.05 * (0.6 - p) + rng.normal(0, 0.005)
                ratio = 0.7 + 0.6 * p + rng.normal(0, 0.02)
                rows.append(trial_row(experiment, f"{objective}-{p}-{seed}", seed, final_fd=fd, space="dropout",
                                      config={"network.dropout": p, "loss.objective": objective},
                                      final_loss_train=0.1, final_loss_heldout=0.1 + gap,
                                      final_nn_dist=0.2 * ratio, final_nn_dist_ref=0.2))
    return rows


def planted_curricula(rng: np.random.Generator, final_fd=None, seeds: int = 4, noise: float = 0.2,
                      total_steps: int = 1000, eval_every: int = 200, batch_size: int = 32,
                      experiment: str = "curriculum", random_s: bool = False) -> tuple[list[dict], list[dict]]:
    """FD curves that decay to final_fd[shape]; "adaptive" (no s0/s1 meaning) is included.
    random_s: every run draws its own s0, s1 (as a random search does), which do not affect FD."""
    final_fd = final_fd or {"exponential": 5.0, "sqrt": 7.0, "constant": 9.0, "adaptive": 6.0}
    trials, evals = [], []
    for shape, fd_end in final_fd.items():
        for seed in range(seeds):
            tid = f"{shape}-{seed}"
            offset = rng.normal(0, noise)
            steps = np.arange(eval_every, total_steps + 1, eval_every)
            fds = fd_end + offset + 30.0 * (1 - steps / total_steps) ** 2 + rng.normal(0, 0.05, steps.size)
            config = {"curriculum.shape": shape, "train.total_steps": total_steps,
                      "train.batch_size": batch_size}
            if random_s:
                config.update({"curriculum.s0": int(rng.integers(2, 40)), "curriculum.s1": int(rng.integers(80, 2560))})
            if shape == "adaptive":
                config.update({"curriculum.s0": math.nan, "curriculum.s1": math.nan})
            row = trial_row(experiment, tid, seed, final_fd=float(fds[-1]), space="curriculum", config=config)
            trials.append(row)
            for step, fd in zip(steps, fds):
                evals.append({"experiment": experiment, "trial_id": tid, "config_id": row["config_id"],
                              "step": int(step), "num_points": 11, "loss": 0.1, "fd": float(fd),
                              "fd_2step": float(fd), "kid": math.nan, "loss_train": 0.1, "loss_heldout": 0.1,
                              "nn_dist": 0.2, "nn_dist_ref": 0.2, "images_seen": int(step * batch_size),
                              "elapsed_s": float(step) / 100})
    return trials, evals


def planted_ablations(rng: np.random.Generator, alternatives: dict, seeds: int = 5, noise: float = 0.3,
                      experiment: str = "ablations") -> list[dict]:
    """The default config (the paper's choices) plus one alternative per key, FD(default) = 10.

    alternatives: key -> (alternative value, effect) with effect = FD(paper) - FD(alternative), so a
    negative effect means the paper's choice wins. Several keys share the one default arm, as in a
    one-factor-at-a-time search.
    """
    rows = [trial_row(experiment, f"default-{seed}", seed, final_fd=10 + rng.normal(0, noise), space="ablations")
            for seed in range(seeds)]
    for key, (value, effect) in alternatives.items():
        for seed in range(seeds):
            rows.append(trial_row(experiment, f"{key}={value}-{seed}", seed, space="ablations",
                                  final_fd=10 - effect + rng.normal(0, noise), config={key: value}))
    return rows


def first_prose(report_text: str) -> str:
    """The report's first prose paragraph: the block after the title, the table of answers that opens it and the
    line under that table on what was decided."""
    blocks = report_text.split("\n\n")[1:]
    return next(b for b in blocks if not b.lstrip().startswith(("|", "Decided: ")))
