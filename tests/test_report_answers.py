"""The table of answers that opens a report (analysis/report_answers.py) and Q1's fit within one image family:
planted tables whose truth is known, so each column is shown to track what it names."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.ablations import analyze_ablations
from analysis.c_scaling import estimate_c_star
from analysis.report import write_report
from analysis.report_answers import answer_rows, decided_line
from analysis.report_parts import Report
from ict_core.datasets import dataset_family
from tests import synthetic
from tests.test_dimension_ladder import LADDER, _planted_ladder


def test_data_sets_cut_from_the_same_photographs_share_a_family():
    assert {dataset_family(k) for k in LADDER} == {"photographs"}
    assert dataset_family("digits-8") == "digits" and dataset_family("cifar10-32") == "cifar10"
    assert dataset_family("my_own-16") == "my_own"  # a data set the registry does not know is its own family


def _digits_rows(rng, c_star: float, seeds: int = 3) -> list[dict]:
    """A digits-8 c search whose optimum sits far off the photographs' law: another data set at d = 64."""
    rows = []
    for c in c_star * 2.0 ** np.arange(-2, 3):
        for seed in range(seeds):
            fd = 10 + 4 * math.log(c / c_star) ** 2 + rng.normal(0, 0.3)
            rows.append(synthetic.trial_row("c_scaling", f"d-{c:.5g}-{seed}", seed, "digits-8", final_fd=fd,
                                            space="c_scaling", config={"loss.huber_c": float(c)}))
    return rows


def test_the_ladders_exponent_is_fitted_within_its_family_when_another_data_set_is_present():
    rng = np.random.default_rng(7)
    ladder = _planted_ladder(rng, b=0.9, seeds=3, noise=0.5, miss=1.4)
    # The ladder's own law puts c* near 0.002 * 64^0.9 = 0.09 at d = 64; digits' optimum is 40 times lower.
    mixed = estimate_c_star(pd.DataFrame(ladder + _digits_rows(rng, 0.09 / 40)), n_boot=20)
    assert mixed.fit is not None and mixed.fit.num_datasets == len(LADDER) + 1
    family = mixed.family_fits["photographs"]
    assert family.num_datasets == len(LADDER) and family.b_lo <= 0.9 <= family.b_hi
    assert not family.b_contains_paper
    # The data set from another family scatters far off the law: the pooled interval widens to that scatter, the
    # family's stays as narrow as the ladder alone makes it.
    assert (mixed.fit.b_hi - mixed.fit.b_lo) > 2 * (family.b_hi - family.b_lo)
    # One family alone: its law is the fit, and no separate family fit is made.
    alone = estimate_c_star(pd.DataFrame(ladder), n_boot=20)
    assert alone.family_fits == {} and alone.fit.num_datasets == len(LADDER)


def _answers(path) -> tuple[pd.DataFrame, str]:
    """The report's opening table as a frame, and the line under it."""
    blocks = path.read_text().split("\n\n")
    table = next(b for b in blocks if b.startswith("| question or claim"))
    lines = [line.strip("|").split(" | ") for line in table.strip().splitlines()]
    frame = pd.DataFrame([[cell.strip() for cell in line] for line in lines[2:]],
                         columns=[c.strip() for c in lines[0]])
    return frame, next(b for b in blocks if b.startswith("Decided: "))


def test_the_table_of_answers_says_which_claims_are_decided_and_what_an_open_one_could_detect(tmp_path):
    rng = np.random.default_rng(11)
    rows = synthetic.planted_ablations(rng, {"loss.teacher": ("ema", -6.0), "loss.weighting": ("uniform", 0.0)},
                                       seeds=3, noise=0.4)
    for row in rows:
        row["wall_s"] = 360.0  # a tenth of an hour per run
    synthetic.write_experiment(tmp_path / "ablations", rows)
    frame, line = _answers(write_report([tmp_path], n_boot=50))
    frame = frame.set_index("question or claim")
    ema = frame.loc["EMA teacher vs none: none - ema"]
    weighting = frame.loc["iCT weighting vs uniform: ict - uniform"]
    assert ema["decided"] == "yes" and ema["answer or verdict"].startswith("reproduced")
    assert ema["detectable"] == "-"  # a decided claim needs no detectable effect
    assert weighting["decided"] == "no" and weighting["answer or verdict"].startswith("inconclusive")
    detectable = float(weighting["detectable"].split()[0])
    # No true effect: what the design could have detected is several times the seed noise, far below the
    # planted effect that was found.
    assert 0.4 < detectable < 6.0
    # 9 runs (3 default, 3 ema, 3 uniform) of 0.1 h; one decided answer.
    assert line.startswith("Decided: 1 of 2 answers (EMA teacher vs none: none - ema)")
    assert "0.9 run hours, 9 runs trained, 0.9 run hours per decided answer" in line


