"""The campaign command: every plan checked before Ray, the dry run's compute estimate, and a real tiny campaign
killed in its second search and resumed to the report."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ict_core import rundir
from tune import campaign, carry
from tune.findings import ExportError, export_findings
from tune import plan as planning
from tune.plan import resolve_plan
from tune.reuse import reuse_index

REPO = Path(__file__).resolve().parent.parent
# Shrinks every trial of the shipped smoke budgets to seconds (real training on the bundled digits).
TINY_SET = ["network.channels=8", "network.channel_mult=[1]", "train.total_steps=40", "train.batch_size=16",
            "eval.every=20", "eval.num_samples=100"]


def _tiny_set(cache: Path) -> list[str]:
    return [*TINY_SET, f"eval.cache_dir={cache}"]


def test_unknown_space_or_budget_is_a_clear_error_before_ray(capsys):
    import ray

    assert campaign.main(["--budget", "cpu", "--spaces", "c_scaling,zigzag", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "zigzag" in err and "c_scaling" in err and "shipped spaces" in err
    assert campaign.main(["--budget", "huge", "--spaces", "weighting"]) == 2
    err = capsys.readouterr().err
    assert "unknown budget 'huge'" in err and "smoke, cpu, gpu, paper" in err
    assert campaign.main(["--budget", "smoke", "--spaces", "weighting,weighting", "--dry-run"]) == 2
    assert "twice" in capsys.readouterr().err
    assert campaign.main(["--budget", "smoke", "--spaces", "weighting", "--set", "loss.weighting=ict"]) == 2
    assert "searched param" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_default_spaces_put_the_open_questions_first():
    spaces = campaign.shipped_spaces()
    assert spaces[:5] == ["c_scaling", "c_ladder", "lognormal", "dropout", "curriculum"]
    assert set(spaces) >= {"ema_teacher", "metric", "noise_schedule", "weighting", "fourier_scale"}


def test_plan_compute_counts_runs_images_and_evaluations():
    plan = resolve_plan("weighting", "smoke", extra={"train.total_steps": 300, "eval.every": 150})
    (row,) = planning.plan_compute(plan)
    variants = len(plan.strata[0].variants)
    assert row["runs"] == variants * plan.seeds
    assert row["images"] == row["runs"] * 300 * row["cfg"].train.batch_size
    assert row["evals_per_run"] == 2  # steps 150 and 300
    plan = resolve_plan("weighting", "smoke", extra={"train.total_steps": 300, "eval.every": 200})
    assert planning.plan_compute(plan)[0]["evals_per_run"] == 2  # 200 and the final 300
    plan = resolve_plan("weighting", "smoke", extra={"train.total_steps": 300, "eval.every": 0})
    assert planning.plan_compute(plan)[0]["evals_per_run"] == 1  # only the final one


def test_estimate_seconds_is_steps_plus_evaluations_over_concurrency():
    plan = resolve_plan("weighting", "smoke", extra={"train.total_steps": 100, "eval.every": 50,
                                                      "eval.num_samples": 200, "train.batch_size": 32})
    (row,) = planning.plan_compute(plan)
    step_s = 0.1
    eval_s = (3 * 200 + 2 * 512) / 32 * step_s / 3
    expected = row["runs"] * (100 * step_s + 2 * eval_s) / 2
    assert planning.estimate_seconds(row, step_s, concurrent=2) == pytest.approx(expected)
    assert planning.estimate_seconds(row, 2 * step_s, concurrent=2) == pytest.approx(2 * expected)


def test_dry_run_states_the_compute_at_the_designs_cap():
    plan = resolve_plan("c_ladder", "cpu")
    rows = planning.plan_compute(plan)
    step_s = 0.01
    timings = {planning._cost_key(r["cfg"]): (step_s, "planted") for r in rows}
    lines, total = planning.compute_lines(plan, planning.resources(plan, 1, 0, None), timings)
    first = sum(planning.estimate_seconds(r, step_s, 2) for r in rows)
    assert total["runs"] == sum(r["runs"] for r in rows) == len(plan.strata) * 5 * plan.design.seeds_min
    assert total["cap_runs"] == plan.design.max_runs
    assert total["cap_seconds"] == pytest.approx(first * plan.design.max_runs / total["runs"])
    assert f"at most {plan.design.max_runs} run(s)" in lines[-1] and "about" in lines[-1]
    last = planning.total_line("campaign", total)
    assert f"at most {plan.design.max_runs} runs at the designs' caps" in last


def test_dry_run_prints_every_plan_and_a_measured_estimate(tmp_path, capsys):
    code = campaign.main(["--budget", "smoke", "--spaces", "weighting,noise_schedule", "--dry-run",
                          "--storage", str(tmp_path), *sum((["--set", s] for s in _tiny_set(tmp_path / "c")), [])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "==== weighting (smoke) ====" in out and "==== noise_schedule (smoke) ====" in out
    assert out.count("ms/step measured here") == 2
    runs = sum(planning.plan_compute(resolve_plan(s, "smoke", extra=dict(x.split("=", 1) for x in TINY_SET)))[0]["runs"]
               for s in ("weighting", "noise_schedule"))
    assert f"campaign: 2 search(es), {runs} runs, {runs * 40 * 16:,} images, about" in out
    assert not (tmp_path / "campaign-smoke").exists()  # a dry run writes nothing


def test_resume_refuses_a_changed_campaign(tmp_path):
    cdir = tmp_path / "campaign-smoke"
    cdir.mkdir()
    state = {**campaign._settings("smoke", ["weighting"], None, {}), "searches": {}}
    (cdir / campaign.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(campaign.CampaignError, match="exists; pass --resume"):
        campaign.run_campaign("smoke", ["weighting"], storage=tmp_path)
    with pytest.raises(campaign.CampaignError, match="spaces="):
        campaign.run_campaign("smoke", ["weighting", "metric"], storage=tmp_path, resume=True)
    with pytest.raises(campaign.CampaignError, match="extra="):
        campaign.run_campaign("smoke", ["weighting"], storage=tmp_path, resume=True, extra={"train.total_steps": 5})


def _in_process(main, args: list[str]) -> subprocess.CompletedProcess:
    """A command line's main(args) in this process, run to its end: what the finished subprocess would give."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.slow
