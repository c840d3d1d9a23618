"""A space's plan for one budget: its strata expanded into the trial inputs a search runs (tune/space.Space.plan).

Per stratum: the budget's preset, then the space's `fixed`, the budget's own `fixed`, the stratum's `fixed` and
`--set`, with input paths made absolute on the driver; its points and grid variants resolved ("paper" replaced by
the stratum's 0.00054*sqrt(d)); and every trial configuration it can produce (its first trial, each variant, each
point, each choice) checked against ict_core.config here, before Ray starts. Also the budget's sequential design
and the claims planned per stratum. Every check raises SpaceError naming the file, the key and the value.
"""
from __future__ import annotations

import itertools

from ict_core.config import ConfigError, coerce, load_config, preset_overrides
from tune.named_values import resolve_named_value
from tune.space_schema import (BUDGETS, NEEDS_PATH, BudgetSpec, Plan, PlannedClaim, SpaceError, Stratum,
                               budget_preset, dataset_dim)
from tune.inputs import INPUT_KEYS, absolute_input


def plan_space(space, budget: str = "smoke", num_samples: int | None = None, extra: dict | None = None) -> Plan:
    """The Plan of `space` (tune/space.Space) for `budget`: num_samples per stratum (default: the budget's) and
    `extra` dotted overrides (--set) on every trial."""
    if budget not in BUDGETS:
        raise SpaceError(f"{space.source}: unknown budget {budget!r}; allowed: {', '.join(BUDGETS)}")
    if space.budgets and budget not in space.budgets:  # a space without a budgets section runs any budget as is
        raise SpaceError(f"{space.source}: budget {budget!r} is not defined in this space's budgets; it defines "
                         f"{', '.join(space.budgets)} (add budgets.{budget} to the file, or pick one of those)")
    spec = space.budgets.get(budget, BudgetSpec())
    where = f"budgets.{budget}"
    samples = num_samples if num_samples is not None else (spec.num_samples or 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise space.error(f"{where}.num_samples", f"must be an integer >= 1, got {samples!r}")
    seeds = spec.seeds or space.seeds
    design = _design(space, spec, where, seeds)
    if design is not None:
        seeds = design.seeds_min  # the first round; later rounds add seeds to open claims
    concurrent = spec.max_concurrent or space.max_concurrent
    scheduler = space.check_scheduler(spec.scheduler, f"{where}.scheduler", dict(space.scheduler))
    layers = _budget_layers(space, budget, spec, where, extra)
    strata, skipped = [], []
    for i, raw in enumerate(space.strata):
        if spec.strata is not None and raw["name"] not in spec.strata:  # checked when the file was read
            skipped.append(f"{raw['name']} (not in budgets.{budget}.strata)")
            continue
        stratum = _stratum(space, i, raw, layers, samples, skipped)
        if stratum is not None:
            strata.append(stratum)
    if not strata:
        raise space.error("strata", f"no stratum can run: {'; '.join(skipped)}")
    if len(space.metrics) > 1 and scheduler.get("type") != "none":
        raise space.error(f"{where}.scheduler" if spec.scheduler else "scheduler",
                          f"{scheduler.get('type')} stops trials on one metric; a multi-objective space "
                          f"({', '.join(space.metrics)}) needs scheduler type none")
    return Plan(space.name, str(space.source), budget, space.description, space.question, space.algorithm,
                space.search_seed, space.metric, space.mode, scheduler, seeds, concurrent, space.params, strata,
                skipped, _plan_claims(space, strata), design, list(space.metrics), list(space.modes))


def _budget_layers(space, budget: str, spec: BudgetSpec, where: str, extra: dict | None) -> tuple[dict, dict, dict]:
    """(preset, budget's fixed, --set) overrides of every stratum, checked; a searched param is in none of them
    (it replaces the preset's value of its key in every trial)."""
    budget_fixed = space.check_overrides(spec.fixed, f"{where}.fixed")
    try:
        preset = preset_overrides(str(budget_preset(budget)))
    except ConfigError as err:
        raise SpaceError(f"budget {budget}: {err}") from None
    preset = {k: coerce(k, v) for k, v in preset.items() if k not in space.params}
    extra = {str(k): v for k, v in (extra or {}).items()}
    try:
        extra = {k: coerce(k, v) for k, v in extra.items()}
    except ConfigError as err:
        raise SpaceError(f"--set: {err}") from None
    for key in space.params:
        if key in budget_fixed or key in extra:
            raise space.error(f"{where}.fixed.{key}" if key in budget_fixed else f"--set {key}",
                              "is a searched param and cannot be fixed")
    return preset, budget_fixed, extra


def _stratum(space, i: int, raw: dict, layers: tuple, samples: int, skipped: list) -> Stratum | None:
    """Stratum `raw` (the i-th of the file) resolved, or None (and a line in `skipped`) for an optional stratum
    whose data set needs a path that is not given."""
    preset, budget_fixed, extra = layers
    stratum_fixed = space.check_overrides(raw["fixed"], f"strata[{i}].fixed")
    for key in space.params:
        if key in stratum_fixed:
            raise space.error(f"strata[{i}].fixed.{key}", "is a searched param and cannot be fixed")
    fixed = {**preset, **space.fixed, **budget_fixed, **stratum_fixed, **extra}
    # Inputs resolved here, on the driver: a trial's working directory is not the driver's (and on a
    # cluster not even its machine), so a relative path would name another folder there.
    fixed.update({k: absolute_input(fixed[k]) for k in INPUT_KEYS if fixed.get(k)})
    data_name = fixed.get("data.name", "digits")
    if data_name in NEEDS_PATH and not fixed.get("data.path"):
        if raw["optional"]:
            skipped.append(f"{raw['name']} (data.name={data_name} needs data.path; "
                           f"not given: {raw['fixed'].get('data.path', 'no data.path')!r})")
            return None
        raise space.error(f"strata[{i}] ({raw['name']}).data.path",
                          f"data.name={data_name} needs data.path (a local folder), got "
                          f"{raw['fixed'].get('data.path', fixed.get('data.path', ''))!r}")
    try:
        base_cfg = load_config(overrides=fixed)
    except ConfigError as err:
        raise space.error(f"strata[{i}] ({raw['name']})", f"fixed overrides are not a valid config: {err}") from None
    dataset, dim = dataset_dim(base_cfg)
    points = [_resolve_point(space, p, dim, f"points[{j}]") for j, p in enumerate(space.points)]
    variants = _grid_variants(space, points, dim)
    # "paper" in a choice means this stratum's 0.00054*sqrt(d), wherever it is listed.
    choices = {k: [_resolve_point(space, {k: v}, dim, f"params.{k}.values")[k] for v in p.values]
               for k, p in space.params.items() if p.type == "choice"}
    stratum = Stratum(raw["name"], fixed, points, samples if not variants else len(variants),
                      dataset, dim, variants, choices)
    first = stratum.first_config(space.params)
    for overrides in ([first] + [{**fixed, **v} for v in variants] + [{**fixed, **p} for p in points]
                      + [{**first, k: v} for k, values in choices.items() for v in values]):
        try:
            load_config(overrides=overrides)
        except ConfigError as err:
            raise space.error(f"strata[{i}] ({raw['name']})", f"a trial configuration is invalid: {err}") from None
    return stratum


def _grid_variants(space, points: list, dim: int) -> list:
    """Every configuration of a grid search, its points first; [] for the other algorithms."""
    if space.algorithm != "grid":
        return []
    grid = [[(k, v) for v in p.values] for k, p in space.params.items()]
    combos = [dict(c) for c in itertools.product(*grid)] if grid else []
    variants = [_resolve_point(space, c, dim, "params") for c in combos]
    variants = points + [v for v in variants if v not in points]
    if not variants:
        raise space.error("params", "search.algorithm grid needs grid params or points")
    return variants


def _design(space, spec: BudgetSpec, where: str, seeds: int):
    """The budget's sequential design (tune.design_plan.Design), or None when it sets none."""
    if spec.seeds_min is None and spec.seeds_max is None:
        for key in ("looks", "max_runs"):
            if getattr(spec, key) is not None:
                raise space.error(f"{where}.{key}", "needs seeds_min and seeds_max in the same budget")
        return None
    from tune.design_plan import Design
    from tune.designer import DesignError

    lo = spec.seeds_min if spec.seeds_min is not None else seeds
    hi = spec.seeds_max if spec.seeds_max is not None else lo
    if hi < lo:
        raise space.error(f"{where}.seeds_max", f"must be >= seeds_min {lo}, got {hi}")
    if not space.claims:
        raise space.error(f"{where}.seeds_min", "a sequential design needs claims: (what the seeds decide)")
    try:
        return Design(seeds_min=lo, seeds_max=hi, looks=spec.looks or (1 if lo == hi else 3),
                      max_runs=spec.max_runs)
    except DesignError as err:
        raise space.error(where, str(err)) from None

def _plan_claims(space, strata: list) -> list:
    """One PlannedClaim per stratum (and alternative value, for contrasts) of the declared claims."""
    out = []
    for claim in space.claims:
        for st in strata:
            if claim.strata is not None and st.name not in claim.strata:
                continue
            values = _values(claim.key, st)
            base = f"{claim.name}:{st.name}"
            if claim.type == "contrast":
                paper = coerce(claim.key, resolve_named_value(claim.key, claim.paper, st.dim))
                if values is None or paper not in values:
                    raise space.error(f"claims ({claim.name}).paper", f"{claim.key}={claim.paper!r} is not a "
                                      f"value stratum {st.name} runs; it runs {values or 'a continuous range'}")
                alts = [v for v in values if v != paper]
                arm_a = {"a": paper}
                if claim.at:
                    arm_a["a_at"] = _paper_arm_at(space, claim, st, paper)
                for alt in alts:
                    name = base if len(alts) == 1 else f"{base}:{alt}"
                    out.append(PlannedClaim(name, claim.type, "paired", claim.key, st.name, {**arm_a, "b": alt}))
            elif claim.type == "ranking":
                if values is None or len(values) < 2:
                    raise space.error(f"claims ({claim.name}).key", f"a ranking needs a choice or grid param "
                                      f"with 2 or more values, got {claim.key}")
                out.append(PlannedClaim(base, claim.type, "ranking", claim.key, st.name, {"values": values}))
            else:
                ref = claim.reference if claim.type == "optimum" else "paper"
                ref = coerce(claim.key, resolve_named_value(claim.key, ref, st.dim))
                out.append(PlannedClaim(base, claim.type, "paired", claim.key, st.name, {"a": None, "b": ref}))
    return out


def _paper_arm_at(space, claim, stratum, paper) -> dict:
    """A contrast's `at` resolved for a stratum ("paper" c of its d), checked against the configurations it runs."""
    at = {k: coerce(k, resolve_named_value(k, v, stratum.dim)) for k, v in claim.at.items()}
    if stratum.variants:
        runs = [{**stratum.fixed, **v} for v in stratum.variants]
        found = any(r.get(claim.key, paper) == paper and all(r.get(k) == v for k, v in at.items()) for r in runs)
    else:  # a sampled search: each `at` value must be one it always or sometimes runs, not a point of a range
        found = all(stratum.fixed[k] == v if k in stratum.fixed else v in stratum.choices.get(k, ())
                    for k, v in at.items())
    if not found:
        raise space.error(f"claims ({claim.name}).at", f"stratum {stratum.name} runs no configuration with "
                          f"{claim.key}={paper!r} and {at}")
    return at


def _values(key: str, stratum) -> list | None:
    """The values of `key` a stratum runs (grid variants, choices), or None for a continuous param."""
    if stratum.variants:
        vals = []
        for v in stratum.variants:
            value = v.get(key, stratum.fixed.get(key))
            if value not in vals:
                vals.append(value)
        return vals
    if key in stratum.choices:
        return list(stratum.choices[key])
    return None


def _resolve_point(space, point: dict, dim: int, where: str) -> dict:
    out = {}
    for key, value in point.items():
        value = resolve_named_value(key, value, dim)
        p = space.params.get(key)
        if p is not None and p.low is not None and not (p.low <= value <= p.high):
            raise space.error(f"{where}.{key}", f"value {value!r} is outside the searched range "
                              f"[{p.low}, {p.high}]")
        out[key] = coerce(key, value)
    return out