def test_more_seeds_shrink_the_detectable_effect_of_an_open_claim():
    # The number the table shows for an open claim is the ablation line's `detectable`: it falls like the
    # standard error, about 1/sqrt(seeds) (and faster at few seeds, where Student's t is wide).
    widths = []
    for seeds in (3, 8):
        rows = synthetic.planted_ablations(np.random.default_rng(seeds), {"loss.weighting": ("uniform", 0.0)},
                                           seeds=seeds, noise=0.4)
        table = analyze_ablations(pd.DataFrame(rows)).set_index("key")
        widths.append(float(table.loc["loss.weighting", "detectable"]))
    assert widths[1] < widths[0] / 2, widths


def _ladder_answers(rows: list[dict], min_seeds: int = 3) -> pd.DataFrame:
    rep = Report(Path("unused"))
    rep.results["c_scaling"] = estimate_c_star(pd.DataFrame(rows), n_boot=20)
    return pd.DataFrame(answer_rows(rep, pd.DataFrame(), "final_fd", min_seeds=min_seeds)).set_index(
        "question or claim")


def test_b_is_graded_once_within_its_family_and_needs_seeds_and_a_real_budget():
    rng = np.random.default_rng(7)
    ladder = _planted_ladder(rng, b=0.9, seeds=3, noise=0.5, miss=1.4)
    table = _ladder_answers(ladder + _digits_rows(rng, 0.09 / 40))
    family = table.loc["Q1 c* = a d^b within the photographs family (paper: b = 0.5)"]
    pooled = table.loc["Q1 c* = a d^b across data sets (paper: b = 0.5)"]
    assert family["decided"] == "yes" and family["answer or verdict"].startswith("b = 0.")
    assert pooled["decided"] == "-"  # shown, not counted a second time
    assert (table["decided"] == "yes").sum() == 1 + len(LADDER) + 1  # b, each ladder c*, digits' c*
    # The same planted truth on a smoke budget, or at the same seeds with a report that asks for more, decides
    # nothing.
    smoke = _ladder_answers([{**row, "budget": "smoke"} for row in ladder])
    assert set(smoke["decided"]) == {"no"}
    assert smoke.loc["Q1 c* = a d^b across data sets (paper: b = 0.5)", "answer or verdict"].startswith("inconclusive")
    assert set(_ladder_answers(ladder, min_seeds=4)["decided"]) == {"no"}


def test_an_optimum_below_the_range_is_open_and_says_what_its_seeds_could_tell_apart():
    # FD still falling at the smallest c (the cpu ladder's patches): a one-sided bound, not decided, and its
    # detectable difference grows with the planted noise.
    def table(noise: float) -> pd.Series:
        rng = np.random.default_rng(3)
        offsets = rng.normal(0, 20, 3)
        rows = []
        for c in [4.7e-4 * 2.0 ** k for k in range(5)]:
            for seed in range(3):
                row = synthetic.trial_row("ladder", f"{c:.3g}-{seed}", seed, "patches-8", space="c_ladder",
                                          final_fd=100 + 15 * math.log2(c / 4.7e-4) + offsets[seed]
                                          + noise * rng.normal(), config={"loss.huber_c": c})
                row["dim"] = 192
                rows.append(row)
        return _ladder_answers(rows).loc["Q1 best Pseudo-Huber c, patches-8 (d=192)"]

    quiet, loud = table(1.0), table(5.0)
    assert quiet["decided"] == loud["decided"] == "no"
    assert "low end of the searched range" in quiet["answer or verdict"]
    assert quiet["detectable"].endswith(" FD") and loud["detectable"].endswith(" FD")
    assert float(loud["detectable"].split()[0]) > 3 * float(quiet["detectable"].split()[0])

