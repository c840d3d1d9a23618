"""What Optuna learns from a search: one value per configuration, pruned and diverged trials told as such.

Ray's OptunaSearch tells Optuna every intermediate result and, for a trial a scheduler stopped, its last
part-trained value as if complete. Here (docs/ARCHITECTURE.md, "What the searcher sees"):
- Optuna hears only a trial's final result (`final`: the mean over seeds of the metric, tune/trial.py);
- a trial stopped before its final result (ASHA) is told PRUNED, an errored one FAIL;
- a diverged configuration is told a finite value worse than every completed one so far, and is marked
  infeasible (an Optuna constraint > 0): TPE ranks it below every feasible trial, also those completing later,
  and Study.best_trial skips it;
- a trial retried after an error (`--resume`, resume_errored) that then completes is added as a new finished
  trial with its value (its first attempt stays FAIL);
- TPE starts after `startup_trials(num_samples)` configurations (Optuna's default, 10, exceeds most strata).

The study lives in the experiment folder (`journal_storage`: an Optuna journal file, one study per stratum named
"experiment/stratum"), so optuna-dashboard shows a running search's finished trials as they are told. A resumed
search never tells a trial twice: Ray restores the searcher from its last snapshot, and a trial the journal
already holds as finished (told after that snapshot) is not told again; trials asked after the snapshot, whose
Tune trials Ray no longer knows, are closed FAIL with the user attribute `orphaned` instead of staying RUNNING.
"""
from __future__ import annotations

import math

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ict_core.records import DIVERGED
from tune.startup import startup_trials

DIVERGED_ATTR = "diverged"
ORPHANED_ATTR = "orphaned"
RETRY_ATTR = "retry_of"  # the number of the FAIL trial a completed retry stands for
_FIRST_PENALTY = 1.0e6  # before any configuration completed; the constraint keeps the ranking right anyway


def make_sampler(seed: int, num_samples: int, points: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(num_samples, points))


def journal_storage(path):
    """An Optuna JournalStorage in the file `path` (created when absent); what optuna-dashboard PATH opens."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def study_exists(storage, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


class SeedMeanOptuna(OptunaSearch):
    """OptunaSearch that tells Optuna only final multi-seed values (see the module docstring). `study_attrs` are
    set as the study's user attributes (the experiment and stratum it belongs to)."""

    def __init__(self, *args, study_attrs: dict | None = None, **kwargs):
        self._study_attrs = dict(study_attrs or {})
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        for key, value in getattr(self, "_study_attrs", {}).items():
            self._ot_study.set_user_attr(key, value)

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        self._orphans_closed = False  # the snapshot predates trials asked since: close those on first use

    def _close_orphans(self) -> None:
        """Close RUNNING trials of the study that no Tune trial of this searcher will finish (asked by a driver
        that was killed after its last snapshot, or by an earlier Tune run of this stratum)."""
        import optuna

        if getattr(self, "_orphans_closed", False) or self._ot_study is None:
            return
        self._orphans_closed = True
        mine = {t._trial_id for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if frozen._trial_id not in mine:
                self._ot_study._storage.set_trial_user_attr(frozen._trial_id, ORPHANED_ATTR, True)
                self._ot_study.tell(frozen.number, None, state=optuna.trial.TrialState.FAIL)

    def suggest(self, trial_id: str):
        self._close_orphans()
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return  # intermediate values are one seed's part-trained FD: not what the searcher optimises

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        if isinstance(self._metric, list):  # a multi-objective searcher keeps its own metrics and modes
            metric, mode = self._metric, self._mode
        return super().set_search_properties(metric, mode, config, **spec)

    def _objectives(self) -> list[tuple[str, str]]:
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        modes = self._mode if isinstance(self._mode, list) else [self._mode] * len(metrics)
        return list(zip(metrics, modes))

    def _penalty(self, index: int = 0) -> float:
        """A finite value worse than every feasible completed trial's, for objective `index`."""
        import optuna

        mode = self._objectives()[index][1]
        done = [t.values[index] for t in self._ot_study.get_trials(deepcopy=False,
                                                                   states=(optuna.trial.TrialState.COMPLETE,))
                if t.values is not None and math.isfinite(t.values[index]) and not t.user_attrs.get(DIVERGED_ATTR)]
        if not done:
            return _FIRST_PENALTY if mode == "min" else -_FIRST_PENALTY
        worst = max(done) if mode == "min" else min(done)
        margin = max(1.0, abs(worst))
        return worst + margin if mode == "min" else worst - margin

    def _told(self, values: list, diverged: bool):
        """What Optuna is told: the value (one objective) or values, penalties in place of a diverged trial's."""
        if diverged:
            values = [self._penalty(i) for i in range(len(values))]
        values = [float(v) for v in values]
        return values if len(values) > 1 else values[0]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        State = optuna.trial.TrialState
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        self._close_orphans()
        final = bool(result and result.get("final"))
        values = [result.get(m) for m, _ in self._objectives()] if final else []
        diverged = final and (result.get("status") == DIVERGED
                              or any(v is None or not math.isfinite(v) for v in values))
        frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
        if trial_id in self._completed_trials or frozen.state.is_finished():
            # Told already: by this searcher, or (in the journal) by a driver killed after its last snapshot.
            self._completed_trials.add(trial_id)
            retried = any(t.user_attrs.get(RETRY_ATTR) == frozen.number for t in self._ot_study.get_trials(
                deepcopy=False, states=(State.COMPLETE,)))
            if final and frozen.state == State.FAIL and not frozen.user_attrs.get(ORPHANED_ATTR) and not retried:
                # a retried trial that now finished
                self._ot_study.add_trial(optuna.trial.create_trial(
                    params=frozen.params, distributions=frozen.distributions,
                    **{"values" if len(values) > 1 else "value": self._told(values, diverged)},
                    user_attrs={DIVERGED_ATTR: diverged, RETRY_ATTR: frozen.number},
                    constraints={DIVERGED_ATTR: 1.0 if diverged else -1.0}))
            return
        if error:
            self._ot_study.tell(ot_trial, None, state=State.FAIL)
        elif not final:
            self._ot_study.tell(ot_trial, None, state=State.PRUNED)
        elif diverged:
            ot_trial.set_user_attr(DIVERGED_ATTR, True)
            ot_trial.set_constraint(DIVERGED_ATTR, 1.0)  # > 0: infeasible, ranked below every feasible trial
            self._ot_study.tell(ot_trial, self._told(values, True))
        else:
            self._ot_study.tell(ot_trial, self._told(values, False))
        self._completed_trials.add(trial_id)


class RetryAwareLimiter(ConcurrencyLimiter):
    """ConcurrencyLimiter that passes on the completion of a trial it no longer tracks (one restored with
    resume_errored), so the searcher can learn its value; Ray's drops it."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live_trials and not self.batch:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
