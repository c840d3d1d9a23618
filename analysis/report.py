"""Write a Markdown report with plots and CSV tables from one or several experiment folders.

    python analysis/report.py RESULTS_DIR [RESULTS_DIR ...] [--out DIR]

The first paragraph answers each open question the tables support, with its 95% bootstrap interval
and the number of seeds behind it, and names the questions they cannot answer. Only completed runs
enter the estimates; diverged, errored and pruned runs are counted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from analysis import plots
from analysis.ablations import INCONCLUSIVE, NOT_RUN, analyze_ablations
from analysis.c_scaling import PAPER_B, estimate_c_star
from analysis.curriculum import PAPER_SHAPE, final_ranking, rank_curricula
from analysis.dropout import analyze_dropout
from analysis.load import SchemaError, load_results, status_counts
from analysis.stats import LEVEL, N_BOOT, at_common_compute, fmt, fmt_ci


def _md_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    if df.empty:
        return "(no rows)\n"
    df = df.head(max_rows)
    cells = [[fmt(v) if isinstance(v, (float, np.floating)) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _seeds(n_min: int, n_max: int) -> str:
    return f"{n_min} seeds" if n_min == n_max else f"{n_min}-{n_max} seeds"


def _runs(num_runs: int, num_values: int, num_seeds: int, what: str) -> str:
    """"35 runs: 7 values of c x 5 seeds" or, for a random search, "12 runs at 12 values of c, 1 seed"."""
    if num_runs == num_values * num_seeds:
        return f"{num_runs} runs: {num_values} values of {what} x {num_seeds} seeds"
    return f"{num_runs} runs at {num_values} values of {what}, {num_seeds} seed{'s' if num_seeds != 1 else ''}"


class Report:
    """Collects answers, unanswered questions and sections, then writes report.md."""

    def __init__(self, out: Path, prefix: str = ""):
        self.out = out
        self.prefix = prefix  # file-name prefix of a second view of the same tables
        self.answers: list[str] = []
        self.unanswered: list[str] = []
        self.sections: list[str] = []
        self.files: list[Path] = []

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


def c_scaling_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    try:
        cs = estimate_c_star(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    except SchemaError as err:
        rep.unanswered.append(f"Q1 (c scaling): {err}")
        return
    per = cs.per_dataset
    if per.empty:
        rep.unanswered.append("Q1 (c scaling): no c-scaling experiment found (no data set has completed "
                              "Pseudo-Huber runs at 3 or more values of loss.huber_c)")
        return
    parts = []
    for _, r in per.iterrows():
        edge = ", at the edge of the searched range" if r["at_edge"] else ""
        if r["left_out"]:
            edge += f"; left out: {r['left_out']}"
        parts.append(f"{fmt_ci(r['c_star'], r['c_lo'], r['c_hi'])} on {r['dataset']} (d={int(r['dim'])}, "
                     f"{_runs(r['num_runs'], r['num_c'], r['num_seeds'], 'c')}{edge})")
    sentence = "Q1: the best Pseudo-Huber c is " + "; ".join(parts)
    seeds = _seeds(int(per["num_seeds"].min()), int(per["num_seeds"].max()))
    if cs.fit is not None:
        f = cs.fit
        inside = "contains" if f.b_contains_paper else "excludes"
        sentence += (f"; fitting c* = a d^b across {f.num_datasets} data sets gives b = {fmt_ci(f.b, f.b_lo, f.b_hi)} "
                     f"and a = {fmt_ci(f.a, f.a_lo, f.a_hi)} ({seeds} per data set), whose interval {inside} the "
                     "paper's "
                     f"b = {PAPER_B} (a = 0.00054).")
    else:
        sentence += "."
        rep.unanswered.append("Q1, exponent b of c* = a d^b: needs c-scaling runs on two or more data sets of "
                              f"different dimension; found {per['dim'].nunique()}")
    rep.answers.append(sentence)
    fit_df = pd.DataFrame([] if cs.fit is None else [{
        "a": cs.fit.a, "a_lo": cs.fit.a_lo, "a_hi": cs.fit.a_hi, "b": cs.fit.b, "b_lo": cs.fit.b_lo,
        "b_hi": cs.fit.b_hi, "num_datasets": cs.fit.num_datasets, "b_contains_0.5": cs.fit.b_contains_paper}])
    files = [rep.csv(per, "c_scaling_per_dataset.csv"), rep.csv(cs.curves, "c_scaling_curves.csv"),
             rep.csv(fit_df, "c_scaling_fit.csv")]
    png = rep.png(plots.plot_c_scaling(cs), "c_scaling.png")
    rep.sections.append(
        "## Q1: best Pseudo-Huber c against dimension\n\n"
        f"c* is the vertex of a local quadratic in log c fitted around the lowest mean {metric}, refitted on "
        f"{n_boot} bootstrap resamples of seeds; the power law is refitted on each replicate.\n\n"
        + _md_table(per) + "\n" + ("" if fit_df.empty else _md_table(fit_df) + "\n")
        + f"![c scaling]({png})\n\nTables: " + ", ".join(files) + "\n")


def dropout_section(rep: Report, trials, metric, n_boot, level, seed) -> None:
    try:
        dr = analyze_dropout(trials, metric=metric, n_boot=n_boot, level=level, seed=seed)
    except SchemaError as err:
        rep.unanswered.append(f"Q2 (dropout): {err}")
        return
    if dr.best.empty:
        rep.unanswered.append("Q2 (dropout): no dropout experiment found (no objective has completed runs at 3 or "
                              "more values of network.dropout)")
        return
    parts = []
    for _, r in dr.best.iterrows():
        parts.append(f"{fmt_ci(r['best_dropout'], r['lo'], r['hi'])} for the {r['objective']} objective on "
                     f"{r['dataset']} ({_runs(r['num_runs'], r['num_rates'], r['num_seeds'], 'dropout')})")
    sentence = "Q2: the best dropout is " + "; ".join(parts)
    for _, r in dr.difference.iterrows():
        sentence += (f"; consistency minus diffusion on {r['dataset']}: {fmt_ci(r['difference'], r['lo'], r['hi'])}"
                     f" ({r['num_seeds']} seeds)")
    objectives = set(dr.best["objective"])
    if not {"consistency", "diffusion"} <= objectives:
        rep.unanswered.append("Q2, consistency against diffusion: runs of only one objective "
                              f"({', '.join(sorted(objectives))}) vary network.dropout")
    ev = dr.evidence
    why = []
    for (dataset, objective), t in dr.trends.groupby(["dataset", "objective"], sort=False):
        t = t.set_index("column")
        bits = []
        if "gap" in t.index:
            g = t.loc["gap"]
            bits.append(f"held-out minus train loss {fmt_ci(g['slope_per_0.1'], g['lo'], g['hi'])}")
        if "nn_ratio" in t.index:
            g = t.loc["nn_ratio"]
            bits.append(f"NN-distance ratio {fmt_ci(g['slope_per_0.1'], g['lo'], g['hi'])}")
        why.append(f"{objective} on {dataset} ({int(t['num_runs'].iloc[0])} runs): " + ", ".join(bits))
    if why:
        sentence += ". Evidence on why, change per +0.1 dropout: " + "; ".join(why)
    sentence += "."
    rep.answers.append(sentence)
    files = [rep.csv(dr.best, "dropout_best.csv"), rep.csv(dr.difference, "dropout_difference.csv"),
             rep.csv(ev, "dropout_evidence.csv"), rep.csv(dr.trends, "dropout_trends.csv")]
    png = rep.png(plots.plot_dropout(dr), "dropout.png")
    rep.sections.append(
        "## Q2: dropout for the consistency and the diffusion objective\n\n"
        "Best rate: vertex of a local quadratic of the mean metric against the dropout rate, refitted on bootstrap "
        "resamples of seeds. Gap = final_loss_heldout - final_loss_train; NN ratio = final_nn_dist / "
        "final_nn_dist_ref (< 1: samples sit closer to training images than held-out images do).\n\n"
        + _md_table(dr.best) + "\n" + _md_table(dr.difference) + "\n" + _md_table(dr.trends) + "\n"
        + _md_table(ev) + "\n"
        + f"![dropout]({png})\n\nTables: " + ", ".join(files) + "\n")


def curriculum_section(rep: Report, trials, evals, n_boot, level, seed) -> None:
    if evals.empty:
        rep.unanswered.append("Q3 (curricula): no evals.parquet with evaluations found")
        return
    try:
        cr = rank_curricula(trials, evals, metric="fd", n_boot=n_boot, level=level, seed=seed)
        pooled = False
        if not cr.ranking.empty and cr.ranking["num_seeds"].median() < 2:
            # A random search samples s0, s1 with the shape: one run per curriculum, so rank shapes instead.
            cr = rank_curricula(trials, evals, metric="fd", n_boot=n_boot, level=level, seed=seed, by_shape=True)
            pooled = True
    except SchemaError as err:
        rep.unanswered.append(f"Q3 (curricula): {err}")
        return
    final = final_ranking(cr.ranking)
    if final.empty:
        rep.unanswered.append("Q3 (curricula): no curriculum experiment found (no configuration was run with two "
                              "or more curricula)")
        return
    parts = []
    for (dataset, _), t in final.groupby(["dataset", "context"], sort=False):
        best = t.iloc[0]
        kind = "curriculum shapes (pooled over the sampled s0, s1)" if pooled else "curricula"
        text = (f"on {dataset} at {best['images_seen']:.3g} images the best of {len(t)} {kind} is "
                f"{best['curriculum']} (FD {fmt_ci(best['mean'], best['lo'], best['hi'])}, P(best) = "
                f"{fmt(best['p_best'], 2)}, {best['num_seeds']} {'runs' if pooled else 'seeds'})")
        exp = t[t["curriculum"].str.split().str[0] == PAPER_SHAPE]
        for _, e in exp.iterrows():
            if e["curriculum"] != best["curriculum"]:
                text += (f"; {e['curriculum']} ranks {e['rank']} (rank interval [{fmt(e['rank_lo'])}, "
                         f"{fmt(e['rank_hi'])}], FD {fmt_ci(e['mean'], e['lo'], e['hi'])}, {e['num_seeds']} "
                         f"{'runs' if pooled else 'seeds'})")
        if exp.empty:
            text += " (the exponential curriculum was not run there)"
        parts.append(text)
    rep.answers.append("Q3: " + "; ".join(parts) + ".")
    files = [rep.csv(cr.ranking, "curriculum_ranking.csv")]
    png = rep.png(plots.plot_curricula(cr), "curricula.png")
    rep.sections.append(
        "## Q3: curricula at equal compute\n\n"
        "FD of each run interpolated at common compute budgets (images seen), mean over seeds with bootstrap "
        "intervals; rank 1 = lowest FD; rank interval and P(best) over bootstrap resamples of seeds.\n\n"
        + _md_table(final) + "\n" + f"![curricula]({png})\n\nTables: " + ", ".join(files) + "\n")


def ablation_section(rep: Report, trials, metric, n_boot, level, seed, min_seeds) -> None:
    table = analyze_ablations(trials, metric=metric, n_boot=n_boot, level=level, min_seeds=min_seeds, seed=seed)
    tested = table[table["verdict"] != NOT_RUN]
    missing = sorted(set(table.loc[table["verdict"] == NOT_RUN, "ablation"]) - set(tested["ablation"]))
    if missing:
        rep.unanswered.append("ablations not run at matching settings: " + ", ".join(missing))
    if tested.empty:
        return
    parts = []
    for _, r in tested.iterrows():
        seeds = (f"{r['num_paper']} vs {r['num_alt']} seeds" if r["num_cells"] == 1 else
                 f"{r['num_paper']} vs {r['num_alt']} runs (seeds) over {r['num_cells']} matched settings")
        verdict = r["verdict"]
        if verdict == INCONCLUSIVE:
            verdict += f" ({r['reason']})"
        parts.append(f"{r['ablation']} ({r['paper']} - {r['alternative']}): {verdict}, "
                     f"FD difference {fmt_ci(r['effect'], r['lo'], r['hi'])}, {seeds}")
    rep.answers.append("Ablations (FD of the paper's choice minus the alternative): " + "; ".join(parts) + ".")
    files = [rep.csv(table, "ablations.csv")]
    png = rep.png(plots.plot_ablations(table), "ablations.png")
    rep.sections.append(
        "## Ablations of the paper's choices\n\n"
        "Effect = mean FD of the paper's choice minus the alternative, between runs that agree on every other "
        f"config column; reproduced: interval below 0; contradicted: above 0; inconclusive: contains 0 or fewer "
        f"than {min_seeds} seeds per arm.\n\n" + _md_table(table) + "\n" + f"![ablations]({png})\n\nTables: "
        + ", ".join(files) + "\n")


def write_report(paths, out=None, metric: str = "final_fd", n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0, min_seeds: int = 3) -> Path:
    """Analyse every experiment at or below `paths` and write OUT/report.md, PNGs and CSVs.

    out defaults to PATHS[0]/report. Returns the path of report.md.
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    results = load_results(paths)
    out = Path(out) if out is not None else paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    trials = results.trials
    if metric not in trials.columns:
        raise SchemaError(f"--metric {metric!r} is not a column of trials.parquet; numeric columns: "
                          + ", ".join(c for c in trials.columns if c.startswith("final_") or c == "best_fd"))
    c_scaling_section(rep, trials, metric, n_boot, level, seed)
    dropout_section(rep, trials, metric, n_boot, level, seed)
    curriculum_section(rep, trials, results.evals, n_boot, level, seed)
    ablation_section(rep, trials, metric, n_boot, level, seed, min_seeds)

    counts = status_counts(trials)
    if counts["pruned"] and not results.evals.empty:
        # A scheduler keeps the promising runs, so finished runs alone are a selected sample: repeat the
        # analyses at the largest compute every run reached, pruned runs included.
        view = at_common_compute(trials, results.evals)
        sub = Report(out, prefix="compute_")
        c_scaling_section(sub, view, "fd_at_compute", n_boot, level, seed)
        dropout_section(sub, view, "fd_at_compute", n_boot, level, seed)
        ablation_section(sub, view, "fd_at_compute", n_boot, level, seed, min_seeds)
        budgets = ", ".join(f"{int(b)}" for b in sorted(view["budget_images"].unique()))
        label = f"At equal compute with the {counts['pruned']} pruned runs included ({budgets} images): "
        answered = {a.split(":")[0] for a in sub.answers}
        rep.unanswered = [u for u in rep.unanswered
                          if u in sub.unanswered or not any(u.startswith(tag) for tag in answered)]
        rep.answers += [label + a for a in sub.answers]
        rep.sections += [s.replace("## ", "## Equal compute, pruned runs included - ", 1) for s in sub.sections]
        rep.files += sub.files
    counts_df = pd.DataFrame([{"status": k, "runs": v} for k, v in counts.items()])
    by_experiment = trials.groupby(["experiment", "status"]).size().unstack(fill_value=0).reset_index()
    rep.csv(by_experiment, "runs_by_status.csv")
    first = " ".join(rep.answers) if rep.answers else "The tables answer none of the questions."
    if rep.unanswered:
        first += " The tables cannot answer: " + "; ".join(rep.unanswered) + "."
    level_pct = f"{100 * level:.0f}%"
    text = [
        "# iCT experiment report\n",
        first + "\n",
        f"Intervals are {level_pct} percentile bootstrap intervals over seeds ({n_boot} resamples); the metric is "
        f"`{metric}` (lower is better). {len(trials)} runs from {len(results.experiments)} experiment folder(s): "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + ". Only completed runs enter the estimates; diverged, errored and pruned runs are counted here and "
        "left out" + (", except in the equal-compute sections, which take pruned runs at the largest compute "
                      "every run of their experiment reached" if counts["pruned"] and not results.evals.empty else "")
        + ".\n",
        _md_table(counts_df),
        "Experiments: " + ", ".join(f"`{p}`" for p in results.experiments) + "\n",
        *rep.sections,
    ]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="experiment folders, or folders above them")
    parser.add_argument("--out", default=None, help="output folder (default: FIRST_RESULTS_DIR/report)")
    parser.add_argument("--metric", default="final_fd", help="trials column to minimise (default final_fd)")
    parser.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples")
    parser.add_argument("--level", type=float, default=LEVEL, help="interval level in (0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--min-seeds", type=int, default=3, help="seeds per arm before an ablation gets a verdict")
    args = parser.parse_args(argv)
    if not 0 < args.level < 1:
        parser.error(f"--level must be in (0, 1), got {args.level}")
    if args.n_boot < 10:
        parser.error(f"--n-boot must be at least 10, got {args.n_boot}")
    try:
        path = write_report(args.results, args.out, args.metric, args.n_boot, args.level, args.seed, args.min_seeds)
    except SchemaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