def test_b_that_cannot_be_fitted_is_an_open_answer_not_a_missing_row():
    """What the issue-22 cpu ladder produced: c at several dimensions, c* located at one. b is one of the answers
    the tables were run for, so it stays in the table (and the decided count) as open, saying why."""
    rng = np.random.default_rng(7)
    ladder = _planted_ladder(rng, b=0.9, seeds=3, noise=0.5, miss=1.4)
    full = _ladder_answers(ladder)
    law = "Q1 c* = a d^b across data sets (paper: b = 0.5)"
    assert full.loc[law, "answer or verdict"].startswith("b = ")  # the planted ladder locates c* everywhere
    # Every other data set: FD still falling at its smallest c (the cpu ladder's patches), a one-sided bound.
    one = [r if r["dataset"] == ladder[0]["dataset"] else
           {**r, "final_fd": 100 + 10 * math.log2(r["loss.huber_c"]) + 0.1 * rng.normal()} for r in ladder]
    table = _ladder_answers(one)
    row = table.loc[law]
    assert row["decided"] == "no" and row["answer or verdict"].startswith("no answer: c* located on both sides at 1 of")
    assert row["answer or verdict"].endswith("the fit needs 2")
    # A single dimension asks nothing of b: no row.
    assert law not in _ladder_answers([r for r in ladder if r["dataset"] == ladder[0]["dataset"]]).index


def test_an_open_dropout_optimum_states_its_detectable_difference_too():
    from analysis.dropout import analyze_dropout

    # Best dropout at 0.5, the top of the searched grid: open, with a detectable difference that grows with noise.
    def best(noise: float) -> pd.Series:
        rows = synthetic.planted_dropout(np.random.default_rng(6), best={"consistency": 0.7}, seeds=3, noise=noise)
        result = analyze_dropout(pd.DataFrame(rows), n_boot=20)
        rep = Report(Path("unused"))
        rep.results["dropout"] = result
        table = pd.DataFrame(answer_rows(rep, pd.DataFrame(), "final_fd")).set_index("question or claim")
        return table.iloc[0], result.best.iloc[0]

    (quiet_row, quiet), (loud_row, loud) = best(0.3), best(3.0)
    assert quiet_row["decided"] == "no" and quiet_row["detectable"].endswith(" FD")
    assert loud["detectable"] == pytest.approx(10 * quiet["detectable"], rel=0.01)  # the same draws, 10x the noise

def _q3(tied: list[bool], global_p: float, runner_up_p: float) -> pd.Series:
    final = pd.DataFrame({"dataset": "digits-8", "context": "all", "curriculum": ["exponential", "cosine", "sqrt"],
                          "mean": [10.0, 11.0, 14.0], "lo": [9.0, 10.0, 13.0], "hi": [11.0, 12.0, 15.0],
                          "num_seeds": 4, "tied_best": tied, "global_p": global_p, "runner_up_p": runner_up_p,
                          "detectable": 1.5})
    rep = Report(Path("unused"))
    rep.results["curriculum"] = final
    return pd.DataFrame(answer_rows(rep, pd.DataFrame(), "final_fd")).iloc[0]


def test_a_best_curriculum_is_decided_only_when_it_beats_the_runner_up_and_ties_with_none():
    assert _q3([True, False, False], 0.001, 0.01)["decided"] == "yes"
    tied = _q3([True, True, False], 0.001, 0.01)  # beats the runner-up by its seeds, but within the FD's se
    assert tied["decided"] == "no" and tied["detectable"] == "1.5 FD" and "tied with 1 other" in tied["answer or verdict"]
    assert _q3([True, False, False], 0.001, 0.2)["decided"] == "no"  # the runner-up is not beaten
    assert _q3([True, False, False], 0.3, 0.01)["decided"] == "no"  # the curricula do not differ


def test_the_decided_line_counts_each_trained_run_once_and_is_absent_without_graded_answers():
    rows = [synthetic.trial_row("a", f"t{i}", i, final_fd=1.0, wall_s=1800.0, run_key=f"k{i}") for i in range(4)]
    rows.append(synthetic.trial_row("b", "copy", 0, final_fd=1.0, wall_s=1800.0, run_key="k0"))  # the same run
    rows.append(synthetic.trial_row("a", "bad", 9, status="errored", wall_s=360.0))
    answers = [{"question or claim": "claim A", "decided": "yes"}, {"question or claim": "claim B", "decided": "no"},
               {"question or claim": "pooled", "decided": "-"}]
    line = decided_line(answers, pd.DataFrame(rows))
    # 4 runs of half an hour, the copy not again, the errored run's 0.1 h counted as cost but not as a run.
    assert line.startswith("Decided: 1 of 2 answers (claim A). Compute: 2.1 run hours, 4 runs trained, "
                           "2.1 run hours per decided answer"), line
    assert decided_line([{"question or claim": "best run of x / y"}], pd.DataFrame(rows)) == ""
