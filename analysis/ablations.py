"""The paper's ablation claims: does each iCT choice beat its alternative at matched settings?

Claims (Song & Dhariwal 2023): no EMA teacher beats CT's EMA teacher (Sec. 3.2), Pseudo-Huber with
c = 0.00054 sqrt(d) beats squared L2 (Sec. 3.3), lognormal noise sampling beats uniform and the
1/(sigma_{i+1} - sigma_i) weighting beats uniform weights (Sec. 3.5), and a Fourier scale of 0.02
beats CT's 16 (Sec. 3.1). The effect is FD(paper's choice) - FD(alternative) between runs that
agree on every other config column; negative favours the paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.stats import LEVEL, N_BOOT, value_token, context_key, percentile_ci, resample_means, usable

REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "reproduced", "contradicted", "inconclusive", "not run"


@dataclass(frozen=True)
class Ablation:
    """One claim: `key` set to `paper` against every other value found in the tables.

    ignore: keys that may differ between the arms (e.g. loss.huber_c is meaningless for L2);
    paper_filter: optional test on the paper arm's rows (e.g. c at the paper's heuristic).
    """

    name: str
    key: str
    paper: object
    ignore: tuple = ()
    paper_filter: object = field(default=None, compare=False)


def _heuristic_c(rows: pd.DataFrame) -> pd.Series:
    c = pd.to_numeric(rows["loss.huber_c"], errors="coerce")
    ref = 0.00054 * np.sqrt(pd.to_numeric(rows["dim"], errors="coerce"))
    return (c - ref).abs() <= 0.05 * ref


ABLATIONS = (
    Ablation("EMA teacher vs none", "loss.teacher", "none", ignore=("loss.ema_mu0",)),
    Ablation("Pseudo-Huber vs L2", "loss.metric", "pseudo_huber", ignore=("loss.huber_c",), paper_filter=_heuristic_c),
    Ablation("lognormal vs uniform noise sampling", "loss.noise_schedule", "lognormal", ignore=("loss.p_mean", "loss.p_std")),
    Ablation("iCT weighting vs uniform", "loss.weighting", "ict"),
    Ablation("Fourier scale", "network.fourier_scale", 0.02),
)


def _verdict(lo: float, hi: float, num_paper: int, num_alt: int, min_seeds: int) -> tuple[str, str]:
    if min(num_paper, num_alt) < min_seeds:
        return INCONCLUSIVE, f"too few seeds ({num_paper} vs {num_alt}; need {min_seeds} per arm)"
    if hi < 0:
        return REPRODUCED, "interval below 0: the paper's choice has lower FD"
    if lo > 0:
        return CONTRADICTED, "interval above 0: the alternative has lower FD"
    return INCONCLUSIVE, "interval contains 0"


def compare(trials: pd.DataFrame, ablation: Ablation, metric: str = "final_fd", n_boot: int = N_BOOT,
            level: float = LEVEL, min_seeds: int = 3, rng=None) -> list[dict]:
    """One row per alternative value of `ablation.key` found in `trials`.

    trials: one row per run with dataset, seed, status, `metric` and dotted config columns. Cells are
    runs of one dataset that agree on every other config column (apart from ablation.ignore); the
    effect is the mean over cells of mean(paper arm) - mean(alternative arm), resampling seeds within
    each arm of each cell. Row keys: ablation, key, paper, alternative, effect, lo, hi, num_cells,
    num_paper, num_alt (runs), verdict, reason.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    base = {"ablation": ablation.name, "key": ablation.key, "paper": value_token(ablation.paper)}
    if ablation.key not in trials.columns:
        return [{**base, "alternative": "-", "effect": math.nan, "lo": math.nan, "hi": math.nan, "num_cells": 0,
                 "num_paper": 0, "num_alt": 0, "verdict": NOT_RUN, "reason": f"no column {ablation.key!r}"}]
    runs = usable(trials, metric)
    runs = runs.assign(_value=runs[ablation.key].map(value_token))
    paper_token = value_token(ablation.paper)
    is_paper = runs["_value"] == paper_token
    if ablation.paper_filter is not None and is_paper.any():
        is_paper &= ablation.paper_filter(runs).fillna(False).astype(bool)
    out = []
    for alt in sorted(set(runs["_value"]) - {paper_token}):
        sub = runs[is_paper | (runs["_value"] == alt)]
        ctx = context_key(sub, exclude={ablation.key, *ablation.ignore}) + "@" + sub["dataset"].astype(str)
        cells = []
        for _, cell in sub.groupby(ctx):
            paper_values = cell.loc[cell["_value"] == paper_token, metric].to_numpy(float)
            alt_values = cell.loc[cell["_value"] == alt, metric].to_numpy(float)
            if paper_values.size and alt_values.size:
                cells.append((paper_values, alt_values))
        row = {**base, "alternative": alt, "num_cells": len(cells),
               "num_paper": sum(p.size for p, _ in cells), "num_alt": sum(a.size for _, a in cells)}
        if not cells:
            out.append({**row, "effect": math.nan, "lo": math.nan, "hi": math.nan, "verdict": NOT_RUN,
                        "reason": "no runs of the two arms at matching settings"})
            continue
        effect = float(np.mean([p.mean() - a.mean() for p, a in cells]))
        boot = np.mean([resample_means(p, n_boot, rng) - resample_means(a, n_boot, rng) for p, a in cells], axis=0)
        lo, hi = percentile_ci(boot, level, df=sum(p.size + a.size - 2 for p, a in cells))
        smallest_paper = min(p.size for p, _ in cells)
        smallest_alt = min(a.size for _, a in cells)
        verdict, reason = _verdict(lo, hi, smallest_paper, smallest_alt, min_seeds)
        out.append({**row, "effect": effect, "lo": lo, "hi": hi, "verdict": verdict, "reason": reason})
    return out


def analyze_ablations(trials: pd.DataFrame, ablations=ABLATIONS, metric: str = "final_fd", n_boot: int = N_BOOT,
                      level: float = LEVEL, min_seeds: int = 3, seed: int = 0) -> pd.DataFrame:
    """Every claim in `ablations` against every alternative in the tables, one row each (see compare);
    a claim with no alternative value in the tables gets one "not run" row."""
    rng = np.random.default_rng(seed)
    rows = []
    for ablation in ablations:
        found = compare(trials, ablation, metric, n_boot, level, min_seeds, rng)
        rows += found or [{"ablation": ablation.name, "key": ablation.key, "paper": value_token(ablation.paper),
                           "alternative": "-", "effect": math.nan, "lo": math.nan, "hi": math.nan, "num_cells": 0,
                           "num_paper": 0, "num_alt": 0, "verdict": NOT_RUN,
                           "reason": "only one value in the tables"}]
    return pd.DataFrame(rows, columns=["ablation", "key", "paper", "alternative", "effect", "lo", "hi", "num_cells",
                                       "num_paper", "num_alt", "verdict", "reason"])
