"""Search-space files (tune/spaces/*.yaml): schema, validation and the resolved plan of a search.

A space is a YAML mapping; every config knob in it is an ict_core.config dotted key:

    name, description, question      what the search is for (which open question or ablation claim)
    fixed        {dotted key: value}  overrides for every trial
    params       {dotted key: {type: loguniform|uniform|int|choice|grid, low, high, values, log}}
    strata       [{name, fixed, optional}]  searched one after the other, each with its own searcher and budget
    points       [{dotted key: value}]  trials evaluated first; loss.huber_c: paper = 0.00054*sqrt(d) of the stratum
    search       {algorithm: optuna_tpe|grid|random, seed}
    metric, mode the reported metric the searcher optimises (e.g. fd, min)
    scheduler    {type: asha|none, grace_period, reduction_factor}  (time attribute: training steps of the trial)
    seeds        runs per configuration (train.seed, train.seed+1, ...)
    max_concurrent  concurrent trials per stratum
    budgets      {smoke|cpu|gpu|paper: {num_samples, seeds, max_concurrent, scheduler, fixed, strata,
                  seeds_min, seeds_max, looks, max_runs}}
                 (a budget's `strata` lists the strata it runs, e.g. the cpu budget leaves out the data sets
                 too large to train there; default: all. seeds_min..seeds_max, looks and max_runs are the
                 budget's sequential design, tune/designer.py: claims start at seeds_min seeds and open ones get
                 more at `looks` planned looks up to seeds_max, within max_runs runs in all)
    claims       [{name, type: contrast|optimum|ranking|c_star, key, paper, reference, strata}]  the verdicts
                 the space is run for (tune/designer.py tests them; `Plan.claims` holds one per stratum and
                 alternative)

A budget's model size, steps and evaluation are written once, in the preset tune/budgets/<budget>.yaml (`paper`
inherits the cifar10 preset through `base:`). A trial's config is that preset, then the space's `fixed`, the
space's own `budgets.<budget>.fixed` (rarely needed), the stratum's `fixed`, `--set`, and the searched params:
exactly `python -m ict_core.train --preset tune/budgets/<budget>.yaml --set ...` of the same keys.

Strings in `fixed` may name environment variables (${ICT_CIFAR10_PATH}); a stratum marked optional whose data set
needs a path that is not given is skipped, so CIFAR-10 / ImageNet 64 strata join a search only where the data exist.
Everything is checked here, before Ray starts: `load_space(...).plan(budget)` raises SpaceError naming the file, the
key, the value and what is allowed.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from ict_core import datasets
from ict_core.errors import BadInput
from ict_core.config import (ConfigError, all_keys, coerce, in_range, load_config, one_of, parse_record,
                              preset_overrides)
from ict_core.records import SEARCH_METRICS
from tune.named_values import is_named_value, resolve_named_value
from tune.store import INPUT_KEYS, absolute_input

SPACE_DIR = Path(__file__).parent / "spaces"
BUDGET_DIR = Path(__file__).parent / "budgets"
BUDGETS = ("smoke", "cpu", "gpu", "paper")
PARAM_TYPES = ("loguniform", "uniform", "int", "choice", "grid")
ALGORITHMS = ("optuna_tpe", "grid", "random")
SCHEDULERS = ("asha", "none")
# Keys a trial reports (ict_core.trainer evaluation metrics) that a searcher may optimise.
METRICS = SEARCH_METRICS
NEEDS_PATH = datasets.NEEDS_PATH


class SpaceError(BadInput):
    """A search-space file that cannot be run; the message names the file, the key and the value."""


# The schema of a space file, read by ict_core.config's typed engine (parse_record): an unknown key fails naming
# the allowed ones; typed fields are converted and range-checked as config keys are.
@dataclass(frozen=True)
class SpaceSpec:
    name: str = ""
    description: str = ""
    question: str = ""
    fixed: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    strata: list = field(default_factory=list)
    points: list = field(default_factory=list)
    search: dict = field(default_factory=dict)
    metric: str = field(default="fd", metadata=one_of(*METRICS))
    mode: str = field(default="min", metadata=one_of("min", "max"))
    scheduler: dict = field(default_factory=dict)
    seeds: int = field(default=1, metadata=in_range(1))
    max_concurrent: int = field(default=2, metadata=in_range(1))
    budgets: dict = field(default_factory=dict)
    claims: list = field(default_factory=list)


TOP_KEYS = tuple(f.name for f in fields(SpaceSpec))


@dataclass(frozen=True)
class SearchSpec:
    algorithm: str = field(default="optuna_tpe", metadata=one_of(*ALGORITHMS))
    seed: int = field(default=0, metadata=in_range(0))


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = field(default="none", metadata=one_of(*SCHEDULERS))
    grace_period: Optional[int] = field(default=None, metadata=in_range(1))  # training steps
    reduction_factor: Optional[float] = None  # > 1, checked with its own message


@dataclass(frozen=True)
class BudgetSpec:
    num_samples: Optional[int] = field(default=None, metadata=in_range(1))
    seeds: Optional[int] = field(default=None, metadata=in_range(1))
    max_concurrent: Optional[int] = field(default=None, metadata=in_range(1))
    scheduler: Optional[dict] = None
    fixed: dict = field(default_factory=dict)
    strata: Optional[list] = None
    seeds_min: Optional[int] = field(default=None, metadata=in_range(2))
    seeds_max: Optional[int] = field(default=None, metadata=in_range(2))
    looks: Optional[int] = field(default=None, metadata=in_range(1))
    max_runs: Optional[int] = field(default=None, metadata=in_range(1))


CLAIM_TYPES = ("contrast", "optimum", "ranking", "c_star")


@dataclass(frozen=True)
class ClaimYaml:
    """One declared claim. contrast: `key` at `paper` against each other value the space runs (an ablation);
    optimum: the best tested value of the searched `key` against `reference` (Q2: dropout 0); ranking: the
    values of the searched `key` differ (Q3: curricula), the best named only when they do; c_star: the best
    tested loss.huber_c against the paper's 0.00054 sqrt(d) of the stratum. strata: where (default: all)."""

    name: str = ""
    type: str = field(default="", metadata=one_of(*CLAIM_TYPES))
    key: str = ""
    paper: Any = None
    reference: Any = None
    strata: Optional[list] = None