def test_campaign_killed_in_its_second_search_resumes_to_the_report(tmp_path):
    storage = tmp_path / "results"
    cmd = [sys.executable, str(REPO / "tune" / "campaign.py"), "--budget", "smoke", "--spaces",
           "weighting,fourier_scale", "--storage", str(storage), "--name", "camp",
           *sum((["--set", s] for s in _tiny_set(storage / "featnet-cache")), [])]
    cdir = storage / "camp"
    second = cdir / "fourier_scale" / "trials.parquet"
    log = open(tmp_path / "driver.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            if second.exists() and len(pd.read_parquet(second)) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert second.exists(), "the second search recorded no run in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and the trial workers
        proc.wait()
    state = json.loads((cdir / campaign.STATE_FILE).read_text())
    assert state["searches"]["weighting"]["state"] == "done"
    assert state["searches"]["fourier_scale"]["state"] == "running"
    first_before = pd.read_parquet(cdir / "weighting" / "trials.parquet")
    second_before = pd.read_parquet(second)
    # tune/carry.py packs the finished search only; the unfinished one is to be started over.
    half = carry.pack(cdir, tmp_path / "carried-half")
    assert half["packed"] == ["weighting"] and "fourier_scale" in half["left"]
    assert not (tmp_path / "carried-half" / "fourier_scale").exists()
    half_state = json.loads((tmp_path / "carried-half" / campaign.STATE_FILE).read_text())
    assert half_state["searches"]["fourier_scale"]["state"] == "pending"
    assert half_state["searches"]["weighting"] == state["searches"]["weighting"]
    findings = storage / "findings" / "tiny"  # beside the campaign: the path a carried campaign.json may name
    with pytest.raises(ExportError, match="not finished.*fourier_scale.*--resume"):
        export_findings(cdir, findings)
    assert not findings.exists()

    done = _in_process(campaign.main, cmd[2:] + ["--resume", "--export", str(findings)])  # the restarted driver
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "weighting: done" in done.stdout and "skipped" in done.stdout
    assert "fourier_scale: resuming" in done.stdout
    state = json.loads((cdir / campaign.STATE_FILE).read_text())
    assert {s["state"] for s in state["searches"].values()} == {"done"} and state.get("finished")
    assert all(s["wall_s"] > 0 for s in state["searches"].values())
    # The finished search was not run again; the unfinished one kept its runs and completed the rest once.
    first_after = pd.read_parquet(cdir / "weighting" / "trials.parquet")
    assert first_after["trial_id"].tolist() == first_before["trial_id"].tolist()
    second_after = pd.read_parquet(second)
    plan = resolve_plan("fourier_scale", "smoke", extra=dict(x.split("=", 1) for x in TINY_SET))
    assert len(second_before) < len(second_after) == len(plan.strata[0].variants) * plan.seeds
    assert second_after["run_key"].is_unique and set(second_before["trial_id"]) <= set(second_after["trial_id"])
    report = (cdir / "report" / "report.md").read_text()
    assert "weighting" in report and "fourier_scale" in report

    # --export: the evidence, with no path of this machine, and a README naming both sessions' commands.
    for name, before in (("weighting", first_after), ("fourier_scale", second_after)):
        exported = pd.read_parquet(findings / name / "trials.parquet")
        assert exported["run_key"].tolist() == before["run_key"].tolist()
        assert len(pd.read_parquet(findings / name / "evals.parquet")) == len(pd.read_parquet(cdir / name / "evals.parquet"))
    assert (findings / "report" / "report.md").read_text().count("fourier_scale") == report.count("fourier_scale")
    readme = (findings / "README.md").read_text()
    assert readme.count("python tune/campaign.py --budget smoke") == 2 and "--resume --export" in readme
    assert f"`{state['sessions'][0]['git_commit']}`" in readme and "weighting" in readme
    assert not (findings / "weighting" / "runs").exists()  # run folders stay behind
    for path in findings.rglob("*"):
        if path.suffix in {".md", ".csv", ".json", ".log"}:
            assert str(cdir) not in path.read_text(), path
    for path in findings.rglob("*.parquet"):
        assert str(cdir) not in pd.read_parquet(path).astype(str).to_string(), path

    # The finished campaign packed whole: nothing in the packed folder names this machine's folders.
    packed = tmp_path / "carried"
    out = carry.pack(cdir, packed)
    assert sorted(out["packed"]) == ["fourier_scale", "weighting"] and out["left"] == []
    assert out["runs"] == len(first_after) + len(second_after)
    assert not list(packed.rglob(rundir.CHECKPOINTS)) and not list(packed.rglob("ray"))
    for path in packed.rglob("*"):
        if path.is_file() and path.suffix != ".png":
            text = path.read_text() if path.suffix != ".parquet" else pd.read_parquet(path).astype(str).to_string()
            assert str(tmp_path) not in text and str(REPO) not in text and "/tmp/ray" not in text, path
    with pytest.raises(carry.CarryError, match="would overwrite"):
        carry.pack(cdir, storage)  # the folder that holds the campaign
    with pytest.raises(carry.CarryError, match="exists"):
        carry.unpack(packed, cdir)

    # The half pack carried to a fresh folder (another machine, a later session): --resume skips the finished
    # search, starts the unfinished one over, and copies the carried runs it shares instead of training them.
    moved = tmp_path / "elsewhere" / "camp"
    carry.unpack(tmp_path / "carried-half", moved)
    assert len(reuse_index([moved])) == len(first_before[~first_before["reused"].fillna(False).astype(bool)]) > 0
    assert all(str(moved) in v["path"] for v in reuse_index([moved]).values())
    shutil.copytree(storage / "featnet-cache", moved.parent / "featnet-cache")  # the feature network, not retrained
    args = [a.replace(str(storage), str(moved.parent)) for a in cmd[2:]]
    again = _in_process(campaign.main, args + ["--resume"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "weighting: done" in again.stdout and "fourier_scale: starting" in again.stdout
    carried_first = pd.read_parquet(moved / "weighting" / "trials.parquet")
    assert carried_first["run_key"].tolist() == first_after["run_key"].tolist()
    redone = pd.read_parquet(moved / "fourier_scale" / "trials.parquet")
    assert sorted(redone["run_key"]) == sorted(second_after["run_key"])
    copied = redone[redone["reused"].fillna(False).astype(bool)]
    shared = set(first_after["run_key"]) & set(second_after["run_key"])
    assert set(copied["run_key"]) == shared and all(copied["reused_from"].str.startswith("weighting/"))
    def kinds(folder):  # a grid's name without its trial id, which a rerun changes
        return sorted(p.name.split("_best_")[0].split("_worst_")[0] for p in (folder / "report").rglob("*.png"))

    assert kinds(moved) == kinds(cdir)
    assert any("_best_" in p.name for p in (moved / "report").rglob("*.png"))  # sample grids from carried runs too
    assert "no samples/step_" not in (moved / "report" / "report.md").read_text()


def test_dry_run_of_a_gpu_budget_on_a_cpu_machine_counts_but_does_not_time(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the gpu budget is timed")
    assert campaign.main(["--budget", "gpu", "--spaces", "weighting", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "not timed here" in out and "no CUDA device" in out
    (row,) = planning.plan_compute(resolve_plan("weighting", "gpu"))
    assert (f"campaign: 1 search(es), {row['runs']} runs, {row['images']:,} images; 1 stratum(s) could not be "
            f"timed here") in out


def test_carry_refuses_what_is_not_a_campaign_or_a_pack(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert carry.main(["pack", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "holds no campaign.json" in capsys.readouterr().err and not (tmp_path / "out").exists()
    (tmp_path / "empty" / campaign.STATE_FILE).write_text("{}")
    assert carry.main(["unpack", str(tmp_path / "empty"), str(tmp_path / "camp")]) == 2
    assert "not a folder written by `tune/carry.py pack`" in capsys.readouterr().err
    assert not (tmp_path / "camp").exists()
