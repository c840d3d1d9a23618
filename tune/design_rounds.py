"""The designer's later rounds of a search (tune/designer.py decides, tune/rounds.py finds each claim's arms and
data): after the strata's first round, test every declared claim, then train only the open claims' arms up to
their next look, every round's Tuners fitted at the same time (tune/tuners.py). tune/launch.py calls it."""
from __future__ import annotations

from pathlib import Path

from ict_core.records import ERRORED, INTERRUPTED, TRIALS_FILE
from tune.space_schema import Plan
from tune.experiment_folder import ExperimentFolder


def design_rounds(ctx, exp: ExperimentFolder, info: dict, say, share: float, fresh_index, write) -> str:
    """The design's later rounds (tune/designer.py, tune/rounds.py): test every declared claim on the runs so far
    (Holm over the claims, group-sequential per claim), then train only the arms of the claims still open, up to
    their next planned look, earlier seeds copied (tune/reuse.py), until no claim moves. Its state lives in
    experiment.json's `design` (looks per claim, decided claims, verdicts, the pending round), so --resume
    continues an interrupted round. `share` scales alpha (a campaign splits it between its searches by their
    number of claims). `write(exp, info)` writes experiment.json (tune/launch.py). Returns "finished",
    INTERRUPTED or ERRORED."""
    state = info.setdefault("design", {})
    state.setdefault("looks", {})
    state.setdefault("decided", [])
    state.setdefault("round", 1)
    while True:
        pending = state.get("pending")
        if pending is None:
            pending = _next_round(ctx.plan, ctx.exp_dir, state, share, say)
            info["design"] = state
            if pending is None:
                write(exp, info)
                return "finished"
            state["pending"] = pending
            write(exp, info)
        ctx.index = fresh_index()  # the runs of the rounds before are copied, not trained again
        ended = _fit_round(ctx, exp, pending, say)
        if ended:
            return ended
        state["round"] = pending["round"]
        state["pending"] = None
        info["design"] = state
        write(exp, info)


def _next_round(plan: Plan, exp_dir: Path, state: dict, share: float, say) -> dict | None:
    """The claims' verdicts on the runs so far (into `state`) and the next round's jobs (the open claims' arms,
    each to its next look's seeds), or None when no claim gets more seeds."""
    import pandas as pd

    from tune.design_plan import next_round
    from tune.designer import DECIDED, holm_verdicts
    from tune.rounds import UNTESTABLE, claim_arms, claim_data, signatures, verdict_record

    design, metric = plan.design, f"final_{plan.metric}"
    trials = pd.read_parquet(exp_dir / TRIALS_FILE)
    arms, data = {}, []
    chosen = state.setdefault("arms", {})  # each claim's arms as its first look chose them (claim_arms)
    for claim in plan.claims:
        found = claim_arms(claim, trials, metric, plan.mode, fixed=chosen.get(claim.name))
        if found:
            chosen[claim.name] = list(found["arms"])
        d = claim_data(claim, found, state["looks"].get(claim.name, []), design.seeds_max,
                       plan.mode) if found else None
        if d is not None:
            arms[claim.name] = found
            data.append(d)
    verdicts = holm_verdicts(data, design.alpha * share, design.spending, state["decided"])
    state["looks"].update({d.name: d.looks for d in data})
    state["decided"] = [k for k, v in verdicts.items() if v.state == DECIDED]
    state["verdicts"] = {c.name: verdict_record(verdicts[c.name]) if c.name in verdicts
                         else {"state": UNTESTABLE} for c in plan.claims}
    say(f"design round {state['round']}: " + "; ".join(
        f"{k} {v['state']}" + (f" at {v['seeds']} seeds" if "seeds" in v else "")
        for k, v in state["verdicts"].items()))
    trained = set(zip(signatures(trials), trials["seed"].astype(int)))
    seeds_now = {d.name: d.looks[-1] for d in data}
    targets = next_round(seeds_now, verdicts, design, {k: a["arms"] for k, a in arms.items()}, trained)
    grow = {k: t for k, t in targets.items() if t > seeds_now[k]}
    if not grow:
        return None
    jobs = _round_jobs(plan, grow, arms)
    return {"round": state["round"] + 1, "jobs": list(jobs.values()),
            "strata": sorted({j["stratum"] for j in jobs.values()})}


def _round_jobs(plan: Plan, grow: dict, arms: dict) -> dict:
    """{(stratum, arm signature): {stratum, overrides, target seeds}} of the claims that grow."""
    from ict_core.config import coerce

    by_name = {c.name: c for c in plan.claims}
    jobs: dict = {}
    for claim_name, target in grow.items():
        claim = by_name[claim_name]
        stratum = next(s for s in plan.strata if s.name == claim.stratum)
        keys = list(plan.params) + [k for v in stratum.variants for k in v if k not in plan.params]
        for sig in arms[claim_name]["arms"]:
            row = arms[claim_name]["overrides"][sig]
            overrides = {k: coerce(k, row[k].item() if hasattr(row[k], "item") else row[k])
                         for k in dict.fromkeys(keys) if k in row.index and row[k] is not None
                         and not (isinstance(row[k], float) and row[k] != row[k])}
            old = jobs.get((claim.stratum, sig))
            jobs[(claim.stratum, sig)] = {"stratum": claim.stratum, "overrides": overrides,
                                          "target": max(target, old["target"] if old else 0)}
    return jobs


def _fit_round(ctx, exp: ExperimentFolder, pending: dict, say) -> str | None:
    """Train one design round: a grid Tuner per (stratum, target seeds), all at the same time; None when every
    one finished, else INTERRUPTED or ERRORED."""
    from ray import tune as rt
    from ray.tune.search import BasicVariantGenerator

    from tune.tuners import StratumJob, fit_strata, shared_concurrency, stratum_outcome

    groups: dict = {}
    for job in pending["jobs"]:
        groups.setdefault((job["stratum"], int(job["target"])), []).append(job["overrides"])
    ctx.per_tuner = shared_concurrency(ctx.res, len(groups))
    jobs = []
    for (stratum_name, target), variants in sorted(groups.items()):
        stratum = next(s for s in ctx.plan.strata if s.name == stratum_name)
        job = StratumJob(stratum, f"{stratum_name}-round{pending['round']}-{target}seeds", target,
                         planned=len(variants))
        say(f"design round {pending['round']}: {stratum_name}, {len(variants)} configuration(s) to {target} seeds")
        if not rt.Tuner.can_restore(f"{ctx.ray_dir}/{job.tune_name}"):
            job.param_space = {"variant": rt.grid_search(variants)}
            job.search_alg = BasicVariantGenerator(max_concurrent=ctx.per_tuner)
        jobs.append(job)
    interrupted = fit_strata(ctx, jobs, say)
    exp.push()
    outcomes = [stratum_outcome(ctx.exp_dir, job.tune_name) for job in jobs]
    if interrupted or any(o["interrupted"] for o in outcomes):
        return INTERRUPTED
    if any(o["errored"] for o in outcomes):
        return ERRORED
    return None
