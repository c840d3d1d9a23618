"""What a search-space file (tune/spaces/*.yaml) may hold, and what a plan resolves it to.

The file's schema is a set of frozen dataclasses that ict_core.config's typed engine (parse_record) reads: an
unknown key fails naming the allowed ones, typed fields are converted and range-checked as config keys are. The
resolved plan of a search (`Plan`, its `Stratum`s, `Param`s and `PlannedClaim`s) is what tune/space.py and
tune/strata.py build from a file and what tune/search.py runs. Also here: where the shipped spaces and budget
presets are, and `SpaceError`, the error every check raises.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ict_core import datasets
from ict_core.errors import BadInput
from ict_core.config import in_range, one_of
from ict_core.records import SEARCH_METRICS

SPACE_DIR = Path(__file__).parent / "spaces"
BUDGET_DIR = Path(__file__).parent / "budgets"
BUDGETS = ("smoke", "cpu", "gpu", "paper")
PARAM_TYPES = ("loguniform", "uniform", "int", "choice", "grid")
ALGORITHMS = ("optuna_tpe", "grid", "random")
SCHEDULERS = ("asha", "none")
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
    metric: str = field(default="fd", metadata=one_of(*SEARCH_METRICS))
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
    tested loss.huber_c against the paper's 0.00054 sqrt(d) of the stratum. strata: where (default: all).
    at: a contrast's paper arm where several configurations run at `paper` ({loss.huber_c: paper}: the metric
    claim is Pseudo-Huber at the paper's c against L2, not at whichever c the data or a tie would pick)."""

    name: str = ""
    type: str = field(default="", metadata=one_of(*CLAIM_TYPES))
    key: str = ""
    paper: Any = None
    reference: Any = None
    strata: Optional[list] = None
    at: Optional[dict] = None


@dataclass(frozen=True)
class PlannedClaim:
    """A claim resolved for one stratum: what the designer tests (kind paired: arm a - arm b per seed; ranking:
    every value of `key`). arms: {"a": value, "b": value} or {"values": [...]}; None for the best tested value;
    a contrast's "a_at": {key: value}, the paper arm's other settings (the space's `at`; arm b is not pinned)."""

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
    design: Optional[Any] = None  # tune.design_plan.Design of the budget, None for a fixed number of seeds
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


def expand_env(value: Any) -> Any:
    """A string with its ${VARS} replaced from the environment (unset: empty); other values as they are."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), ""), value)
    return value
