"""Write a Markdown report with plots and CSV tables from one or several experiment folders.

    python analysis/report.py RESULTS_DIR [RESULTS_DIR ...] [--out DIR]

The first paragraph says first whether the budgets behind the tables can give a verdict at all, then
answers each open question the tables support, with its 95% interval and the number of seeds behind
it, labels an answer "inconclusive" with the reason when it rests on one seed, on a smoke budget, on a
one-sided bound or on an interval that spans the searched range, and names the questions the tables
cannot answer. Every space, a user's own included, also gets the metric against each searched key.
Only completed runs enter the estimates; diverged runs count per level, and pruned runs enter the
equal-compute sections through their evaluations. For a reader's eye it also shows the final sample grids
of the best and the worst configuration of each experiment and stratum, and per stratum Optuna's parameter
importances, whose rebuilt studies it writes into each experiment folder as an Optuna journal file.

The report is built from data: each section adds answers, gaps and sections tagged with the questions they
concern (analysis/report_parts.py); this module combines them (the equal-compute view's with the main view's) and
renders report.md. The question sections are in analysis/report_questions.py, the others in
analysis/report_sections.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analysis.ablations import analyze_ablations, apply_correction, eligible
from analysis.load import SchemaError, load_results, status_counts
from analysis.report_parts import Report, md_table
from analysis.report_questions import ablation_section, c_scaling_section, curriculum_section, dropout_section
from analysis.report_answers import answer_rows, decided_line
from analysis.report_sections import (budget_line, compute_section, grids_section, importance_section,
                                      pareto_section, searched_section)
from analysis.selection import at_common_compute
from analysis.stats import LEVEL, MIN_SEEDS, N_BOOT
from ict_core.cli import bad_input
from ict_core.errors import BadInput
from ict_core.fileio import atomic_write_text
from ict_core.records import JOURNAL_FILE, PRUNED

EQUAL_COMPUTE_TITLE = "Equal compute, pruned runs included - "


def write_report(paths, out=None, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0, min_seeds: int = 3, journal: bool = True) -> Path:
    """Analyse every experiment at or below `paths` and write OUT/report.md, PNGs and CSVs.

    out defaults to PATHS[0]/report. With `journal`, each experiment folder also gets an Optuna journal file
    of its rebuilt studies (analysis/importance.py). Returns the path of report.md.
    """
    paths, out, syncs = _local_folders(paths, out)
    results = load_results(paths)
    out = Path(out) if out is not None else paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    trials = results.trials
    if metric not in trials.columns:
        raise SchemaError(f"--metric {metric!r} is not a column of trials.parquet; numeric columns: "
                          + ", ".join(c for c in trials.columns if c.startswith("final_") or c == "best_fd"))
    counts = status_counts(trials)
    view = None
    if counts[PRUNED] and not results.evals.empty:
        # A scheduler keeps the promising runs, so finished runs alone are a selected sample: repeat the
        # analyses at the largest compute every run reached, pruned runs included.
        view = at_common_compute(trials, results.evals)
    tables, family = _ablation_tables(trials, view, metric, level, min_seeds, seed)

    rep = Report(out)
    c_scaling_section(rep, trials, metric, n_boot, level, seed)
    dropout_section(rep, trials, metric, n_boot, level, seed)
    curriculum_section(rep, trials, results.evals, n_boot, level, seed)
    ablation_section(rep, tables[0], min_seeds, family)
    if view is not None:
        sub = Report(out, prefix="compute_")
        c_scaling_section(sub, view, "fd_at_compute", n_boot, level, seed)
        dropout_section(sub, view, "fd_at_compute", n_boot, level, seed)
        ablation_section(sub, tables[1], min_seeds, family)
        budgets = ", ".join(f"{int(b)}" for b in sorted(view["budget_images"].dropna().unique()))
        add_view(rep, sub, f"At equal compute with the {counts[PRUNED]} pruned runs included ({budgets} images): ")
    compute_section(rep, trials)
    searched_section(rep, trials, metric, n_boot, level, seed)
    importance_section(rep, trials, metric, seed, write_journal=journal)
    pareto_section(rep, trials)
    grids_section(rep, trials, metric)
    by_experiment = trials.groupby(["experiment", "status"]).size().unstack(fill_value=0).reset_index()
    rep.csv(by_experiment, "runs_by_status.csv")

    text = [
        "# iCT experiment report\n",
        *([md_table(pd.DataFrame(answers))] if (answers := answer_rows(rep, tables[0], metric, level, min_seeds,
                                                                          _budgets_by_dataset(trials))) else []),
        *([line] if (line := decided_line(answers, trials)) else []),
        first_paragraph(rep, trials, metric, min_seeds, tables[0]) + "\n",
        _method_paragraph(trials, metric, n_boot, level, counts, len(results.experiments), view is not None),
        md_table(pd.DataFrame([{"status": k, "runs": v} for k, v in counts.items()])),
        # Relative to the report, so that a committed report names no machine's folders.
        "Experiments: " + ", ".join(f"`{os.path.relpath(p, out)}`" for p in results.experiments) + "\n",
        *(s.render() for s in rep.sections),
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(text))
    for sync in syncs:
        sync.push()  # the report folder and the journals, back into storage
    return path


def _budgets_by_dataset(trials: pd.DataFrame) -> dict:
    """{dataset: the comma-joined budgets its runs ran at}, for the table of answers' smoke-budget check."""
    if "budget" not in trials.columns:
        return {}
    return {d: ",".join(sorted(set(g.dropna().astype(str)))) for d, g in trials.groupby("dataset")["budget"]}