@dataclass(frozen=True)
class PlannedClaim:
    """A claim resolved for one stratum: what the designer tests (kind paired: arm a - arm b per seed; ranking:
    every value of `key`). arms: {"a": value, "b": value} or {"values": [...]}; None for the best tested value."""

    name: str
    type: str
    kind: str
    key: str
    stratum: str
    arms: dict


@dataclass(frozen=True)
class StratumSpec:
    name: str = ""
    fixed: dict = field(default_factory=dict)
    optional: bool = False


@dataclass(frozen=True)
class ParamSpec:
    type: str = field(default="", metadata=one_of(*PARAM_TYPES))
    low: Any = None
    high: Any = None
    values: Optional[list] = None
    log: bool = False


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: Any = None
    high: Any = None
    values: tuple = ()
    log: bool = False


@dataclass
class Stratum:
    """One independently searched slice of a space (e.g. one data set): its resolved trial inputs."""

    name: str
    fixed: dict  # every dotted override applied before the searched params
    points: list  # resolved points (numbers, "paper" replaced)
    num_samples: int
    dataset: str
    dim: int
    variants: list = field(default_factory=list)  # grid algorithm: every configuration, points first
    choices: dict = field(default_factory=dict)  # choice params' values for this stratum ("paper" resolved)

    def first_config(self, params: dict[str, Param]) -> dict:
        """The overrides of the first trial the searcher will run (a point, a grid variant, or the midpoints)."""
        if self.variants:
            return {**self.fixed, **self.variants[0]}
        chosen = dict(self.points[0]) if self.points else {}
        for key, p in params.items():
            if key in chosen:
                continue
            if p.type in ("choice", "grid"):
                chosen[key] = self.choices.get(key, p.values)[0]
            elif p.type == "loguniform" or p.log:
                chosen[key] = math.sqrt(p.low * p.high)
            else:
                chosen[key] = (p.low + p.high) / 2
            if p.type == "int":
                chosen[key] = int(round(chosen[key]))
        return {**self.fixed, **chosen}


