"""What Optuna learns (tune/searcher.py): final multi-seed values only, pruned and diverged trials told as such,
a retried trial's value, and TPE startup sized to the budget. Real Optuna, planted trial results."""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.samplers._tpe.sampler import _split_trials
from ray import tune as rt

from tune.search import main as search_main
from tune.searcher import DIVERGED_ATTR, RetryAwareLimiter, SeedMeanOptuna, make_sampler
from tune.startup import describe_search, startup_trials

State = optuna.trial.TrialState


def test_startup_trials_fit_the_budget():
    assert startup_trials(3, 1) == 2  # smoke: the paper's point, one random draw, then TPE
    assert startup_trials(12, 1) == 4
    assert startup_trials(24, 1) == 8
    assert startup_trials(100, 0) == 10  # Optuna's default is the ceiling
    assert startup_trials(2, 2) == 2 and startup_trials(1, 0) == 1
    assert startup_trials(5, 4) == 4  # the given points always run before TPE
    for n in range(3, 40):
        assert 2 <= startup_trials(n) < n  # TPE always gets a turn
    assert describe_search(12, 1) == "1 given point, 3 random, then 8 TPE"
    assert describe_search(2, 2) == "2 given points, 0 random, then 0 TPE"  # was "2 random (2 given points)"
    assert describe_search(12, 0) == "4 random, then 8 TPE"


def test_dry_run_says_how_many_trials_are_random(capsys):
    assert search_main(["--space", "c_scaling", "--budget", "cpu", "--dry-run", "--no-timing"]) == 0
    out = capsys.readouterr().out
    assert "1 given point, " in out and "random, then" in out and " TPE" in out


def _searcher(num_samples=8):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = SeedMeanOptuna(space={"loss.huber_c": rt.loguniform(1e-4, 1.0)}, metric="fd", mode="min",
                              sampler=make_sampler(0, num_samples, 0))
    return searcher


def _frozen(searcher, trial_id):
    return searcher._ot_study._storage.get_trial(searcher._ot_trials[trial_id]._trial_id)


def test_optuna_hears_final_means_pruned_and_diverged_trials_as_such():
    searcher = _searcher()
    for t in ("best", "stopped", "diverged", "worse", "broken"):
        assert searcher.suggest(t)["loss.huber_c"] > 0
    # Intermediate one-seed values are not told.
    searcher.on_trial_result("best", {"fd": 100.0, "trial_step": 20, "final": False, "training_iteration": 1})
    searcher.on_trial_complete("best", {"fd": 5.0, "final": True, "status": "completed"})
    assert _frozen(searcher, "best").intermediate_values == {}
    assert (_frozen(searcher, "best").state, _frozen(searcher, "best").value) == (State.COMPLETE, 5.0)
    # ASHA stopped this one after its first seed's first rung: pruned, not a complete value.
    searcher.on_trial_complete("stopped", {"fd": 1.0, "final": False, "status": "running"})
    assert _frozen(searcher, "stopped").state == State.PRUNED
    # A diverged configuration: finite, worse than every completed value, and infeasible.
    searcher.on_trial_complete("diverged", {"fd": math.nan, "final": True, "status": "diverged"})
    diverged = _frozen(searcher, "diverged")
    assert diverged.state == State.COMPLETE and math.isfinite(diverged.value) and diverged.value > 5.0
    assert diverged.user_attrs[DIVERGED_ATTR] and diverged.constraints and max(diverged.constraints.values()) > 0
    # A configuration completing later with a value above the penalty still ranks above the diverged one.
    searcher.on_trial_complete("worse", {"fd": 10 * diverged.value, "final": True, "status": "completed"})
    searcher.on_trial_complete("broken", None, error=True)
    assert _frozen(searcher, "broken").state == State.FAIL
    study = searcher._ot_study
    assert study.best_trial.value == 5.0
    finished = study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED))
    below, above = _split_trials(study, finished, n_below=2)
    assert {t.value for t in below if t.state == State.COMPLETE} == {5.0, 10 * diverged.value}
    assert diverged.number in {t.number for t in above}


def test_a_trial_retried_after_an_error_reaches_optuna():
    searcher = RetryAwareLimiter(_searcher(), max_concurrent=2)
    params = searcher.suggest("t")
    searcher.on_trial_complete("t", None, error=True)
    # Tune restores the trial (resume_errored): the limiter no longer tracks it; its completion must still count.
    searcher.on_trial_complete("t", {"fd": 7.0, "final": True, "status": "completed"})
    study = searcher.searcher._ot_study
    states = sorted((t.state.name, t.value) for t in study.get_trials(deepcopy=False))
    assert states == [("COMPLETE", 7.0), ("FAIL", None)]
    retried = [t for t in study.get_trials(deepcopy=False) if t.state == State.COMPLETE][0]
    assert retried.params["loss.huber_c"] == params["loss.huber_c"]


