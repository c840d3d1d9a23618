"""Power in the plan: the smallest effect each declared claim can detect, from the spread an earlier experiment
measured (a pilot: `--pilot DIR` of tune/search.py and tune/campaign.py; docs/ANALYSIS.md, "Power in the plan").

For a claim between two named arms (an ablation contrast) the spread is the seed-to-seed SD of the per-seed
difference between the two arms' configurations in the pilot (the configuration of each arm with the most
completed seeds, same stratum, seeds in common). For a claim whose arm is "the best tested value" (optimum, c*)
or a ranking, and for a contrast whose arms the pilot did not run on common seeds, it is sqrt(2) x the pooled
within-configuration seed SD of the stratum: the SD of a difference of two independent runs (pairing on seeds
only narrows it, so this is the cautious figure). The detectable effect is tune.design_plan.detectable_effect at the
design's seeds_max and looks, at the claim's strictest Holm level alpha / (number of claims in the family).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ict_core.errors import BadInput
from ict_core.records import COMPLETED, TRIALS_FILE
from tune.design_plan import POWER, detectable_effect
from tune.designer import ALPHA
from tune.rounds import signatures

UNKNOWN = "unknown until a pilot (--pilot DIR: an earlier experiment of this space)"


class PilotError(BadInput):
    """A --pilot folder that holds no experiment to measure a spread from."""


def load_pilot(paths) -> pd.DataFrame:
    """The completed runs of every experiment folder (one holding trials.parquet) at or below `paths`."""
    frames = []
    for raw in paths or ():
        root = Path(raw).expanduser()
        if not root.exists():
            raise PilotError(f"--pilot {raw}: no such folder")
        tables = [root / TRIALS_FILE] if (root / TRIALS_FILE).exists() else sorted(root.rglob(TRIALS_FILE))
        tables = [t for t in tables if "ray" not in t.relative_to(root).parts[:-1]]
        if not tables:
            raise PilotError(f"--pilot {raw}: holds no {TRIALS_FILE} (give an experiment folder, e.g. "
                             f"docs/findings/cpu/weighting, or a folder above several)")
        for table in tables:
            df = pd.read_parquet(table)
            info = table.parent / "experiment.json"
            if "space" not in df.columns and info.exists():
                df["space"] = json.loads(info.read_text()).get("space")
            frames.append(df)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out[out["status"].astype(str) == COMPLETED]


def _matches(column: pd.Series, value) -> pd.Series:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        num = pd.to_numeric(column, errors="coerce")
        return (num - float(value)).abs() <= 1e-9 + 0.05 * abs(float(value))
    return column.astype(str) == str(value)


def _arm_values(rows: pd.DataFrame, key: str, value, metric: str) -> pd.Series | None:
    """{seed: metric} of the configuration at key == value with the most seeds, or None. A configuration is
    its config columns (rounds.signatures), not its trial id: one the designer grew spans several trial ids."""
    if key not in rows.columns:
        return None
    hit = rows[_matches(rows[key], value)]
    if hit.empty:
        return None
    hit = hit.assign(_sig=signatures(hit).to_numpy())
    best = hit.groupby("_sig")["seed"].nunique().sort_values(ascending=False, kind="stable").index[0]
    arm = hit[hit["_sig"] == best]
    return arm.groupby("seed")[metric].mean()


def pooled_sd(rows: pd.DataFrame, metric: str) -> tuple[float, int]:
    """The pooled within-configuration seed SD of `rows` and its degrees of freedom."""
    ss, df = 0.0, 0
    for _, g in rows.groupby("config_id"):
        v = pd.to_numeric(g[metric], errors="coerce").dropna().to_numpy()
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            df += len(v) - 1
    return (math.sqrt(ss / df), df) if df else (float("nan"), 0)


def claim_spread(claim, pilot: pd.DataFrame, space: str, metric: str) -> dict | None:
    """{"sd": SD of the claim's per-seed difference, "how": what it rests on} from the pilot, or None."""
    if pilot.empty or metric not in pilot.columns:
        return None
    rows = pilot[pilot["stratum"].astype(str) == claim.stratum]
    if "space" in rows.columns and rows["space"].notna().any():
        rows = rows[rows["space"].astype(str) == space]
    if rows.empty:
        return None
    if claim.kind == "paired" and claim.arms.get("a") is not None:
        a_rows = rows
        for key, value in (claim.arms.get("a_at") or {}).items():  # the paper arm's other settings (space `at`)
            a_rows = a_rows[_matches(a_rows[key], value)] if key in a_rows.columns else a_rows.iloc[:0]
        a = _arm_values(a_rows, claim.key, claim.arms["a"], metric)
        b = _arm_values(rows, claim.key, claim.arms["b"], metric)
        if a is not None and b is not None:
            common = a.index.intersection(b.index)
            if len(common) >= 2:
                d = (a[common] - b[common]).to_numpy()
                return {"sd": float(np.std(d, ddof=1)), "how": f"paired difference over {len(common)} seeds"}
    sd, df = pooled_sd(rows, metric)
    if not math.isfinite(sd):
        return None
    return {"sd": sd * math.sqrt(2), "how": f"sqrt(2) x pooled seed SD ({df} df)"}


def power_lines(plan, pilot: pd.DataFrame, family: int, source: str = "the pilot") -> list[str]:
    """One line per declared claim of `plan`: the smallest effect detectable with 80% power at seeds_max."""
    design = plan.design
    if not plan.claims:
        return ["power      no claims declared in this space (nothing for seeds to decide)"]
    if design is None:
        seeds_max, looks, what = plan.seeds, None, f"{plan.seeds} seeds (fixed)"
    else:
        seeds_max, looks = design.seeds_max, design.plan
        what = f"{design.seeds_max} seeds (looks at {', '.join(map(str, design.plan))})"
    alpha = (design.alpha if design else ALPHA) / max(1, family)
    lines = [f"power      smallest effect detected with {POWER:.0%} power by {what}, at alpha {alpha:.4g} "
             f"(Holm's strictest share of {family} claim(s)); seed spread: {source}"]
    metric = f"final_{plan.metric}"
    if seeds_max < 2:
        return [f"power      {seeds_max} seed per configuration: no claim can be decided at this budget "
                f"(it has no seed-to-seed spread); {len(plan.claims)} claim(s) declared"]
    for claim in plan.claims:
        spread = claim_spread(claim, pilot, plan.space, metric)
        if spread is None:
            lines.append(f"  {claim.name:<36} {UNKNOWN}")
            continue
        effect = detectable_effect(spread["sd"], seeds_max, alpha, "paired", looks=looks,
                                   spending=design.spending if design else "obf")
        lines.append(f"  {claim.name:<36} {effect:.3g} {plan.metric.upper()} (spread {spread['sd']:.3g}: "
                     f"{spread['how']})")
    return lines