@dataclass
class Plan:
    """Everything a search needs, resolved for one budget; JSON-safe through to_dict()."""

    space: str
    source: str
    budget: str
    description: str
    question: str
    algorithm: str
    search_seed: int
    metric: str
    mode: str
    scheduler: dict
    seeds: int
    max_concurrent: int
    params: dict[str, Param]
    strata: list[Stratum]
    skipped_strata: list[str]
    claims: list = field(default_factory=list)  # PlannedClaim, one per stratum (and alternative)
    design: Optional[Any] = None  # tune.designer.Design of the budget, None for a fixed number of seeds
    metrics: list = field(default_factory=list)  # every objective, `metric` first (several: multi-objective)
    modes: list = field(default_factory=list)

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    def to_dict(self) -> dict:
        multi = {"metrics": list(self.metrics), "modes": list(self.modes)} if self.multi else {}
        return {**multi,
            "space": self.space, "source": self.source, "budget": self.budget, "description": self.description,
            "question": self.question, "algorithm": self.algorithm, "search_seed": self.search_seed,
            "metric": self.metric, "mode": self.mode, "scheduler": self.scheduler, "seeds": self.seeds,
            "max_concurrent": self.max_concurrent,
            "params": {k: {"type": p.type, "low": p.low, "high": p.high, "values": list(p.values), "log": p.log}
                       for k, p in self.params.items()},
            "strata": [{"name": s.name, "fixed": s.fixed, "points": s.points, "num_samples": s.num_samples,
                        "dataset": s.dataset, "dim": s.dim, "variants": s.variants, "choices": s.choices}
                       for s in self.strata],
            "skipped_strata": self.skipped_strata,
            "claims": [vars(c) if not hasattr(c, "__dataclass_fields__") else
                       {f: getattr(c, f) for f in c.__dataclass_fields__} for c in self.claims],
            "design": None if self.design is None else {f: getattr(self.design, f)
                                                        for f in self.design.__dataclass_fields__},
        }


def dataset_dim(cfg) -> tuple[str, int]:
    """("patches-16", C*H*W) of a config's data set, known without loading it (docs/ALGORITHM.md,
    Distance: d = C*H*W)."""
    return datasets.dataset_dim(cfg.data.name, cfg.data.resolution)


def budget_preset(budget: str) -> Path:
    """The preset file of a budget: its model size, steps and evaluation, shared by every space."""
    if budget not in BUDGETS:
        raise SpaceError(f"unknown budget {budget!r}; allowed: {', '.join(BUDGETS)}")
    return BUDGET_DIR / f"{budget}.yaml"


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def space_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise SpaceError(f"space file {path} does not exist")
        return path
    path = SPACE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        import difflib

        close = difflib.get_close_matches(str(name_or_path), list_spaces(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpaceError(f"unknown space {str(name_or_path)!r}{hint}; shipped spaces: {', '.join(list_spaces())} "
                         f"(or give a path to a .yaml file)")
    return path


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), ""), value)
    return value