def test_every_shipped_asha_rung_lies_within_the_first_seed():
    """trial_step is the first seed's step (tune/trial.py), so a rung beyond train.total_steps would judge nothing
    and one at or below it compares first seeds at the same step; no budget may place a rung in a later seed."""
    from tune.tuners import scheduler as stratum_scheduler
    from tune.space import load_space
    from tune.space_schema import BUDGETS, list_spaces
    from tune.trial import tune_result

    checked = 0
    for name in list_spaces():
        for budget in BUDGETS:
            plan = load_space(name).plan(budget)
            for stratum in plan.strata:
                scheduler = stratum_scheduler(plan, stratum)
                if scheduler is None:
                    continue
                total = stratum.fixed["train.total_steps"]
                milestones = [m for bracket in scheduler._brackets for m, _ in bracket._rungs]
                assert milestones and max(milestones) <= total, (name, budget, milestones, total)
                checked += 1
    assert checked >= 8
    # What a later seed reports sits at total_steps: past every rung, so ASHA has already decided.
    late = tune_result({"step": 10, "fd": 1.0, "status": "running"}, seed_index=2, seed=2, total_steps=3000,
                       metric="fd")
    first = tune_result({"step": 1000, "fd": 1.0, "status": "running"}, seed_index=0, seed=0, total_steps=3000,
                        metric="fd")
    assert (late["trial_step"], first["trial_step"]) == (3000, 1000)
    diverged = tune_result({"step": 700, "fd": float("nan"), "status": "diverged"}, seed_index=0, seed=0,
                           total_steps=3000, metric="fd")
    assert diverged["trial_step"] == 3000 and diverged["step"] == 700


def test_a_journal_study_survives_a_restore_without_telling_anything_twice(tmp_path):
    """Ray restores the searcher from its last snapshot (tune/searcher.py): a trial told after the snapshot is not
    told again, one asked after it (its Tune trial is gone) is closed FAIL as orphaned, and the dashboard reads it."""
    from tune.searcher import ORPHANED_ATTR, journal_storage

    path = tmp_path / "optuna_journal.log"

    def searcher():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = SeedMeanOptuna(metric="fd", mode="min", sampler=make_sampler(0, 8, 0),
                           storage=journal_storage(path), study_name="e/only",
                           study_attrs={"experiment": "e", "stratum": "only"})
        s.set_search_properties("fd", "min", {"loss.huber_c": rt.loguniform(1e-4, 1.0)})
        return s

    first = searcher()
    for t in ("a", "b", "c"):
        first.suggest(t)
    first.on_trial_complete("a", {"fd": 5.0, "final": True, "status": "completed"})
    first.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot before the kill
    first.suggest("d")  # asked after the snapshot: Ray will not know this trial
    first.on_trial_complete("b", {"fd": 4.0, "final": True, "status": "completed"})  # told after the snapshot

    again = searcher()  # the resumed driver: a fresh searcher, then Ray's restore
    again.restore(str(tmp_path / "snapshot.pkl"))
    again.on_trial_complete("b", {"fd": 4.0, "final": True, "status": "completed"})  # b runs again; told once
    again.on_trial_complete("c", {"fd": 3.0, "final": True, "status": "completed"})
    again.suggest("e")
    study = optuna.load_study(study_name="e/only", storage=journal_storage(path))  # what a dashboard reads
    states = [(t.state, t.value, bool(t.user_attrs.get(ORPHANED_ATTR))) for t in study.trials]
    assert states == [(State.COMPLETE, 5.0, False), (State.COMPLETE, 4.0, False), (State.COMPLETE, 3.0, False),
                      (State.FAIL, None, True), (State.RUNNING, None, False)]
    assert study.user_attrs == {"experiment": "e", "stratum": "only"}

    # optuna-dashboard (the `dashboard` extra) serves the same study from the same file.
    import io
    from wsgiref.util import setup_testing_defaults

    dashboard = pytest.importorskip("optuna_dashboard")
    environ = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET", "wsgi.errors": io.StringIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(dashboard.wsgi(journal_storage(path))(environ, lambda s, h, e=None: status.append(s)))
    assert status[0].startswith("200") and b"e/only" in body, environ["wsgi.errors"].getvalue()[-2000:]
