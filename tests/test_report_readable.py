"""The parts of the report meant for a reader's eye: per-data-set c-scaling panels, sample grids of the best and
the worst configuration, and Optuna parameter importances with their journal file (analysis/importance.py,
analysis/grids.py). Real Optuna, real Parquet, real PNGs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import importance as imp
from analysis import plots
from analysis.c_scaling import estimate_c_star
from analysis.report import write_report
from ict_core.records import JOURNAL_FILE
from synthetic import planted_c_scaling, trial_row, write_experiment

PLAN = {"params": {"loss.huber_c": {"type": "loguniform", "low": 1e-3, "high": 1.0, "values": [], "log": True},
                   "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2, "values": [], "log": True}}}


def planted_two_keys(rng, configs=16, seeds=2, experiment="two_keys", stratum="digits-8", on="loss.huber_c"):
    """FD = 10 + 4 (ln x - ln x*)^2 + noise: it depends strongly on the key `on` (loss.huber_c, x* = 0.03, or
    optim.lr, x* = 1e-3) and not at all on the other."""
    rows = []
    for i in range(configs):
        c = float(np.exp(rng.uniform(np.log(1e-3), np.log(1.0))))
        lr = float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-2))))
        x, best = (c, 0.03) if on == "loss.huber_c" else (lr, 1e-3)
        for seed in range(seeds):
            fd = 10 + 4 * (np.log(x) - np.log(best)) ** 2 + rng.normal(0, 0.3)
            rows.append(trial_row(experiment, f"t{i}-s{seed}", seed, final_fd=fd, stratum=stratum,
                                  config={"loss.huber_c": c, "optim.lr": lr}))
    return rows


def write_plan(folder, params=PLAN["params"]):
    (folder / "experiment.json").write_text(json.dumps({"budget": "cpu", "plan": {"params": params}}))


def test_importances_rank_the_key_the_metric_depends_on(tmp_path):
    rng = np.random.default_rng(0)
    rows = planted_two_keys(rng)
    # A configuration with a diverged seed is a FAIL, one stopped by the scheduler PRUNED: neither is ranked.
    rows.append(trial_row("two_keys", "bad-s0", 0, final_fd=5.0, config={"loss.huber_c": 0.03, "optim.lr": 1e-3}))
    rows.append(trial_row("two_keys", "bad-s1", 1, status="diverged", config={"loss.huber_c": 0.03, "optim.lr": 1e-3}))
    rows.append(trial_row("two_keys", "cut-s0", 0, status="pruned", final_fd=50.0,
                          config={"loss.huber_c": 0.5, "optim.lr": 2e-3}))
    folder = write_experiment(tmp_path / "two_keys", rows)
    write_plan(folder)
    trials = pd.read_parquet(folder / "trials.parquet").assign(experiment_dir=str(folder))
    (study,) = imp.rebuild_studies(trials)
    assert (study.num_complete, study.num_fail, study.num_pruned) == (16, 1, 1)
    assert list(study.importances) == ["loss.huber_c", "optim.lr"]
    assert study.importances["loss.huber_c"] > 0.8 > study.importances["optim.lr"]
    # The value of a trial is the mean over its completed seeds.
    done = trials[trials["status"] == "completed"].groupby("config_id")["final_fd"].mean()
    values = {t.user_attrs["config_id"]: t.value for t in study.study.trials if t.value is not None}
    assert values == pytest.approx(done.drop(trials.loc[trials["trial_id"] == "bad-s0", "config_id"]).to_dict())
    # Distributions come from the plan (log scale, its range).
    dist = study.study.trials[0].distributions["loss.huber_c"]
    assert dist.log and dist.low == pytest.approx(1e-3) and dist.high == pytest.approx(1.0)
    # The same design with the metric depending on the other key ranks them the other way round.
    other = pd.DataFrame(planted_two_keys(np.random.default_rng(0), on="optim.lr"))
    (swapped,) = imp.rebuild_studies(other)
    assert list(swapped.importances) == ["optim.lr", "loss.huber_c"]
    assert swapped.importances["optim.lr"] > 0.7


def test_plan_range_is_widened_to_hold_the_papers_point_and_inferred_without_plan():
    values = pd.Series([0.5e-3, 0.01, 0.2])  # the paper's point below the searched range
    d = imp.distribution("loss.huber_c", values, PLAN["params"]["loss.huber_c"])
    assert d.log and d.low == pytest.approx(0.5e-3) and d.high == pytest.approx(1.0)
    inferred = imp.distribution("network.dropout", pd.Series([0.0, 0.1, 0.3]))
    assert not inferred.log and (inferred.low, inferred.high) == (0.0, 0.3)
    assert imp.distribution("train.total_steps", pd.Series([100, 200])).__class__.__name__ == "IntDistribution"
    choice = imp.distribution("loss.weighting", pd.Series(["icm", "uniform"]), {"type": "choice",
                                                                                 "values": ["icm", "uniform", "snr"]})
    assert choice.choices == ("icm", "uniform", "snr")


def test_too_few_completed_configurations_give_no_importances_and_say_why(tmp_path):
    rows = planted_two_keys(np.random.default_rng(1), configs=imp.MIN_COMPLETED - 1, seeds=1)
    trials = pd.DataFrame(rows)
    (study,) = imp.rebuild_studies(trials)
    assert study.importances == {}
    assert f"{imp.MIN_COMPLETED - 1} completed configurations" in study.reason
    assert f"at least {imp.MIN_COMPLETED}" in study.reason
    table = imp.importance_table([study])
    assert table["key"].tolist() == ["-"] and np.isnan(table["importance"].iloc[0])
    # A stratum where no searched key varies has nothing to rank either.
    same = pd.DataFrame([trial_row("one", f"t{s}", s, final_fd=10.0 + s) for s in range(8)])
    (flat,) = imp.rebuild_studies(same)
    assert flat.params == [] and "no searched key" in flat.reason


def test_journal_file_reloads_into_studies_with_the_same_trials(tmp_path):
    rng = np.random.default_rng(2)
    rows = planted_two_keys(rng, configs=8, stratum="digits-8") + planted_two_keys(rng, configs=7, stratum="patches-16")
    rows.append(trial_row("two_keys", "bad", 0, status="diverged", stratum="patches-16",
                          config={"loss.huber_c": 0.2, "optim.lr": 1e-3}))
    studies = imp.rebuild_studies(pd.DataFrame(rows))
    path = imp.export_journal(studies, tmp_path / JOURNAL_FILE)
    # Writing again replaces the file instead of appending a second copy of each study.
    path = imp.export_journal(studies, path)
    loaded = imp.load_journal(path)
    assert sorted(loaded) == ["two_keys/digits-8", "two_keys/patches-16"]
    for s in studies:
        got, want = loaded[s.name].trials, s.study.trials
        assert len(got) == len(want) == 8
        for g, w in zip(got, want):
            assert (g.state, g.params, g.value, g.user_attrs) == (w.state, w.params, w.value, w.user_attrs)
        assert loaded[s.name].user_attrs["stratum"] == s.stratum
    assert not list(tmp_path.glob(".*tmp"))


def test_c_scaling_plot_has_one_panel_per_data_set():
    trials = pd.DataFrame(planted_c_scaling(np.random.default_rng(3), seeds=3))
    cs = estimate_c_star(trials, n_boot=50)
    fig = plots.plot_c_scaling(cs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    datasets = sorted(trials["dataset"].unique())
    assert len(titles) == len(datasets) + 1
    for dataset, title in zip(datasets, titles):
        assert title.startswith(dataset)
    # Each panel's y range is its own data set's metric.
    for dataset, ax in zip(datasets, [a for a in fig.axes if a.get_visible()]):
        fd = cs.curves.loc[cs.curves["dataset"] == dataset, "mean"]
        lo, hi = ax.get_ylim()
        assert lo <= fd.min() and fd.max() <= hi and hi - lo < 3 * (fd.max() - fd.min()) + 10


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 16, 3), value, dtype=np.uint8)).save(path)


def _grid_experiment(tmp_path, with_run_dir=True):
    rows = []
    fds = {0.01: 12.0, 0.03: 10.0, 0.1: 11.0, 0.3: 15.0}
    for k, (c, fd) in enumerate(fds.items()):
        for seed in (0, 1):
            row = trial_row("grid_exp", f"t{k}-s{seed}", seed, final_fd=fd + 0.1 * seed, config={"loss.huber_c": c})
            if with_run_dir:
                row["run_dir"] = f"trials/t{k}/seed_{seed}"
            rows.append(row)
    rows.append(trial_row("grid_exp", "t9-s0", 0, status="diverged", config={"loss.huber_c": 1.0}))
    if with_run_dir:
        rows[-1]["run_dir"] = "trials/t9/seed_0"
    folder = write_experiment(tmp_path / "grid_exp", rows)
    if with_run_dir:
        for k in range(4):
            for seed in (0, 1):
                run = folder / "trials" / f"t{k}" / f"seed_{seed}" / "samples"
                _png(run / "step_0000100.png", 1)
                _png(run / "step_0000200.png", 10 * k + seed + 2)  # the final grid: unique per run
    return folder


def test_report_embeds_the_final_grids_of_best_and_worst_with_relative_links(tmp_path):
    folder = _grid_experiment(tmp_path)
    out = tmp_path / "rep"
    text = write_report(folder, out, n_boot=50).read_text()
    assert "## Samples of the best and the worst configuration" in text
    cells = [part for line in text.splitlines() if line.startswith("| samples") for part in line.split("![")[1:]]
    links = [c.split("](")[1].split(")")[0] for c in cells]
    assert len(links) == 2 and all(not link.startswith("/") for link in links)
    best, worst = links
    # Best: c = 0.03 (t1), worst among configurations without divergence: c = 0.3 (t3); both their seed 0,
    # and the newest of their grids.
    assert np.asarray(Image.open(out / best))[0, 0, 0] == 10 * 1 + 0 + 2
    assert np.asarray(Image.open(out / worst))[0, 0, 0] == 10 * 3 + 0 + 2
    # The folder moves with its grids.
    moved = shutil.move(str(out), str(tmp_path / "elsewhere"))
    assert all((tmp_path / "elsewhere" / link).exists() for link in links) and moved
    # The journal of the rebuilt study lands in the experiment folder, named relative to the report.
    assert (folder / JOURNAL_FILE).exists()
    assert f"`../grid_exp/{JOURNAL_FILE}`" in text
    assert "optuna-dashboard" in text
    assert list(imp.load_journal(folder / JOURNAL_FILE)) == ["grid_exp/digits-8"]
    # Four completed configurations: too few to rank, and the report says so.
    assert "importances need at least" in text


def test_report_without_run_dir_says_no_grids_are_available(tmp_path):
    folder = _grid_experiment(tmp_path, with_run_dir=False)
    text = write_report(folder, tmp_path / "rep", n_boot=50, journal=False).read_text()
    assert "No sample grids are available" in text and "run_dir" in text
    assert not (folder / JOURNAL_FILE).exists()
    assert not (tmp_path / "rep" / "grids").exists()


def test_a_categorical_key_is_ranked_too():
    """Ablation-like spaces search choices: the weighting decides FD here, c does not."""
    rng = np.random.default_rng(4)
    rows = []
    for i in range(12):
        weighting = ["icm", "uniform", "snr"][i % 3]
        fd = {"icm": 10.0, "uniform": 30.0, "snr": 20.0}[weighting] + rng.normal(0, 0.5)
        rows.append(trial_row("cat", f"t{i}", 0, final_fd=fd, config={
            "loss.weighting": weighting, "loss.huber_c": float(np.exp(rng.uniform(-7, 0)))}))
    (study,) = imp.rebuild_studies(pd.DataFrame(rows))
    assert type(study.study.trials[0].distributions["loss.weighting"]).__name__ == "CategoricalDistribution"
    assert list(study.importances) == ["loss.weighting", "loss.huber_c"]


def test_final_grid_is_the_newest_by_step_number(tmp_path):
    from analysis.grids import final_grid

    assert final_grid(tmp_path) is None
    for step, value in ((9_999_999, 1), (10_000_000, 2), (500, 3)):
        _png(tmp_path / "samples" / f"step_{step:07d}.png", value)
    assert final_grid(tmp_path).name == "step_10000000.png"


def test_curriculum_labels_name_adaptive_keys_only_for_the_adaptive_shape():
    from analysis.curriculum import curriculum_columns, curriculum_label

    rows = pd.DataFrame([trial_row("cur", "a", 0, config={"curriculum.shape": "exponential"}),
                         trial_row("cur", "b", 0, config={"curriculum.shape": "adaptive"})])
    cols = curriculum_columns(rows)
    assert any(c.startswith("curriculum.adaptive_") for c in cols)
    exponential, adaptive = (curriculum_label(r, cols) for _, r in rows.iterrows())
    assert exponential == "exponential s0=10 s1=1280" and "adaptive_" not in exponential
    assert adaptive.startswith("adaptive s0=10 s1=1280 adaptive_")


def test_compute_table_counts_what_each_stratum_rests_on():
    from analysis.report_sections import compute_table

    rows = [trial_row("exp", f"a{s}", s, config={"loss.huber_c": 0.01}, wall_s=1800.0) for s in range(3)]
    rows += [trial_row("exp", f"b{s}", s, config={"loss.huber_c": 0.1}, wall_s=1800.0) for s in range(2)]
    rows += [trial_row("exp", "b2", 2, config={"loss.huber_c": 0.1}, status="pruned", steps=100, images_seen=1600)]
    rows += [trial_row("exp", "p0", 0, dataset="patches-16", config={"loss.huber_c": 0.1})]
    table = compute_table(pd.DataFrame(rows)).set_index("stratum")
    digits, patches = table.loc["digits-8"], table.loc["patches-16"]
    per_run = rows[0]["images_seen"]
    assert (digits["configurations"], digits["runs"], digits["completed"]) == (2, 6, 5)
    assert digits["seeds per configuration"] == "2-3"  # the pruned seed does not count
    assert digits["images trained"] == 5 * per_run + 1600  # pruned runs' images do count
    assert digits["run hours"] == pytest.approx((5 * 1800 + 1) / 3600, abs=0.01)
    assert (patches["configurations"], patches["seeds per configuration"]) == (1, "1")
