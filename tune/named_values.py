"""Words a search space may write instead of a number, each resolved once the data set's d = C*H*W is known (per
stratum): loss.huber_c "paper" = ict_core.config.default_huber_c(d). A notion of the search spaces, not of a run's
config: a run only ever sees the number. The only place such a word is understood.
"""
from __future__ import annotations

from typing import Any

from ict_core.config import default_huber_c

# loss.huber_c "paper" = default_huber_c(d), and "paper*2", "paper/4", ... that times or over a power of two (up to
# 16): factor-2 grids that follow the paper's c at every d (the c_ladder space: paper/16 ... paper).
NAMED_VALUES = {("loss.huber_c", "paper"): default_huber_c}
NAMED_VALUES.update({("loss.huber_c", f"paper{op}{2 ** k}"): (lambda dim, f=(2.0 ** k if op == "*" else 0.5 ** k):
                                                               f * default_huber_c(dim))
                     for k in range(1, 5) for op in "*/"})


def is_named_value(key: str, value: Any) -> bool:
    """True when `value` is a word of NAMED_VALUES for `key` (e.g. loss.huber_c: paper)."""
    return isinstance(value, str) and (key, value) in NAMED_VALUES


def resolve_named_value(key: str, value: Any, dim: int) -> Any:
    """The number a named value stands for at data dimension `dim`; any other value unchanged."""
    return float(NAMED_VALUES[key, value](dim)) if is_named_value(key, value) else value