def _local_folders(paths, out) -> tuple[list[Path], "Path | None", list]:
    """(experiment folders, output folder, folders to push back): experiments in storage (s3://...) are read
    from a local copy, and what the report writes goes back there."""
    from tune.store import FolderSync, Store, experiment_cache, is_uri, report_copy

    paths = [p for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    copies = {str(p): report_copy(str(p)) for p in paths if is_uri(p)}
    paths = [copies[str(p)].local if str(p) in copies else Path(p) for p in paths]
    syncs = list(copies.values())
    if out is not None and is_uri(out):
        syncs.append(FolderSync(Store(str(out)), "", experiment_cache(str(out))))
        out = syncs[-1].local
    return paths, out, syncs


def _ablation_tables(trials, view, metric, level, min_seeds, seed) -> tuple[list[pd.DataFrame], int]:
    """The ablation tables of the main view and of the equal-compute view (when there is one), Holm-corrected
    over one family of verdicts: the paper claims. The equal-compute view tests the same claims again and does
    not enlarge it."""
    tables = [analyze_ablations(trials, metric=metric, level=level, min_seeds=min_seeds, seed=seed)]
    if view is not None:
        tables.append(analyze_ablations(view, metric="fd_at_compute", level=level, min_seeds=min_seeds, seed=seed))
    family = max(eligible(t) for t in tables)
    return [apply_correction(t, max(family, 1), level) for t in tables], family


def add_view(rep: Report, sub: Report, lead: str) -> None:
    """The equal-compute view `sub` added to `rep`: its answers (after `lead`), sections and files. A question
    the main view could not answer is no longer listed as open where the view answers it, unless the view
    leaves the same question open too. Matched by the questions the parts are tagged with, never by their text."""
    answered = sub.answered()
    still_open = {g.question for g in sub.unanswered}
    rep.unanswered = [g for g in rep.unanswered if g.question in still_open or g.question not in answered]
    rep.answers += [replace(a, lead=lead) for a in sub.answers]
    rep.sections += [replace(s, title=EQUAL_COMPUTE_TITLE + s.title) for s in sub.sections]
    rep.files += sub.files


def first_paragraph(rep: Report, trials: pd.DataFrame, metric: str, min_seeds: int, ablations: pd.DataFrame) -> str:
    """Whether the budgets can give a verdict, the answers, then what the tables cannot answer. A user's own
    space (no answer, and none of the questions' keys varies in its runs) asks none of the questions: no word
    on them."""
    question_keys = ["loss.huber_c", "network.dropout", "curriculum.shape", "curriculum.s0", "curriculum.s1",
                     *(ablations["key"].dropna().astype(str) if "key" in ablations else [])]
    own_space = not rep.answers and not any(
        trials[k].nunique(dropna=False) > 1 for k in set(question_keys) if k in trials.columns)
    if rep.answers:
        first = " ".join(a.render() for a in rep.answers)
    else:  # a user's own space: its table of answers is its best runs
        first = f"The metric against each key this search varied is below (`{metric}`, lower is better)."
    if rep.unanswered and not own_space:
        first += " The tables cannot answer: " + "; ".join(g.text for g in rep.unanswered) + "."
    verdict_line = budget_line(trials, min_seeds)
    return verdict_line + " " + first if verdict_line else first


def _method_paragraph(trials, metric, n_boot, level, counts, num_experiments, has_view) -> str:
    """How the intervals were made, what the metric is and which runs the estimates take."""
    repeated = trials.attrs.get("repeated_rows", 0)
    return (
        f"Intervals are {100 * level:.0f}% Student-t intervals over seeds (none below {MIN_SEEDS} seeds: \"n < "
        f"{MIN_SEEDS}\"); c* and the best dropout use the bootstrap ({n_boot} resamples) and the tested grid, see "
        f"their sections; ablation verdicts are Holm-corrected over the paper claims. The metric is `{metric}` "
        f"(lower is better). {len(trials)} runs from {num_experiments} experiment folder(s): "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + (f" ({repeated} repeated row{'s' if repeated != 1 else ''} of the same run dropped)" if repeated else "")
        + ". Only completed runs enter the estimates; diverged runs count per level, errored and pruned runs are "
        "counted here and left out" + (", except in the equal-compute sections, which take pruned runs at the "
                                       "largest compute every run of their experiment reached"
                                       if has_view else "")
        + ".\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+",
                        help="experiment folders, or folders above them; a URI such as s3://BUCKET/PREFIX/NAME is "
                             "read from a local copy, and the report is stored back under it")
    parser.add_argument("--out", default=None, help="output folder or URI (default: FIRST_RESULTS_DIR/report)")
    parser.add_argument("--metric", default="final_fd", help="trials column to minimise (default final_fd)")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    parser.add_argument("--level", type=float, default=LEVEL, help="interval level in (0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--min-seeds", type=int, default=3, help="seeds per arm before an ablation gets a verdict")
    parser.add_argument("--no-journal", action="store_true",
                        help=f"do not write {JOURNAL_FILE} (Optuna journal of the rebuilt studies) into each "
                             "experiment folder")
    args = parser.parse_args(argv)
    if not 0 < args.level < 1:
        parser.error(f"--level must be in (0, 1), got {args.level}")
    if args.n_boot < 10:
        parser.error(f"--n-boot must be at least 10, got {args.n_boot}")
    try:
        path = write_report(args.results, args.out, args.metric, args.n_boot, args.level, args.seed, args.min_seeds,
                            journal=not args.no_journal)
    except BadInput as err:
        return bad_input(err)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
