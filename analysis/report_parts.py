"""The parts of a report as data, and the prose and Markdown they render to.

Each question section (analysis/report_questions.py) and each other section (analysis/report_sections.py) adds to
a `Report`: `Answer`s (a sentence for the report's first paragraph, tagged with the questions it answers),
`Gap`s (a question the tables cannot answer, tagged the same way) and `Section`s (a title and a Markdown body).
analysis/report.py combines the parts of the report's views by their tags, never by reading their text back,
and renders them. The helpers below turn the analyses' numbers into the report's phrases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.curve_minimum import BELOW, TWO_SIDED, UNLOCATED
from analysis.stats import MIN_SEEDS, fmt, fmt_ci

SMOKE = "smoke"

# The questions a report answers or leaves open; an Answer or a Gap names the ones it concerns.
Q1 = "Q1"  # the best Pseudo-Huber c per data set
Q1_LAW = "Q1 law"  # the exponent b of c* = a d^b across data sets
Q2 = "Q2"  # the best dropout per objective and data set
Q2_DIFFERENCE = "Q2 difference"  # consistency against diffusion at their best dropout
Q3 = "Q3"  # the best curriculum at equal compute
ABLATIONS = "ablations"  # the paper's choices against their alternatives
ABLATIONS_NOT_RUN = "ablations not run"  # ablations without runs at matching settings


@dataclass(frozen=True)
class Answer:
    """A sentence of the first paragraph; `questions`: the questions it answers; `lead`: words put before it (the
    equal-compute view's label)."""
    text: str
    questions: frozenset
    lead: str = ""

    def render(self) -> str:
        return self.lead + self.text


@dataclass(frozen=True)
class Gap:
    """A question the tables cannot answer, and why."""
    question: str
    text: str


@dataclass(frozen=True)
class Section:
    """A `## title` section of the report and its Markdown body."""
    title: str
    body: str

    def render(self, title_prefix: str = "") -> str:
        return f"## {title_prefix}{self.title}\n\n{self.body}"


class Report:
    """Collects answers, gaps and sections, and the tables and plots they link to."""

    def __init__(self, out: Path, prefix: str = ""):
        self.out = out
        self.prefix = prefix  # file-name prefix of a second view of the same tables
        self.answers: list[Answer] = []
        self.unanswered: list[Gap] = []
        self.sections: list[Section] = []
        self.files: list[Path] = []
        self.best = pd.DataFrame()  # best run per experiment and stratum (searched_section)
        self.results: dict = {}  # what the question sections computed, for the table of answers (answer_rows)

    def answer(self, text: str, *questions: str) -> None:
        self.answers.append(Answer(text, frozenset(questions)))

    def gap(self, question: str, text: str) -> None:
        self.unanswered.append(Gap(question, text))

    def section(self, title: str, body: str) -> None:
        self.sections.append(Section(title, body))

    def answered(self) -> set:
        return {q for a in self.answers for q in a.questions}

    def csv(self, df: pd.DataFrame, name: str) -> str:
        name = self.prefix + name
        path = self.out / name
        df.to_csv(path, index=False)
        self.files.append(path)
        return name

    def png(self, fig, name: str) -> str:
        name = self.prefix + name
        self.files.append(plots.save(fig, self.out / name))
        return name



def caveats(num_seeds: int, budgets: str = "", spans: bool = False, extra=()) -> list[str]:
    """Why an answer is inconclusive: one seed, a smoke budget, an interval spanning the searched range."""
    reasons = []
    if num_seeds < MIN_SEEDS:
        reasons.append(f"{num_seeds} seed per configuration, so no spread between seeds is known")
    if SMOKE in str(budgets).split(","):
        reasons.append("smoke budget: a pipeline check, too short to rank models")
    if spans:
        reasons.append("its interval spans the searched range")
    return reasons + [e for e in extra if e]


def labelled(text: str, reasons: list[str]) -> str:
    return f"inconclusive ({'; '.join(reasons)}): {text}" if reasons else text


def joined(parts: list[tuple[str, list[str]]]) -> str:
    """Answers with their reasons, "; "-joined; reasons that every part shares are said once, in front."""
    if not parts:
        return ""
    common = [r for r in parts[0][1] if all(r in reasons for _, reasons in parts)]
    body = "; ".join(labelled(text, [r for r in reasons if r not in common]) for text, reasons in parts)
    return labelled(body, common)


def md_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    if df.empty:
        return "(no rows)\n"
    df = df.head(max_rows)
    cells = [[fmt(v) if isinstance(v, (float, np.floating)) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def runs_text(num_runs: int, num_values: int, num_seeds: int, what: str) -> str:
    """"35 runs: 7 values of c x 5 seeds" or, for a random search, "12 runs at 12 values of c, 1 seed"."""
    if num_runs == num_values * num_seeds:
        return f"{num_runs} runs: {num_values} values of {what} x {num_seeds} seed{'s' if num_seeds != 1 else ''}"
    return f"{num_runs} runs at {num_values} values of {what}, {num_seeds} seed{'s' if num_seeds != 1 else ''}"



def optimum_text(bound: str, best: float, value: float, lo: float, hi: float, far: bool, what: str,
                  floor: float | None = None, plateau: float = math.nan, edges: tuple | None = None) -> str:
    """"best tested c 0.03; fitted c* 0.028 [0.015, 0.06]" or a one-sided bound. floor: the smallest value
    `what` can take (0 for dropout): a best tested value there is an answer, not a bound. plateau: the largest
    tested value within the plateau's standard error of the minimum (curve_minimum.curve_minimum), when it is flat.
    edges: the smallest and largest searched values; a one-sided bound whose best tested value is not the edge
    itself (it ties with it) says so."""
    text = _optimum_core(bound, best, value, lo, hi, far, what, floor, edges)
    if plateau is not None and np.isfinite(plateau):
        text += (f"; the curve is flat around its minimum: the largest {what} within the plateau's standard error "
                 f"of the lowest mean is {fmt(plateau)}")
    return text


def _at_edge(best: float, edge: float | None, side: str, what: str) -> str:
    """"is the smallest searched value" or, when the best is elsewhere but ties with the edge, says that."""
    if edge is None or not np.isfinite(edge) or math.isclose(best, edge, rel_tol=1e-6):
        return f"the best tested {what} ({fmt(best)}) is the {side} searched value"
    return (f"the best tested {what} ({fmt(best)}) ties within the standard error with the {side} searched value "
            f"({fmt(edge)})")


def _optimum_core(bound, best, value, lo, hi, far, what, floor, edges=None) -> str:
    low, high = edges if edges is not None else (None, None)
    if bound == BELOW and floor is not None and best == floor:
        return (f"{what} {fmt(best)} is best at this budget (it is the smallest possible {what}, so the optimum "
                f"cannot lie below it; the next tested value is {fmt(hi)})")
    if bound == BELOW and floor is not None and low is not None and low == floor:
        return (f"{what} {fmt(best)} is best at this budget and ties within the standard error with {fmt(floor)}, "
                f"the smallest possible {what}, so the optimum lies in [{fmt(floor)}, {fmt(hi)})")
    if bound == BELOW:
        return (f"{what}* < {fmt(hi)}: {_at_edge(best, low, 'smallest', what)}, so "
                "the optimum may lie below the range (a one-sided bound)")
    if bound == UNLOCATED:
        return f"no {what}* located: values at both ends of the range tie with the best ({fmt(best)})"
    if bound != TWO_SIDED:
        return (f"{what}* > {fmt(lo)}: {_at_edge(best, high, 'largest', what)}, so the "
                "optimum may lie above the range (a one-sided bound)")
    text = f"best tested {what} {fmt(best)}, fitted {what}* {fmt_ci(value, lo, hi)}"
    if far:
        text += (f" (the fitted vertex lies in an untested gap far from the best run: trust the best tested {what} "
                 "and the interval, not the vertex)")
    return text


def detectable_text(detectable: float) -> str:
    """"; cannot detect effects below 12 FD at the compute spent" ("" when the spread was not measured)."""
    if detectable is None or not np.isfinite(detectable):
        return ""
    return f"; cannot detect effects below {fmt(detectable)} FD at the compute spent"

