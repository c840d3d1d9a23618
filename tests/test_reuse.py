"""Reuse, never retrain (tune/reuse.py): two spaces that share the paper's baseline configuration (the weighting
and the EMA-teacher ablations both run loss.weighting=ict with loss.teacher=none) train it once in a campaign;
the second search reads the runs, marks them reused, and the compute table counts them once. A later search
named with --reuse trains nothing at all."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.report_sections import compute_table
from tune import campaign
from tune.reuse import REUSED_FILE, ReuseError
from tune.search import main as search_main
from tune.launch import run_search

@pytest.fixture(scope="module")
def local_ray(shared_ray):
    """The session's local Ray (tests/conftest.py) for the module's searches (run_search leaves a Ray it did not
    start running)."""
    yield shared_ray


TINY = {"network.channels": 8, "network.channel_mult": [1], "train.total_steps": 20, "train.batch_size": 16,
        "eval.every": 20, "eval.num_samples": 100}


def test_reuse_of_a_folder_without_an_experiment_is_refused_before_ray(tmp_path, capsys):
    import ray

    (tmp_path / "empty").mkdir()
    assert search_main(["--space", "weighting", "--budget", "smoke", "--storage", str(tmp_path),
                        "--reuse", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "--reuse" in err and "holds no experiment" in err
    with pytest.raises(ReuseError, match="holds no experiment"):
        campaign.run_campaign("smoke", ["weighting"], storage=tmp_path, name="c", reuse=[tmp_path / "empty"])
    assert not ray.is_initialized() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_shared_baseline_is_trained_once_and_read_everywhere(tmp_path, local_ray):
    extra = {**TINY, "eval.cache_dir": str(tmp_path / "featnet")}
    cdir = campaign.run_campaign("smoke", ["weighting", "ema_teacher"], storage=tmp_path, name="camp", extra=extra,
                                 report=False, quiet=True)
    first = pd.read_parquet(cdir / "weighting" / "trials.parquet")
    second = pd.read_parquet(cdir / "ema_teacher" / "trials.parquet")
    assert (first["status"] == "completed").all() and (second["status"] == "completed").all()
    assert not first["reused"].any()
    base = second[(second["loss.teacher"] == "none")]
    assert len(base) == 2 and base["reused"].all() and not second[second["loss.teacher"] == "ema"]["reused"].any()
    origin = first[first["loss.weighting"] == "ict"].set_index("run_key")
    # the same runs: same run_key, the same numbers, and the row names where it was trained
    assert set(base["run_key"]) == set(origin.index)
    for _, row in base.iterrows():
        assert row["final_fd"] == origin.loc[row["run_key"], "final_fd"]
        assert row["reused_from"] == f"weighting/{origin.loc[row['run_key'], 'run_dir']}"
        folder = cdir / "ema_teacher" / row["run_dir"]
        assert json.loads((folder / REUSED_FILE).read_text())["experiment"] == "weighting"
        assert not (folder / "checkpoints").exists()  # read, not trained
    evals = pd.read_parquet(cdir / "ema_teacher" / "evals.parquet")
    assert set(base["trial_id"]) <= set(evals["trial_id"])  # its evaluations came along

    table = compute_table(pd.concat([first, second], ignore_index=True)).set_index("experiment")
    assert table.loc["ema_teacher", "reused runs"] == 2 and table.loc["weighting", "reused runs"] == 0
    trained_images = first["images_seen"].sum() + second.loc[~second["reused"], "images_seen"].sum()
    assert table["images trained"].sum() == trained_images  # each run counted once

    # --reuse: another experiment of the same runs reads all four and trains none
    again = run_search("weighting", "smoke", storage=tmp_path, name="again", extra=extra, quiet=True,
                       reuse=[cdir])
    rows = pd.read_parquet(again / "trials.parquet")
    assert len(rows) == 4 and rows["reused"].all() and set(rows["run_key"]) == set(first["run_key"])
    assert not any((again / r / "checkpoints").exists() for r in rows["run_dir"])


@pytest.mark.slow
def test_design_rounds_add_seeds_to_the_open_claim_and_resume(tmp_path, local_ray):
    """A weighting space whose smoke budget is a two-look design (2 seeds, then 3): the first round trains both
    arms at 2 seeds, the claim is open, the second round trains seed 2 of both arms only (seeds 0-1 are read from
    round one), and a resume trains nothing more."""
    import yaml

    from tune.space_schema import SPACE_DIR

    tree = yaml.safe_load((SPACE_DIR / "weighting.yaml").read_text())
    tree["strata"] = tree["strata"][:1]
    tree["budgets"]["smoke"] = {"num_samples": 1, "seeds_min": 2, "seeds_max": 3, "looks": 2, "max_runs": 6}
    space = tmp_path / "weighting_rounds.yaml"
    space.write_text(yaml.safe_dump(tree))
    extra = {**TINY, "eval.cache_dir": str(tmp_path / "featnet")}
    # family=2: as in a campaign whose other search holds one more claim, this claim gets half of alpha
    exp = run_search(space, "smoke", storage=tmp_path, name="rounds", extra=extra, quiet=True, family=2)
    info = json.loads((exp / "experiment.json").read_text())
    trials = pd.read_parquet(exp / "trials.parquet")
    assert info["status"] == "finished", info.get("first_error")
    verdict = info["design"]["verdicts"]["weighting:digits"]
    assert verdict["state"] in ("inconclusive", "decided") and verdict["level"] == pytest.approx(0.025)
    if verdict["state"] == "inconclusive":  # the usual case: 2 seeds cannot decide at the first look's level
        assert info["design"]["looks"]["weighting:digits"] == [2, 3]
        assert sorted(trials.groupby("loss.weighting")["seed"].apply(sorted).tolist()) == [[0, 1, 2], [0, 1, 2]]
        assert len(trials) == 6 and trials["run_key"].is_unique and not trials["reused"].any()
        seed2 = trials[trials["seed"] == 2]
        assert seed2["config_id"].nunique() == 2 and not set(seed2["config_id"]) & set(trials[trials["seed"] == 0]["config_id"])
    else:  # decided at the first look: no second round
        assert len(trials) == 4 and info["design"]["looks"]["weighting:digits"] == [2]
    before = trials.copy()
    again = run_search(space, "smoke", storage=tmp_path, name="rounds", extra=extra, quiet=True, resume=True,
                       family=2)
    after = pd.read_parquet(again / "trials.parquet")
    assert after["run_key"].tolist() == before["run_key"].tolist()
    assert json.loads((again / "experiment.json").read_text())["status"] == "finished"
    if verdict["state"] == "inconclusive":
        # a driver killed during round 2: experiment.json still holds the round in progress; --resume restores
        # that round's Tune experiment (it had finished its trials), records the round and trains nothing more
        state = json.loads((exp / "experiment.json").read_text())
        state["status"] = "interrupted"
        state["design"].update(round=1, looks={"weighting:digits": [2]}, decided=[], pending={
            "round": 2, "strata": ["digits"],
            "jobs": [{"stratum": "digits", "target": 3, "overrides": {"loss.weighting": w}} for w in ("ict", "uniform")]})
        (exp / "experiment.json").write_text(json.dumps(state))
        run_search(space, "smoke", storage=tmp_path, name="rounds", extra=extra, quiet=True, resume=True, family=2)
        state = json.loads((exp / "experiment.json").read_text())
        assert state["status"] == "finished" and state["design"]["round"] == 2 and state["design"]["pending"] is None
        assert state["design"]["looks"]["weighting:digits"] == [2, 3]
        assert pd.read_parquet(exp / "trials.parquet")["run_key"].tolist() == before["run_key"].tolist()
