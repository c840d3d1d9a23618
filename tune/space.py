"""Search-space files (tune/spaces/*.yaml): schema, validation and the resolved plan of a search.

A space is a YAML mapping; every config knob in it is an ict_core.config dotted key:

    name, description, question      what the search is for (which open question or ablation claim)
    fixed        {dotted key: value}  overrides for every trial
    params       {dotted key: {type: loguniform|uniform|int|choice|grid, low, high, values, log}}
    strata       [{name, fixed, optional}]  searched at the same time, each with its own searcher and budget
    points       [{dotted key: value}]  trials evaluated first; loss.huber_c: paper = 0.00054*sqrt(d) of the stratum
    search       {algorithm: optuna_tpe|grid|random, seed}
    metric, mode the reported metric the searcher optimises (e.g. fd, min)
    scheduler    {type: asha|none, grace_period, reduction_factor}  (time attribute: training steps of the trial)
    seeds        runs per configuration (train.seed, train.seed+1, ...)
    max_concurrent  trials in flight at once (on a cluster that can grow, shared by the search's strata)
    budgets      {smoke|cpu|gpu|paper: {num_samples, seeds, max_concurrent, scheduler, fixed, strata,
                  seeds_min, seeds_max, looks, max_runs}}
                 (a budget's `strata` lists the strata it runs, e.g. the cpu budget leaves out the data sets
                 too large to train there; default: all. seeds_min..seeds_max, looks and max_runs are the
                 budget's sequential design, tune/designer.py: claims start at seeds_min seeds and open ones get
                 more at `looks` planned looks up to seeds_max, within max_runs runs in all)
    claims       [{name, type: contrast|optimum|ranking|c_star, key, paper, reference, strata, at}]  the
                 verdicts the space is run for (tune/designer.py tests them; `Plan.claims` holds one per stratum
                 and alternative); a contrast's `at` picks its paper arm (arm a only) where several
                 configurations run at `paper` (metric: {loss.huber_c: paper})

A budget's model size, steps and evaluation are written once, in the preset tune/budgets/<budget>.yaml (`paper`
inherits the cifar10 preset through `base:`). A trial's config is that preset, then the space's `fixed`, the
space's own `budgets.<budget>.fixed` (rarely needed), the stratum's `fixed`, `--set`, and the searched params:
exactly `python -m ict_core.train --preset tune/budgets/<budget>.yaml --set ...` of the same keys.

Strings in `fixed` may name environment variables (${ICT_CIFAR10_PATH}); a stratum marked optional whose data set
needs a path that is not given is skipped, so CIFAR-10 / ImageNet 64 strata join a search only where the data exist.
Everything is checked before Ray starts: `load_space(...)` reads and checks the file (here; its schema is
tune/space_schema.py), `.plan(budget)` resolves it into strata (tune/strata.py); both raise SpaceError naming the
file, the key, the value and what is allowed.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from ict_core.config import ConfigError, all_keys, coerce, parse_record
from tune.named_values import is_named_value
from ict_core.records import SEARCH_METRICS
from tune.space_schema import (BUDGETS, CLAIM_TYPES, PARAM_TYPES, TOP_KEYS, BudgetSpec, ClaimYaml, Param, ParamSpec,
                               Plan, SchedulerSpec, SearchSpec, SpaceError, SpaceSpec, StratumSpec, expand_env,
                               space_path)


class Space:
    """A parsed, schema-checked space file. `plan(budget)` resolves and validates it against ict_core.config
    (tune/strata.py)."""

    def __init__(self, tree: dict, source: Path):
        self.source = source
        self.tree = tree
        self._check_schema()

    # ---- errors ---------------------------------------------------------------------------------
    def error(self, where: str, message: str) -> SpaceError:
        return SpaceError(f"{self.source}: {where}: {message}")

    def _mapping(self, value, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, f"must be a mapping, got {type(value).__name__} {value!r}")
        return value

    def check_overrides(self, value, where: str) -> dict:
        """Check a {dotted key: value} mapping against ict_core.config; strings may name ${ENV_VARS}."""
        out = {}
        for key, raw in self._mapping(value, where).items():
            key = str(key)
            try:
                out[key] = coerce(key, expand_env(raw))
            except ConfigError as err:
                raise self.error(f"{where}.{key}", f"{err} (value {raw!r})") from None
        return out

    def _record(self, cls: type, value, where: str, what: str = "key"):
        try:
            return parse_record(cls, value, where, what)
        except ConfigError as err:
            raise SpaceError(f"{self.source}: {err}") from None

    # ---- schema ---------------------------------------------------------------------------------
    def _objectives(self) -> tuple[list, list]:
        """`metric` and `mode` as lists: one metric (a word) or several (a list: a multi-objective search, its
        Pareto front per stratum in the report); `mode` one word for all, or one per metric."""
        metric, mode = self.tree.get("metric", "fd"), self.tree.get("mode", "min")
        metrics = list(metric) if isinstance(metric, list) else [metric]
        modes = list(mode) if isinstance(mode, list) else [mode] * len(metrics)
        if not metrics:
            raise self.error("metric", f"needs at least one metric; allowed: {', '.join(SEARCH_METRICS)}")
        for m in metrics:
            if m not in SEARCH_METRICS:
                raise self.error("metric", f"unknown metric {m!r}; allowed: {', '.join(SEARCH_METRICS)}")
        if len(set(metrics)) != len(metrics):
            raise self.error("metric", f"lists a metric twice: {metrics}")
        if len(modes) != len(metrics):
            raise self.error("mode", f"needs one mode per metric ({len(metrics)}), got {mode!r}")
        for m in modes:
            if m not in ("min", "max"):
                raise self.error("mode", f"must be min or max, got {m!r}")
        return metrics, modes

    def _check_schema(self) -> None:
        """Reads the file into checked attributes, part by part, in the order a reader meets them."""
        metrics, modes = self._objectives()
        spec = self._record(SpaceSpec, {**self.tree, "metric": metrics[0], "mode": modes[0]}, "", "top-level key")
        self.metrics, self.modes = metrics, modes
        name = spec.name
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise self.error("name", f"must be a word of letters, digits, '_', '-' or '.', "
                             f"got {self.tree.get('name')!r}")
        self.name = name
        self.description = spec.description.strip()
        self.question = spec.question.strip()
        self.fixed = self.check_overrides(spec.fixed, "fixed")
        self.params: dict[str, Param] = {str(key): self._param(str(key), pspec) for key, pspec in spec.params.items()}
        self._check_search(spec)
        self.scheduler = self.check_scheduler(spec.scheduler, "scheduler", {"type": "none"})
        self.seeds = spec.seeds
        self.max_concurrent = spec.max_concurrent
        self.points = [self._point(point, f"points[{i}]") for i, point in enumerate(spec.points)]
        self.strata = self._strata(spec.strata or [{"name": "all"}])
        self.budgets = {bname: self._budget(raw, bname) for bname, raw in spec.budgets.items()}
        for key in self.params:
            if key in self.fixed:
                raise self.error(f"fixed.{key}", "is also a searched param; remove it from one of them")
        self.claims = self._claims(spec.claims)

    def _check_search(self, spec: SpaceSpec) -> None:
        """The searcher and its objectives: what each algorithm allows of the params and the metrics."""
        search = self._record(SearchSpec, spec.search, "search")
        self.algorithm = search.algorithm
        self.search_seed = search.seed
        grid_keys = [k for k, p in self.params.items() if p.type == "grid"]
        if self.algorithm == "optuna_tpe" and grid_keys:
            raise self.error(f"params.{grid_keys[0]}.type", "grid is not allowed with search.algorithm optuna_tpe "
                             "(Optuna cannot run Tune grids); use choice, or search.algorithm grid")
        if self.algorithm == "grid":
            other = [k for k, p in self.params.items() if p.type != "grid"]
            if other:
                raise self.error(f"params.{other[0]}.type", f"search.algorithm grid needs type grid for every "
                                 f"param, got {self.params[other[0]].type!r}")
        self.metric = spec.metric
        self.mode = spec.mode
        if len(self.metrics) > 1 and self.algorithm != "optuna_tpe":
            raise self.error("metric", f"a list of metrics (a multi-objective search) needs search.algorithm "
                             f"optuna_tpe, got {self.algorithm!r}")

    def _point(self, point, where: str) -> dict:
        """A given point: searched keys only (any key for a grid), each a valid value or a named one (paper)."""
        point = self._mapping(point, where)
        for key, value in point.items():
            if key not in self.params and self.algorithm != "grid":
                raise self.error(f"{where}.{key}", f"is not a searched param; searched: "
                                 f"{', '.join(self.params) or 'none'}")
            if not is_named_value(key, value):
                try:
                    coerce(key, value)
                except ConfigError as err:
                    raise self.error(f"{where}.{key}", str(err)) from None
        return dict(point)

    def _strata(self, raw_strata: list) -> list[dict]:
        strata, seen = [], set()
        for i, raw in enumerate(raw_strata):
            stratum = self._record(StratumSpec, raw, f"strata[{i}]")
            sname = stratum.name
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", sname) or sname in seen:
                raise self.error(f"strata[{i}].name", f"must be a unique word of letters, digits, '_', '-' or '.', "
                                 f"got {raw.get('name')!r}")
            seen.add(sname)
            # Keep the raw strings: ${VARS} are expanded when planning, so a later env change is seen.
            self.check_overrides(stratum.fixed, f"strata[{i}].fixed")
            strata.append({"name": sname, "fixed": dict(stratum.fixed), "optional": stratum.optional})
        return strata

    def _budget(self, raw, bname: str) -> BudgetSpec:
        if bname not in BUDGETS:
            raise self.error(f"budgets.{bname}", f"unknown budget; allowed: {', '.join(BUDGETS)}")
        budget = self._record(BudgetSpec, raw, f"budgets.{bname}")
        self.check_overrides(budget.fixed, f"budgets.{bname}.fixed")
        if budget.strata is not None:
            names = [st["name"] for st in self.strata]
            if not isinstance(budget.strata, list) or not budget.strata:
                raise self.error(f"budgets.{bname}.strata", f"must be a list of stratum names from "
                                 f"{', '.join(names)}, got {budget.strata!r}")
            for name in budget.strata:
                if name not in names:
                    raise self.error(f"budgets.{bname}.strata", f"unknown stratum {name!r}; allowed: "
                                     f"{', '.join(names)}")
        return budget

    def _claims(self, raw: list) -> list:
        out, names = [], set()
        strata = [st["name"] for st in self.strata]
        for i, item in enumerate(raw or []):
            where = f"claims[{i}]"
            claim = self._record(ClaimYaml, item, where)
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", claim.name) or claim.name in names:
                raise self.error(f"{where}.name", f"must be a unique word of letters, digits, '_', '-' or '.', "
                                 f"got {claim.name!r}")
            names.add(claim.name)
            if not claim.type:
                raise self.error(f"{where}.type", f"is required; allowed: {', '.join(CLAIM_TYPES)}")
            key = "loss.huber_c" if claim.type == "c_star" and not claim.key else claim.key
            if key not in all_keys():
                raise self.error(f"{where}.key", f"must be a config key, got {claim.key!r}")
            if claim.type in ("optimum", "ranking", "c_star") and key not in self.params:
                raise self.error(f"{where}.key", f"a {claim.type} claim needs a searched param; searched: "
                                 f"{', '.join(self.params) or 'none'}; got {key!r}")
            need = {"contrast": "paper", "optimum": "reference"}.get(claim.type)
            if need and getattr(claim, need) is None:
                raise self.error(f"{where}.{need}", f"is required for a {claim.type} claim (a value of {key})")
            for name in ("paper", "reference"):
                value = getattr(claim, name)
                if value is not None and not is_named_value(key, value):
                    try:
                        coerce(key, value)
                    except ConfigError as err:
                        raise self.error(f"{where}.{name}", str(err)) from None
            if claim.at is not None:
                if claim.type != "contrast" or not isinstance(claim.at, dict) or not claim.at:
                    raise self.error(f"{where}.at", f"is a contrast's mapping of other config keys to the paper "
                                     f"arm's values, e.g. {{loss.huber_c: paper}}; got {claim.at!r} on a "
                                     f"{claim.type} claim")
                for at_key, value in claim.at.items():
                    if at_key not in all_keys() or at_key == key:
                        raise self.error(f"{where}.at", f"keys must be config keys other than {key}, got {at_key!r}")
                    if not is_named_value(at_key, value):
                        try:
                            coerce(at_key, value)
                        except ConfigError as err:
                            raise self.error(f"{where}.at.{at_key}", str(err)) from None
            if claim.strata is not None:
                bad = [s for s in claim.strata if s not in strata] if isinstance(claim.strata, list) else [claim.strata]
                if bad or not claim.strata:
                    raise self.error(f"{where}.strata", f"must list strata of this space ({', '.join(strata)}), "
                                     f"got {claim.strata!r}")
            out.append(ClaimYaml(claim.name, claim.type, key, claim.paper, claim.reference, claim.strata, claim.at))
        return out

    def _param(self, key: str, spec) -> Param:
        where = f"params.{key}"
        if key not in all_keys():
            try:
                coerce(key, None)
            except ConfigError as err:
                raise self.error(where, str(err)) from None
        spec = self._mapping(spec, where)
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            raise self.error(f"{where}.type", f"must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        allowed = {"loguniform": ("low", "high"), "uniform": ("low", "high"), "int": ("low", "high", "log"),
                   "choice": ("values",), "grid": ("values",)}[kind]
        bad = [k for k in spec if k not in ("type", *allowed)]
        if bad:
            raise self.error(f"{where}.{bad[0]}", f"unknown key for type {kind}; allowed: {', '.join(allowed)}")
        self._record(ParamSpec, spec, where)
        if kind in ("choice", "grid"):
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise self.error(f"{where}.values", f"must be a non-empty list, got {values!r}")
            out = []
            for v in values:
                if is_named_value(key, v):
                    out.append(v)
                    continue
                try:
                    out.append(coerce(key, v))
                except ConfigError as err:
                    raise self.error(f"{where}.values", f"{err} (allowed range comes from ict_core.config)") from None
            return Param(key, kind, values=tuple(out))
        for end in ("low", "high"):
            if end not in spec:
                raise self.error(f"{where}.{end}", f"is required for type {kind}")
        try:
            low, high = coerce(key, spec["low"]), coerce(key, spec["high"])
        except ConfigError as err:
            raise self.error(where, f"{err} (low/high must be valid values of {key})") from None
        if not isinstance(low, (int, float)) or isinstance(low, bool):
            raise self.error(f"{where}.type", f"{kind} needs a numeric config key; {key} holds {type(low).__name__}")
        if kind == "int" and not isinstance(low, int):
            raise self.error(f"{where}.type", f"int needs an integer config key; {key} holds {type(low).__name__}")
        if low >= high:
            raise self.error(where, f"low must be < high, got low={low!r}, high={high!r}")
        log = kind == "loguniform" or bool(spec.get("log", False))
        if log and low <= 0:
            raise self.error(f"{where}.low", f"must be > 0 on a log scale, got {low!r}")
        return Param(key, kind, low=low, high=high, log=log)

    def check_scheduler(self, value, where: str, base: dict) -> dict:
        spec = {**base, **self._mapping(value, where)}
        checked = self._record(SchedulerSpec, spec, where)
        if checked.type == "asha":
            spec.setdefault("grace_period", 1)
            spec.setdefault("reduction_factor", 2)
            if spec["reduction_factor"] is None or float(spec["reduction_factor"]) <= 1:
                raise self.error(f"{where}.reduction_factor", f"must be a number > 1, got {spec['reduction_factor']!r}")
        return spec

    # ---- plan -----------------------------------------------------------------------------------
    def plan(self, budget: str = "smoke", num_samples: int | None = None, extra: dict | None = None) -> Plan:
        """Resolve strata, budget and points into trial inputs (tune/strata.plan_space); every stratum's first
        trial is run through ict_core.config so a bad combination fails here and not in a Ray worker."""
        from tune.strata import plan_space

        return plan_space(self, budget, num_samples, extra)



def load_space(name_or_path: str | os.PathLike) -> Space:
    """The space of a shipped name (tune/spaces/NAME.yaml) or of a path, read and checked."""
    path = space_path(name_or_path)
    try:
        with path.open() as stream:  # a stream, so that YAML's error names the file
            tree = yaml.safe_load(stream)
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise SpaceError(f"{path}: must be a YAML mapping with keys {', '.join(TOP_KEYS)}, "
                         f"got {type(tree).__name__}")
    return Space(copy.deepcopy(tree), path)
