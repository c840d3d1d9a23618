"""How many configurations Optuna's TPE takes before it proposes: the start-up policy of a search's searcher.

TPE models the metric from the configurations it has seen; before its start-up trials are done it proposes the
space's given points, then random draws. Optuna's default (10) exceeds most strata's budgets, so the number is
sized to the budget here. No Ray or Optuna import: a search's dry run (tune/search.py) prints it.
"""
from __future__ import annotations

import math


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
