"""The budget pilot (tune/budget_pilot.py, issue 22 item 1): real short runs per data set and step count, and the
flattening rule the cpu budget's steps are chosen by, checked on planted curves."""
from __future__ import annotations

import csv

import pytest

from tune import budget_pilot


def _rows(curve: dict, spread: float) -> list[dict]:
    """Three seeds per step count at mean FD curve[steps], spread -spread, 0, +spread."""
    return [{"dataset": "planted", "steps": s, "seed": i, "fd": fd + d, "fd_se": 1.0, "fd_student": fd, "wall_s": 1.0}
            for s, fd in curve.items() for i, d in enumerate((-spread, 0.0, spread))]


@pytest.mark.parametrize("curve, spread, flat", [
    ({400: 340.0, 800: 223.0}, 5.0, False),            # the old cpu budget's patches-8: still falling fast
    ({400: 100.0, 800: 60.0, 1600: 57.0}, 1.0, True),   # last doubling gains 5% < 10%
    ({400: 100.0, 800: 60.0, 1600: 50.0}, 1.0, False),  # gains 17%, far beyond its standard error
    ({400: 100.0, 800: 60.0, 1600: 50.0}, 15.0, True),  # the same gain, within its standard error (seed noise)
])
def test_flattening_rule_tracks_the_gain_of_the_last_doubling(curve, spread, flat):
    table = budget_pilot.curves(_rows(curve, spread))
    last = table[-1]
    assert last["steps"] == max(curve) and last["seeds"] == 3
    assert last["flat"] is flat
    assert last["gain"] == pytest.approx(curve[sorted(curve)[-2]] - curve[max(curve)])
    # se of a mean of (-s, 0, s) is s / sqrt(3); the gain's se combines two such means
    assert last["gain_se"] == pytest.approx(spread * (2 / 3) ** 0.5)


@pytest.mark.slow  # trains real runs
def test_pilot_trains_real_runs_writes_curves_and_resumes(tmp_path, capsys):
    out = tmp_path / "pilot"
    argv = ["--budget", "smoke", "--datasets", "digits", "--steps", "2,4", "--seeds", "2", "--out", str(out),
            "--set", "eval.num_samples=64", "--set", "train.batch_size=8"]
    assert budget_pilot.main(argv) == 0
    with open(out / "pilot.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["steps"], r["seed"]) for r in rows) == [("2", "0"), ("2", "1"), ("4", "0"), ("4", "1")]
    assert all(float(r["fd"]) > 0 for r in rows)
    assert len({r["fd"] for r in rows}) == 4  # seeds and lengths are distinct runs
    assert (out / "curves.png").stat().st_size > 0
    text = (out / "README.md").read_text()
    assert "python tune/budget_pilot.py --budget smoke" in text and "commit" in text
    # A second call finds every run in pilot.csv and trains nothing.
    capsys.readouterr()
    assert budget_pilot.main(argv) == 0
    assert "seed=" not in capsys.readouterr().out
    assert len((out / "pilot.csv").read_text().splitlines()) == 5
    assert "not yet trained" not in (out / "README.md").read_text()
    # --no-train with a longer plan: outputs from the runs at hand, the missing ones listed, nothing trained.
    assert budget_pilot.main(argv[:5] + ["2,4,8"] + argv[6:] + ["--no-train"]) == 0
    assert "seed=" not in capsys.readouterr().out
    text = (out / "README.md").read_text()
    assert "not yet trained" in text and "digits 8 steps seed 1" in text
    assert len((out / "pilot.csv").read_text().splitlines()) == 5


@pytest.mark.parametrize("args, message", [
    (["--datasets", "nosuch-8"], "nosuch-8.*data.name must be one of"),
    (["--steps", "400,x"], "--steps '400,x'"),
    (["--seeds", "1"], "--seeds 1: at least 2"),
    (["--budget", "huge"], "no tune/budgets/huge.yaml"),
])
def test_bad_input_is_one_line_naming_the_value(args, message, tmp_path, capsys):
    assert budget_pilot.main(args + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    import re
    assert re.search(message, err), err
    assert not (tmp_path / "pilot.csv").exists()


def test_an_export_replaces_the_old_one_but_keeps_the_pilot(tmp_path):
    import json

    from tune.findings import export_findings

    camp = tmp_path / "camp"
    (camp / "report").mkdir(parents=True)
    (camp / "report" / "report.md").write_text("# report\n")
    (camp / "campaign.json").write_text(json.dumps({"budget": "smoke", "report": "report/report.md",
                                                   "searches": {"weighting": {"state": "done", "wall_s": 1.0}}}))
    dest = tmp_path / "findings"
    (dest / "pilot").mkdir(parents=True)
    (dest / "pilot" / "curves.csv").write_text("dataset,steps\nplanted,4\n")
    (dest / "stale.txt").write_text("from the old export")
    export_findings(camp, dest)
    assert (dest / "pilot" / "curves.csv").read_text() == "dataset,steps\nplanted,4\n"
    assert not (dest / "stale.txt").exists()
    assert (dest / "report" / "report.md").exists() and (dest / "README.md").exists()


def test_a_rewritten_readme_names_the_commits_that_trained_the_runs_not_only_its_own(tmp_path):
    # A pilot.csv from before runs recorded their commit, then one run trained later at a known commit: rewriting
    # the outputs (a resumed pilot, or --no-train) must not pass the old runs off as the current commit's.
    out = tmp_path / "pilot"
    out.mkdir()
    old = [{"dataset": "digits", "steps": s, "seed": seed, "fd": 10.0 / s + seed, "fd_se": 0.1, "fd_student": 1.0,
            "wall_s": 1.0} for s in (2, 4) for seed in (0, 1)]
    with open(out / "pilot.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(old[0]))  # the old header: no commit column
        writer.writeheader()
        writer.writerows(old)
    rows = budget_pilot.read_rows(out / "pilot.csv")
    assert {r["commit"] for r in rows} == {budget_pilot.NOT_RECORDED}
    rows.append({**rows[0], "steps": 8.0, "commit": "abc123"})
    budget_pilot.write_rows(out / "pilot.csv", rows)
    assert budget_pilot.read_rows(out / "pilot.csv")[-1]["commit"] == "abc123"  # the column is added, old rows kept
    budget_pilot.write_outputs(out, rows, "python tune/budget_pilot.py --no-train")
    text = (out / "README.md").read_text()
    assert "4 runs whose commit was not recorded; 1 run at commit `abc123`" in text
    assert f"Written by `python tune/budget_pilot.py --no-train` at commit `{budget_pilot.commit_text()}`" in text
