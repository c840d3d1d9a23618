"""Plots that do not mislead, on planted tables: one interval does not flatten the others, titles state the level
the table used, FD intervals stop at 0, no power law through two points, searched-key panels keep strata apart,
list only searched keys, use a log axis for a log-distributed key and carry fd_se error bars."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from tests import synthetic
from analysis import plots
from analysis.c_scaling import estimate_c_star
from analysis.load import load_trials
from analysis.searched import best_runs, metric_by_key


def test_ablation_forest_clips_an_interval_that_would_flatten_the_rest_and_states_the_tables_level():
    rows = [{"ablation": f"claim {i}", "key": "k", "paper": "a", "alternative": "b", "effect": e, "lo": e - 5,
             "hi": e + 5, "level": 0.993, "verdict": "inconclusive"} for i, e in enumerate([-10.0, 2.0, 4.0])]
    rows.append({"ablation": "wide", "key": "k", "paper": "a", "alternative": "b", "effect": -100.0, "lo": -811.0,
                 "hi": 612.0, "level": 0.993, "verdict": "inconclusive"})
    fig = plots.plot_ablations(pd.DataFrame(rows))
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    assert -130 < left < -100 and 5 < right < 30  # the narrow intervals and the wide one's point fill the axis
    assert "99.3% interval" in ax.get_title() and "95%" not in ax.get_title()
    texts = [t.get_text() for t in ax.texts]
    assert any("interval clipped: [-811, 612]" in t for t in texts)


def _c_rows(dataset, cs, fd, seeds=3, experiment="c_scaling-cpu"):
    return [synthetic.trial_row(experiment, f"{dataset}-{i}-{s}", s, dataset, final_fd=fd(c, s), space="c_scaling",
                                config={"loss.huber_c": c}) for i, c in enumerate(cs) for s in range(seeds)]


def test_c_scaling_clips_fd_intervals_at_zero_and_draws_no_fit_through_two_data_sets(tmp_path):
    cs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    noisy = {0: -1.0, 1: 0.0, 2: 1.0}
    rows = (_c_rows("patches-8", cs, lambda c, s: 5 + 3 * (math.log10(c) + 2) ** 2 + 4 * noisy[s])
            + _c_rows("patches-16", cs, lambda c, s: 8 + 3 * (math.log10(c) + 1) ** 2 + 5 * noisy[s]))
    synthetic.write_experiment(tmp_path / "c", rows)
    cs_result = estimate_c_star(load_trials([tmp_path]), n_boot=50)
    assert (cs_result.curves["lo"] < 0).any()  # planted: some t intervals of small FDs reach below 0
    fig = plots.plot_c_scaling(cs_result, level=0.9)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    for ax in panels[:2]:
        for collection in ax.collections:  # error bars: no segment reaches below FD's floor
            for seg in getattr(collection, "get_segments", lambda: [])():
                assert np.min(np.asarray(seg)[:, 1]) >= -1e-9
        labels = ax.get_legend_handles_labels()[1]
        assert any("90% interval (clipped at 0, FD's floor)" in label for label in labels), labels
    fit_panel = panels[2]
    labels = fit_panel.get_legend_handles_labels()[1]
    assert any(label.startswith("no fit drawn: 2 data set(s)") for label in labels)
    assert not any(label.startswith("fit:") for label in labels)


def test_c_star_bounds_are_drawn_as_arrows_beside_the_papers_line(tmp_path):
    # FD still falling at the smallest c on both data sets (the cpu ladder): no c* is located, and the dimension
    # panel shows each bound as an arrow below it, with the paper's line, instead of empty axes.
    cs = [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3]
    noisy = {0: -1.0, 1: 0.0, 2: 1.0}
    rows = (_c_rows("patches-8", cs, lambda c, s: 100 + 30 * math.log2(c / 1e-4) + 4 * noisy[s])
            + _c_rows("patches-16", cs, lambda c, s: 200 + 50 * math.log2(c / 1e-4) + 5 * noisy[s]))
    synthetic.write_experiment(tmp_path / "c", rows)
    result = estimate_c_star(load_trials([tmp_path]), n_boot=20)
    assert set(result.per_dataset["bound"]) == {"below range"}
    fig = plots.plot_c_scaling(result)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    labels = panels[2].get_legend_handles_labels()[1]
    assert "paper: 0.00054 d^0.5" in labels
    assert any(label.startswith("c* < bound per data set") for label in labels), labels
    low, high = panels[2].get_ylim()
    assert low < 2e-4 / 1.5 and high > 0.00054 * 768 ** 0.5  # both bounds' arrows and the paper's line fit
    assert sorted(t.get_text() for t in panels[2].texts) == ["patches-16", "patches-8"]
    # The per-data-set panels are labelled at the tested values, not with crowded minor ticks.
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["0.0001", "0.0002", "0.0004", "0.0008", "0.0016"]
    # A flat curve (both ends tie with the best) has no point to draw but is named, with the paper's line kept;
    # its close random draws keep matplotlib's ticks instead of overlapping labels.
    flat_cs = [1e-4, 1.1e-4, 1e-3, 1e-2, 1e-1]
    flat = _c_rows("patches-32", flat_cs, lambda c, s: 300 + noisy[s])
    synthetic.write_experiment(tmp_path / "flat", flat)
    only_flat = estimate_c_star(load_trials([tmp_path / "flat"]), n_boot=20)
    assert set(only_flat.per_dataset["bound"]) == {"not located"}
    fig = plots.plot_c_scaling(only_flat)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    labels = panels[1].get_legend_handles_labels()[1]
    assert "paper: 0.00054 d^0.5" in labels and any(l.startswith("c* not located") and "patches-32" in l
                                                     for l in labels), labels
    assert "0.00011" not in [t.get_text() for t in panels[0].get_xticklabels()]

def test_searched_keys_keep_strata_apart_list_only_searched_keys_and_read_the_plans_log_scale(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for objective, stratum, p_mean, base in (("consistency", "consistency-digits", -1.1, 20.0),
                                             ("diffusion", "diffusion-digits", -1.2, 10.0)):
        for i, lr in enumerate(np.geomspace(1e-3, 5e-3, 6)):
            rows.append(synthetic.trial_row("own", f"{stratum}-{i}", 0, stratum=stratum, space="own",
                                            final_fd=base + 100 * lr + rng.normal(0, 0.1), final_fd_se=0.5 + i * 0.1,
                                            config={"optim.lr": float(lr), "loss.objective": objective,
                                                    "loss.p_mean": p_mean}))
    folder = synthetic.write_experiment(tmp_path / "own", rows)
    plan = {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 5e-3, "log": True}}}
    (folder / "experiment.json").write_text(json.dumps({"budget": "cpu", "plan": plan}))
    trials = load_trials([tmp_path])
    table = metric_by_key(trials, n_boot=50)
    assert set(table["key"]) == {"optim.lr"}  # not loss.objective, loss.p_mean: the strata fix those
    assert set(table["stratum"]) == {"consistency-digits", "diffusion-digits"}
    per = table.groupby("stratum")["num_runs"].sum()
    assert per.to_dict() == {"consistency-digits": 6, "diffusion-digits": 6}  # never one pooled bin
    means = table.groupby("stratum")["mean"].mean()
    assert means["consistency-digits"] > means["diffusion-digits"] + 5
    best = best_runs(trials)
    assert list(best["stratum"]) == ["consistency-digits", "diffusion-digits"]
    assert all(s.startswith("optim.lr=") and "," not in s for s in best["searched"])
    fig = plots.plot_searched(trials, table, "final_fd")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2 and all(ax.get_xscale() == "log" for ax in panels)  # 5x span, but searched log
    assert all("final_fd_se" in ax.get_legend_handles_labels()[1][0] for ax in panels)


def test_the_report_opens_with_a_table_of_answers_built_from_the_estimates(tmp_path):
    from analysis.report import write_report
    from analysis.stats import fmt

    cs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    rows = (_c_rows("patches-8", cs, lambda c, s: 50 + 3 * (math.log10(c) + 2) ** 2 + s)
            + _c_rows("patches-16", cs, lambda c, s: 80 + 3 * (math.log10(c) + 1) ** 2 + s))
    synthetic.write_experiment(tmp_path / "c", rows)
    (tmp_path / "c" / "experiment.json").write_text(json.dumps({"budget": "cpu"}))
    text = write_report([tmp_path], out=tmp_path / "report", n_boot=50).read_text()
    blocks = text.split("\n\n")
    assert blocks[0] == "# iCT experiment report" and blocks[1].startswith("| question or claim | answer or verdict "
                                                                           "| interval | seeds |")
    table = blocks[1].splitlines()[2:]
    per = pd.read_csv(tmp_path / "report" / "c_scaling_per_dataset.csv").set_index("dataset")
    for dataset in ("patches-8", "patches-16"):
        (row,) = [r for r in table if f"Q1 best Pseudo-Huber c, {dataset}" in r]
        cells = [c.strip() for c in row.strip("|").split("|")]
        r = per.loc[dataset]
        assert cells[2] == f"[{fmt(r['c_lo'])}, {fmt(r['c_hi'])}]" and cells[3] == str(int(r["num_seeds"])) == "3"
        spans = r["c_lo"] <= r["c_min"] and r["c_hi"] >= r["c_max"]
        assert cells[1] == ("inconclusive: " if spans else "") + f"c* {fmt(r['c_star'])} (best tested {fmt(r['best_c'])})"
    # b is fitted jointly from every run (analysis/c_scaling.py), so two data sets give it an interval; the row
    # carries the fit's own numbers.
    fit = pd.read_csv(tmp_path / "report" / "c_scaling_fit.csv").iloc[0]
    (row,) = [r for r in table if "Q1 c* = a d^b" in r]
    cells = [c.strip() for c in row.strip("|").split("|")]
    decided = not fit["b_contains_0.5"] or fit["b_hi"] - fit["b_lo"] <= 0.3
    assert cells[1] == ("" if decided else "inconclusive: ") + f"b = {fmt(fit['b'])}" + (
        "" if decided else " (its interval holds 0.5 and is wider than +-0.15)")
    assert cells[2] == f"[{fmt(fit['b_lo'])}, {fmt(fit['b_hi'])}]" and cells[3] == "2 data sets"
    assert cells[4] == ("yes" if decided else "no")
    assert blocks[2].startswith("Decided: ")  # what the compute decided follows the table, then the prose
    assert blocks[3].startswith("Q1, the best Pseudo-Huber c")