class Space:
    """A parsed, schema-checked space file. `plan(budget)` resolves and validates it against ict_core.config."""

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

    def _overrides(self, value, where: str) -> dict:
        """Check a {dotted key: value} mapping against ict_core.config; strings may name ${ENV_VARS}."""
        out = {}
        for key, raw in self._mapping(value, where).items():
            key = str(key)
            try:
                out[key] = coerce(key, _expand(raw))
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
            raise self.error("metric", f"needs at least one metric; allowed: {', '.join(METRICS)}")
        for m in metrics:
            if m not in METRICS:
                raise self.error("metric", f"unknown metric {m!r}; allowed: {', '.join(METRICS)}")
        if len(set(metrics)) != len(metrics):
            raise self.error("metric", f"lists a metric twice: {metrics}")
        if len(modes) != len(metrics):
            raise self.error("mode", f"needs one mode per metric ({len(metrics)}), got {mode!r}")
        for m in modes:
            if m not in ("min", "max"):
                raise self.error("mode", f"must be min or max, got {m!r}")
        return metrics, modes

    def _check_schema(self) -> None:
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
        self.fixed = self._overrides(spec.fixed, "fixed")

        self.params: dict[str, Param] = {}
        for key, pspec in spec.params.items():
            self.params[str(key)] = self._param(str(key), pspec)

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
        self.scheduler = self._scheduler(spec.scheduler, "scheduler", {"type": "none"})
        self.seeds = spec.seeds
        self.max_concurrent = spec.max_concurrent

        self.points = []
        for i, point in enumerate(spec.points):
            point = self._mapping(point, f"points[{i}]")
            for key, value in point.items():
                if key not in self.params and self.algorithm != "grid":
                    raise self.error(f"points[{i}].{key}", f"is not a searched param; searched: "
                                     f"{', '.join(self.params) or 'none'}")
                if not is_named_value(key, value):
                    try:
                        coerce(key, value)
                    except ConfigError as err:
                        raise self.error(f"points[{i}].{key}", str(err)) from None
            self.points.append(dict(point))

        self.strata = []
        seen = set()
        for i, raw in enumerate(spec.strata or [{"name": "all"}]):
            stratum = self._record(StratumSpec, raw, f"strata[{i}]")
            sname = stratum.name
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", sname) or sname in seen:
                raise self.error(f"strata[{i}].name", f"must be a unique word of letters, digits, '_', '-' or '.', "
                                 f"got {raw.get('name')!r}")
            seen.add(sname)
            # Keep the raw strings: ${VARS} are expanded when planning, so a later env change is seen.
            self._overrides(stratum.fixed, f"strata[{i}].fixed")
            self.strata.append({"name": sname, "fixed": dict(stratum.fixed), "optional": stratum.optional})

        self.budgets = {}
        for bname, raw in spec.budgets.items():
            if bname not in BUDGETS:
                raise self.error(f"budgets.{bname}", f"unknown budget; allowed: {', '.join(BUDGETS)}")
            budget = self._record(BudgetSpec, raw, f"budgets.{bname}")
            self._overrides(budget.fixed, f"budgets.{bname}.fixed")
            if budget.strata is not None:
                names = [st["name"] for st in self.strata]
                if not isinstance(budget.strata, list) or not budget.strata:
                    raise self.error(f"budgets.{bname}.strata", f"must be a list of stratum names from "
                                     f"{', '.join(names)}, got {budget.strata!r}")
                for name in budget.strata:
                    if name not in names:
                        raise self.error(f"budgets.{bname}.strata", f"unknown stratum {name!r}; allowed: "
                                         f"{', '.join(names)}")
            self.budgets[bname] = budget
        for key in self.params:
            if key in self.fixed:
                raise self.error(f"fixed.{key}", "is also a searched param; remove it from one of them")
        self.claims = self._claims(spec.claims)

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
            if claim.strata is not None:
                bad = [s for s in claim.strata if s not in strata] if isinstance(claim.strata, list) else [claim.strata]
                if bad or not claim.strata:
                    raise self.error(f"{where}.strata", f"must list strata of this space ({', '.join(strata)}), "
                                     f"got {claim.strata!r}")
            out.append(ClaimYaml(claim.name, claim.type, key, claim.paper, claim.reference, claim.strata))
        return out

    def _design(self, spec: "BudgetSpec", where: str, seeds: int):
        """The budget's sequential design (tune.designer.Design), or None when it sets none."""
        if spec.seeds_min is None and spec.seeds_max is None:
            for key in ("looks", "max_runs"):
                if getattr(spec, key) is not None:
                    raise self.error(f"{where}.{key}", "needs seeds_min and seeds_max in the same budget")
            return None
        from tune.designer import Design, DesignError

        lo = spec.seeds_min if spec.seeds_min is not None else seeds
        hi = spec.seeds_max if spec.seeds_max is not None else lo
        if hi < lo:
            raise self.error(f"{where}.seeds_max", f"must be >= seeds_min {lo}, got {hi}")
        if not self.claims:
            raise self.error(f"{where}.seeds_min", "a sequential design needs claims: (what the seeds decide)")
        try:
            return Design(seeds_min=lo, seeds_max=hi, looks=spec.looks or (1 if lo == hi else 3),
                          max_runs=spec.max_runs)
        except DesignError as err:
            raise self.error(where, str(err)) from None

    def _plan_claims(self, strata: list) -> list:
        """One PlannedClaim per stratum (and alternative value, for contrasts) of the declared claims."""
        out = []
        for claim in self.claims:
            for st in strata:
                if claim.strata is not None and st.name not in claim.strata:
                    continue
                values = self._values(claim.key, st)
                base = f"{claim.name}:{st.name}"
                if claim.type == "contrast":
                    paper = coerce(claim.key, resolve_named_value(claim.key, claim.paper, st.dim))
                    if values is None or paper not in values:
                        raise self.error(f"claims ({claim.name}).paper", f"{claim.key}={claim.paper!r} is not a "
                                         f"value stratum {st.name} runs; it runs {values or 'a continuous range'}")
                    alts = [v for v in values if v != paper]
                    for alt in alts:
                        name = base if len(alts) == 1 else f"{base}:{alt}"
                        out.append(PlannedClaim(name, claim.type, "paired", claim.key, st.name,
                                                {"a": paper, "b": alt}))
                elif claim.type == "ranking":
                    if values is None or len(values) < 2:
                        raise self.error(f"claims ({claim.name}).key", f"a ranking needs a choice or grid param "
                                         f"with 2 or more values, got {claim.key}")
                    out.append(PlannedClaim(base, claim.type, "ranking", claim.key, st.name, {"values": values}))
                else:
                    ref = claim.reference if claim.type == "optimum" else "paper"
                    ref = coerce(claim.key, resolve_named_value(claim.key, ref, st.dim))
                    out.append(PlannedClaim(base, claim.type, "paired", claim.key, st.name, {"a": None, "b": ref}))
        return out

    def _values(self, key: str, stratum) -> list | None:
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

    def _scheduler(self, value, where: str, base: dict) -> dict:
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
        """Resolve strata, budget and points into trial inputs; every stratum's first trial is run through
        ict_core.config so a bad combination fails here and not in a Ray worker."""
        if budget not in BUDGETS:
            raise SpaceError(f"{self.source}: unknown budget {budget!r}; allowed: {', '.join(BUDGETS)}")
        if self.budgets and budget not in self.budgets:  # a space without a budgets section runs any budget as is
            raise SpaceError(f"{self.source}: budget {budget!r} is not defined in this space's budgets; it defines "
                             f"{', '.join(self.budgets)} (add budgets.{budget} to the file, or pick one of those)")
        spec = self.budgets.get(budget, BudgetSpec())
        where = f"budgets.{budget}"
        samples = num_samples if num_samples is not None else (spec.num_samples or 1)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise self.error(f"{where}.num_samples", f"must be an integer >= 1, got {samples!r}")
        seeds = spec.seeds or self.seeds
        design = self._design(spec, where, seeds)
        if design is not None:
            seeds = design.seeds_min  # the first round; later rounds add seeds to open claims
        concurrent = spec.max_concurrent or self.max_concurrent
        scheduler = self._scheduler(spec.scheduler, f"{where}.scheduler", dict(self.scheduler))
        budget_fixed = self._overrides(spec.fixed, f"{where}.fixed")
        try:
            preset = preset_overrides(str(budget_preset(budget)))
        except ConfigError as err:
            raise SpaceError(f"budget {budget}: {err}") from None
        # A searched param replaces the budget's value of that key in every trial.
        preset = {k: coerce(k, v) for k, v in preset.items() if k not in self.params}
        extra = {str(k): v for k, v in (extra or {}).items()}
        try:
            extra = {k: coerce(k, v) for k, v in extra.items()}
        except ConfigError as err:
            raise SpaceError(f"--set: {err}") from None
        for key in self.params:
            if key in budget_fixed or key in extra:
                raise self.error(f"{where}.fixed.{key}" if key in budget_fixed else f"--set {key}",
                                 "is a searched param and cannot be fixed")

        chosen = spec.strata  # checked against the strata when the file was read; None = all of them
        strata, skipped = [], []
        for i, raw in enumerate(self.strata):
            if chosen is not None and raw["name"] not in chosen:
                skipped.append(f"{raw['name']} (not in budgets.{budget}.strata)")
                continue
            stratum_fixed = self._overrides(raw["fixed"], f"strata[{i}].fixed")
            for key in self.params:
                if key in stratum_fixed:
                    raise self.error(f"strata[{i}].fixed.{key}", "is a searched param and cannot be fixed")
            fixed = {**preset, **self.fixed, **budget_fixed, **stratum_fixed, **extra}
            # Inputs resolved here, on the driver: a trial's working directory is not the driver's (and on a
            # cluster not even its machine), so a relative path would name another folder there.
            fixed.update({k: absolute_input(fixed[k]) for k in INPUT_KEYS if fixed.get(k)})
            data_name = fixed.get("data.name", "digits")
            if data_name in NEEDS_PATH and not fixed.get("data.path"):
                if raw["optional"]:
                    skipped.append(f"{raw['name']} (data.name={data_name} needs data.path; "
                                   f"not given: {raw['fixed'].get('data.path', 'no data.path')!r})")
                    continue
                raise self.error(f"strata[{i}] ({raw['name']}).data.path",
                                 f"data.name={data_name} needs data.path (a local folder), got "
                                 f"{raw['fixed'].get('data.path', fixed.get('data.path', ''))!r}")
            try:
                base_cfg = load_config(overrides=fixed)
            except ConfigError as err:
                raise self.error(f"strata[{i}] ({raw['name']})", f"fixed overrides are not a valid config: {err}") from None
            dataset, dim = dataset_dim(base_cfg)
            points = [self._resolve_point(p, dim, f"points[{j}]") for j, p in enumerate(self.points)]
            variants = []
            if self.algorithm == "grid":
                grid = [[(k, v) for v in p.values] for k, p in self.params.items()]
                combos = [dict(c) for c in itertools.product(*grid)] if grid else []
                variants = [self._resolve_point(c, dim, "params") for c in combos]
                variants = points + [v for v in variants if v not in points]
                if not variants:
                    raise self.error("params", "search.algorithm grid needs grid params or points")
            # "paper" in a choice means this stratum's 0.00054*sqrt(d), wherever it is listed.
            choices = {k: [self._resolve_point({k: v}, dim, f"params.{k}.values")[k] for v in p.values]
                       for k, p in self.params.items() if p.type == "choice"}
            stratum = Stratum(raw["name"], fixed, points, samples if not variants else len(variants),
                              dataset, dim, variants, choices)
            first = stratum.first_config(self.params)
            for overrides in ([first] + [{**fixed, **v} for v in variants] + [{**fixed, **p} for p in points]
                              + [{**first, k: v} for k, values in choices.items() for v in values]):
                try:
                    load_config(overrides=overrides)
                except ConfigError as err:
                    raise self.error(f"strata[{i}] ({raw['name']})", f"a trial configuration is invalid: {err}") from None
            strata.append(stratum)
        if not strata:
            raise self.error("strata", f"no stratum can run: {'; '.join(skipped)}")
        if len(self.metrics) > 1 and scheduler.get("type") != "none":
            raise self.error(f"{where}.scheduler" if spec.scheduler else "scheduler",
                             f"{scheduler.get('type')} stops trials on one metric; a multi-objective space "
                             f"({', '.join(self.metrics)}) needs scheduler type none")
        return Plan(self.name, str(self.source), budget, self.description, self.question, self.algorithm,
                    self.search_seed, self.metric, self.mode, scheduler, seeds, concurrent, self.params, strata,
                    skipped, self._plan_claims(strata), design, list(self.metrics), list(self.modes))

    def _resolve_point(self, point: dict, dim: int, where: str) -> dict:
        out = {}
        for key, value in point.items():
            value = resolve_named_value(key, value, dim)
            p = self.params.get(key)
            if p is not None and p.low is not None and not (p.low <= value <= p.high):
                raise self.error(f"{where}.{key}", f"value {value!r} is outside the searched range "
                                 f"[{p.low}, {p.high}]")
            out[key] = coerce(key, value)
        return out


def startup_trials(num_samples: int, points: int = 0) -> int:
    """Random (or given) configurations before TPE takes over: a third of the budget, at least 2 and at least
    the given points, at most Optuna's default of 10, and never the whole budget when it has 3 or more."""
    k = max(2, points, math.ceil(num_samples / 3))
    k = min(k, 10)
    if num_samples >= 3:
        k = min(k, num_samples - 1)
    return max(1, min(k, num_samples))


def describe_search(num_samples: int, points: int) -> str:
    """The dry-run line, e.g. '1 given point, 3 random, then 8 TPE': Optuna's k start-up trials are the given
    points first, then random draws, before TPE proposes the rest."""
    k = startup_trials(num_samples, points)
    given = min(points, k)
    first = f"{given} given point{'s' if given != 1 else ''}, " if points else ""
    return f"{first}{k - given} random, then {num_samples - k} TPE"


def load_space(name_or_path: str | os.PathLike) -> Space:
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
