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
"""
from __future__ import annotations

import math

from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ict_core.records import DIVERGED
from tune.space import startup_trials

DIVERGED_ATTR = "diverged"
_FIRST_PENALTY = 1.0e6  # before any configuration completed; the constraint keeps the ranking right anyway


def make_sampler(seed: int, num_samples: int, points: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(num_samples, points))


class SeedMeanOptuna(OptunaSearch):
    """OptunaSearch that tells Optuna only final multi-seed values (see the module docstring)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return  # intermediate values are one seed's part-trained FD: not what the searcher optimises

    def _penalty(self) -> float:
        import optuna

        done = [t.value for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value) and not t.user_attrs.get(DIVERGED_ATTR)]
        if not done:
            return _FIRST_PENALTY if self._mode == "min" else -_FIRST_PENALTY
        worst = max(done) if self._mode == "min" else min(done)
        margin = max(1.0, abs(worst))
        return worst + margin if self._mode == "min" else worst - margin

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        State = optuna.trial.TrialState
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        final = bool(result and result.get("final"))
        value = result.get(self._metric) if final else None
        diverged = final and (result.get("status") == DIVERGED or value is None or not math.isfinite(value))
        if trial_id in self._completed_trials:
            frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
            if final and frozen.state == State.FAIL:  # a retried trial that now finished
                self._ot_study.add_trial(optuna.trial.create_trial(
                    params=frozen.params, distributions=frozen.distributions,
                    value=self._penalty() if diverged else float(value),
                    user_attrs={DIVERGED_ATTR: diverged}, constraints={DIVERGED_ATTR: 1.0 if diverged else -1.0}))
            return
        if error:
            self._ot_study.tell(ot_trial, None, state=State.FAIL)
        elif not final:
            self._ot_study.tell(ot_trial, None, state=State.PRUNED)
        elif diverged:
            ot_trial.set_user_attr(DIVERGED_ATTR, True)
            ot_trial.set_constraint(DIVERGED_ATTR, 1.0)  # > 0: infeasible, ranked below every feasible trial
            self._ot_study.tell(ot_trial, self._penalty())
        else:
            self._ot_study.tell(ot_trial, float(value))
        self._completed_trials.add(trial_id)


class RetryAwareLimiter(ConcurrencyLimiter):
    """ConcurrencyLimiter that passes on the completion of a trial it no longer tracks (one restored with
    resume_errored), so the searcher can learn its value; Ray's drops it."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live_trials and not self.batch:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
