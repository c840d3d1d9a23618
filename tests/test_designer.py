"""The experiment designer (tune/designer.py): group-sequential boundaries, the per-claim test, Holm across claims,
rounds that add seeds only where a verdict is open, and the power figure, checked by simulation with planted data
through the designer's own functions (benchmarks/designer_power.py runs the same with more replications)."""
import math

import numpy as np
import pytest

from tune.design_plan import ClaimSpec, Design, detectable_effect, gaussian_trial, next_round, run_design
from tune.designer import (DECIDED, INCONCLUSIVE, OPEN, DesignError, _boundaries, claim_test, nominal_levels,
                           planned_looks, spent)


@pytest.mark.parametrize("fractions,spending", [((1 / 3, 2 / 3, 1.0), "obf"), ((0.3, 0.6, 1.0), "pocock"),
                                                ((0.2, 0.4, 0.6, 0.8, 1.0), "obf")])
def test_boundaries_spend_alpha_on_brownian_motion(fractions, spending):
    z = np.array(_boundaries(fractions, 0.05, spending))
    t = np.array(fractions)
    rng = np.random.default_rng(1)
    paths = (rng.standard_normal((200_000, len(t))) * np.sqrt(np.diff(np.r_[0, t]))).cumsum(axis=1) / np.sqrt(t)
    crossed = np.abs(paths) >= z
    assert abs(crossed.any(axis=1).mean() - 0.05) < 0.003
    first = crossed.argmax(axis=1)[crossed.any(axis=1)]
    # each look spends what the spending function says (first crossings at look k)
    for k in range(len(t)):
        want = spent(t[k], 0.05, spending) - (spent(t[k - 1], 0.05, spending) if k else 0.0)
        assert abs((first == k).mean() * crossed.any(axis=1).mean() - want) < 0.003
    assert spent(1.0, 0.05, spending) == pytest.approx(0.05)


def _family():
    # four declared claims of every kind; two contrasts share their baseline arm (trained once per seed)
    return [ClaimSpec("weighting", "paired", ("base", "uniform_w")), ClaimSpec("metric", "paired", ("base", "l2")),
            ClaimSpec("teacher", "unpaired", ("base_other", "ema")),
            ClaimSpec("curriculum", "ranking", ("exp", "sqrt", "linear", "cosine"))]


def _naive_rate(design, reps, rng):
    """The same rounds, but every look tested at the full 0.05 with no correction: the error the design avoids."""
    from tune.design_plan import claim_values

    bad = 0
    for _ in range(reps):
        table = {}
        trial = gaussian_trial({}, rng)
        for n in design.plan:
            for spec in _family():
                for a in spec.arms:
                    for s in range(n):
                        table.setdefault((a, s), trial(a, s))
                if claim_test(spec.kind, claim_values(spec, table, n), [n], n, 0.05).state == DECIDED:
                    bad += 1
                    break
            else:
                continue
            break
    return bad / reps


@pytest.mark.slow
@pytest.mark.parametrize("looks", [2, 3, 5])
def test_null_family_error_rate_holds_over_rounds(looks):
    """No claim true: the chance that any claim is decided, over all rounds, stays <= 5% (+ 3 simulation SEs)."""
    reps = 150
    design = Design(seeds_min=3, seeds_max=10, looks=looks)
    rng = np.random.default_rng(looks)
    false = sum(any(v.state == DECIDED for v in run_design(_family(), design, gaussian_trial({}, rng)).verdicts.values())
                for _ in range(reps))
    assert false / reps <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps)
    if looks == 5:  # the same rounds with every look at the full level and no Holm: far above 5%
        assert _naive_rate(design, 100, np.random.default_rng(7)) > 0.15


def test_planted_effects_are_decided_early_in_the_right_direction():
    design = Design(seeds_min=3, seeds_max=10, looks=3)
    rng = np.random.default_rng(3)
    reps, right, seeds = 60, 0, []
    for _ in range(reps):
        # the alternative arm is 2 seed-SDs worse (FD higher): paired difference base - l2 is -2
        res = run_design(_family(), design, gaussian_trial({"l2": 2.0}, rng))
        v = res.verdicts["metric"]
        right += v.state == DECIDED and v.direction == -1
        seeds.append(res.seeds["metric"])
        assert res.verdicts["weighting"].state != OPEN  # every claim ends decided or at seeds_max
        assert res.seeds["weighting"] == 10 or res.verdicts["weighting"].state == DECIDED
    assert right / reps > 0.8
    assert np.mean(seeds) < 10  # decided before seeds_max on average: seeds went where verdicts were open


def test_repeated_interval_covers_the_planted_effect():
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(300):
        d = -1.5 + rng.standard_normal(10)
        v = claim_test("paired", d, [3, 6, 10], 10, 0.05)
        covered += v.interval[0] <= -1.5 <= v.interval[1]
    assert covered / 300 >= 0.93


def test_next_round_adds_seeds_to_open_claims_only_within_the_cap():
    design = Design(seeds_min=3, seeds_max=9, looks=3, max_runs=14)
    specs = {"a": ("base", "x"), "b": ("base", "y"), "c": ("base", "z")}
    trained = {(arm, s) for arms in specs.values() for arm in arms for s in range(3)}  # 4 arms x 3 seeds = 12 runs
    from tune.designer import Verdict
    open_, done = (Verdict(OPEN, 0, 0.0, (-1, 1), 3, None, .05, .5, .01),
                   Verdict(DECIDED, -1, -2.0, (-3, -1), 3, 3, .05, .001, .01))
    verdicts = {"a": done, "b": open_, "c": open_}
    # b at 6 seeds needs base and y at seeds 3..5: 6 new runs, over the cap of 14 -> nothing moves
    assert next_round({"a": 3, "b": 3, "c": 3}, verdicts, design, specs, trained) == {"a": 3, "b": 3, "c": 3}
    wide = Design(seeds_min=3, seeds_max=9, looks=3, max_runs=21)
    # b costs 6 runs (18 total); c then needs only z's 3 (base is shared): 21
    assert next_round({"a": 3, "b": 3, "c": 3}, verdicts, wide, specs, trained) == {"a": 3, "b": 6, "c": 6}
    closed = Verdict(INCONCLUSIVE, 0, 0.0, (-1, 1), 9, None, .05, .5, .01)
    assert next_round({"a": 3, "b": 9, "c": 3}, {"a": done, "b": closed, "c": done}, wide, specs, trained) == \
        {"a": 3, "b": 9, "c": 3}


def test_run_design_trains_each_shared_run_once():
    calls = []
    rng = np.random.default_rng(0)
    inner = gaussian_trial({}, rng)

    def trial(arm, seed):
        calls.append((arm, seed))
        return inner(arm, seed)

    res = run_design(_family(), Design(seeds_min=3, seeds_max=3, looks=1), trial)
    assert len(calls) == len(set(calls)) == res.runs == 3 * 9  # base shared by two claims: 9 distinct arms


def test_detectable_effect_is_detected_with_80_percent_power():
    """Planted at exactly the figure the dry-run prints, a fixed design at seeds_max decides ~80% of the time."""
    sd, n, alpha = 2.0, 8, 0.05 / 4
    delta = detectable_effect(sd, n, alpha)
    rng = np.random.default_rng(11)
    hits = sum(claim_test("paired", delta + sd * rng.standard_normal(n), [n], n, alpha).state == DECIDED
               for _ in range(600))
    assert 0.74 <= hits / 600 <= 0.86
    assert detectable_effect(sd, 16, alpha) < delta  # more seeds detect less
    seq = detectable_effect(sd, n, alpha, looks=planned_looks(3, n, 3))
    assert seq > delta  # the last look's nominal level is below alpha


def test_bad_design_input_names_the_value():
    with pytest.raises(DesignError, match="seeds_min=1"):
        Design(seeds_min=1, seeds_max=5)
    with pytest.raises(DesignError, match="spending must be one of obf, pocock, got 'linear'"):
        Design(spending="linear")
    with pytest.raises(DesignError, match="max_runs must be an integer >= 1 or null, got 0"):
        Design(max_runs=0)
    with pytest.raises(DesignError, match="increasing"):
        nominal_levels([5, 3], 10)
    with pytest.raises(DesignError, match="claim kind must be one of"):
        claim_test("anova", [1.0, 2.0, 3.0], [3], 3)


# ---- claims in space files and power in the plan ---------------------------------------------------------------
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from tune.pilot import UNKNOWN, claim_spread, load_pilot, power_lines  # noqa: E402
from tune.search import main as search_main  # noqa: E402
from tune.space import load_space  # noqa: E402
from tune.space_schema import SPACE_DIR, SpaceError  # noqa: E402


def _space(tmp_path, **edit):
    tree = yaml.safe_load((SPACE_DIR / "weighting.yaml").read_text())
    tree.update(edit)
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_shipped_spaces_declare_claims_and_a_design():
    plan = load_space("fourier_scale").plan("cpu")
    assert [c.name for c in plan.claims] == ["fourier_scale:digits:0.2", "fourier_scale:digits:2.0",
                                             "fourier_scale:digits:16.0"]
    assert all(c.arms["a"] == 0.02 for c in plan.claims)
    assert plan.design.seeds_min == plan.seeds == 3 and plan.design.seeds_max > 3 and plan.design.max_runs
    assert load_space("weighting").plan("smoke").design is None  # the smoke budget stays a fixed, fast design
    dropout = load_space("dropout").plan("cpu")
    assert [(c.type, c.stratum, c.arms) for c in dropout.claims] == [
        ("optimum", "consistency-digits", {"a": None, "b": 0.0}), ("optimum", "diffusion-digits", {"a": None, "b": 0.0})]
    c_star = load_space("c_scaling").plan("cpu").claims[0]
    assert c_star.key == "loss.huber_c" and c_star.arms["b"] == pytest.approx(0.00054 * 8)


@pytest.mark.parametrize("claims,message", [
    ([{"name": "w", "type": "anova", "key": "loss.weighting"}], "claims[0].type"),
    ([{"name": "w", "type": "contrast", "key": "loss.weighting"}], "claims[0].paper: is required"),
    ([{"name": "w", "type": "contrast", "key": "loss.weighting", "paper": "huber"}], "claims[0].paper"),
    ([{"name": "w", "type": "optimum", "key": "network.dropout", "reference": 0.0}],
     "claims[0].key: a optimum claim needs a searched param"),
    ([{"name": "w", "type": "contrast", "key": "loss.weighting", "paper": "ict", "strata": ["mnist"]}],
     "claims[0].strata"),
    ([{"name": "w", "type": "contrast", "key": "loss.wieghting", "paper": "ict"}], "claims[0].key: must be a config key"),
    ([{"name": "w", "type": "contrast", "key": "loss.weighting", "paper": "ict", "at": {"loss.hubr_c": 0.1}}],
     "claims[0].at: keys must be config keys"),
    ([{"name": "w", "type": "contrast", "key": "loss.weighting", "paper": "ict", "at": {"loss.huber_c": "big"}}],
     "claims[0].at.loss.huber_c"),
    ([{"name": "w", "type": "ranking", "key": "loss.weighting", "at": {"loss.huber_c": 0.1}}],
     "claims[0].at: is a contrast's mapping"),
])
def test_bad_claims_fail_naming_the_value(tmp_path, claims, message):
    with pytest.raises(SpaceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_space(_space(tmp_path, claims=claims))


def test_bad_design_fails_before_any_cluster_work(tmp_path):
    budgets = {"cpu": {"num_samples": 1, "seeds_min": 5, "seeds_max": 3}}
    with pytest.raises(SpaceError, match="budgets.cpu.seeds_max: must be >= seeds_min 5, got 3"):
        load_space(_space(tmp_path, budgets=budgets)).plan("cpu")
    with pytest.raises(SpaceError, match="budgets.cpu.looks: needs seeds_min and seeds_max"):
        load_space(_space(tmp_path, budgets={"cpu": {"looks": 3}})).plan("cpu")
    with pytest.raises(SpaceError, match="needs claims"):
        load_space(_space(tmp_path, claims=[], budgets={"cpu": {"seeds_min": 3, "seeds_max": 6}})).plan("cpu")


def _pilot(tmp_path, diff_sd, seeds=6):
    """A planted pilot of the weighting space: per-seed difference ict - uniform with a known spread."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(seeds)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # exactly SD 1
    rows = []
    for s in range(seeds):
        base = 20 + 3 * rng.standard_normal()  # a seed effect shared by both arms: pairing removes it
        rows.append({"space": "weighting", "stratum": "digits", "config_id": "a", "seed": s, "status": "completed",
                     "loss.weighting": "ict", "final_fd": base + diff_sd * noise[s]})
        rows.append({"space": "weighting", "stratum": "digits", "config_id": "b", "seed": s, "status": "completed",
                     "loss.weighting": "uniform", "final_fd": base})
    folder = tmp_path / f"pilot{diff_sd}"
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "trials.parquet")
    return folder


def test_power_line_tracks_the_pilot_spread(tmp_path):
    plan = load_space("weighting").plan("cpu")
    claim = plan.claims[0]
    narrow, wide = load_pilot([_pilot(tmp_path, 1.5)]), load_pilot([_pilot(tmp_path, 3.0)])
    assert claim_spread(claim, narrow, "weighting", "final_fd")["sd"] == pytest.approx(1.5)
    d = plan.design
    want = detectable_effect(1.5, d.seeds_max, 0.05 / 7, looks=d.plan)
    line = power_lines(plan, narrow, family=7)[1]
    assert f"{want:.3g} FD" in line and "paired difference over 6 seeds" in line
    wide_line = power_lines(plan, wide, family=7)[1]
    assert f"{2 * want:.3g} FD" in wide_line  # twice the spread, twice the detectable effect
    assert UNKNOWN in power_lines(plan, load_pilot([]), family=7)[1]


def test_search_dry_run_prints_power_per_claim(tmp_path, capsys):
    assert search_main(["--space", "weighting", "--budget", "cpu", "--dry-run", "--storage", str(tmp_path),
                        "--pilot", str(_pilot(tmp_path, 2.0))]) == 0
    out = capsys.readouterr().out
    assert "design     claims start at 3 seeds" in out and "weighting:digits" in out and " FD (spread 2:" in out
    assert search_main(["--space", "weighting", "--budget", "cpu", "--dry-run", "--storage", str(tmp_path)]) == 0
    assert "unknown until a pilot" in capsys.readouterr().out
    assert search_main(["--space", "weighting", "--budget", "cpu", "--dry-run", "--storage", str(tmp_path),
                        "--pilot", str(tmp_path / "nothing")]) == 2
    assert "--pilot" in capsys.readouterr().err


# ---- rounds: from trials.parquet rows to claims ----------------------------------------------------------------
from tune.rounds import claim_arms, claim_data  # noqa: E402


def _rows(arms: dict, seeds: int, stratum="digits", key="loss.weighting"):
    rows = []
    for value, fds in arms.items():
        for s in range(seeds):
            rows.append({"stratum": stratum, "status": "completed", "seed": s, key: value, "final_fd": fds[s],
                         "config_id": f"{value}-{s // 2}"})  # a later round's trial id differs: same arm
    return pd.DataFrame(rows)


def test_claim_data_are_the_planted_per_seed_differences():
    plan = load_space("weighting").plan("cpu")
    ict, uni = [20.0, 21.0, 19.5, 22.0], [23.0, 22.5, 24.0, 21.0]
    trials = _rows({"ict": ict, "uniform": uni}, 4)
    found = claim_arms(plan.claims[0], trials, "final_fd")
    d = claim_data(plan.claims[0], found, [3], 8)
    assert d.looks == [3, 4] and list(d.values) == [a - b for a, b in zip(ict, uni)]


def test_optimum_arm_is_the_best_tested_value_against_the_reference():
    plan = load_space("dropout").plan("cpu")
    claim = plan.claims[0]  # consistency-digits: best dropout vs 0
    trials = _rows({0.0: [20, 21, 22], 0.3: [15, 16, 14], 0.5: [18, 18, 18]}, 3, stratum="consistency-digits",
                   key="network.dropout")
    found = claim_arms(claim, trials, "final_fd")
    d = claim_data(claim, found, [], 8)
    assert list(d.values) == [-5, -5, -8]  # 0.3 (the best) minus 0.0 (the reference), seed by seed
    ranking = load_space("curriculum").plan("cpu").claims[0]
    trials = _rows({"exponential": [3, 4, 5], "sqrt": [5, 6, 7], "linear": [1, 1, 1]}, 3, key="curriculum.shape")
    d = claim_data(ranking, claim_arms(ranking, trials, "final_fd"), [], 8)
    assert d.kind == "ranking" and d.values.shape == (3, 3)


def test_metric_claim_tests_pseudo_huber_at_the_papers_c_not_the_arm_a_tie_picks(tmp_path):
    """What the issue-22 cpu campaign hit: the metric space runs Pseudo-Huber at four c, all with 3 seeds; the
    contrast's paper arm was the one with the most seeds, the tie broken by name, i.e. c = 0.3, the c nearest L2.
    The designer grew c = 0.3 and L2 to 6 seeds while the report tested the paper's c (0.00432 at d = 64) at 3.
    With the space's `at: {loss.huber_c: paper}` the designer tests the report's arm."""
    claim = load_space("metric").plan("cpu").claims[0]
    assert claim.arms == {"a": "pseudo_huber", "a_at": {"loss.huber_c": pytest.approx(0.00054 * 8)}, "b": "l2"}
    paper_c = 0.00054 * 8
    fds = {0.003: [9.0, 9.5, 9.4], paper_c: [9.1, 9.6, 9.3], 0.03: [10.0, 10.5, 11.0], 0.3: [13.0, 12.5, 13.4]}
    rows = [_rows({"pseudo_huber": v}, 3, key="loss.metric").assign(**{"loss.huber_c": c}) for c, v in fds.items()]
    trials = pd.concat(rows + [_rows({"l2": [13.5, 13.0, 14.0]}, 3, key="loss.metric").assign(
        **{"loss.huber_c": paper_c})], ignore_index=True)
    d = claim_data(claim, claim_arms(claim, trials, "final_fd"), [], 6)
    assert list(d.values) == pytest.approx([9.1 - 13.5, 9.6 - 13.0, 9.3 - 14.0])
    # Without `at`, the tie between the four c goes to the name: c = 0.3, the arm the campaign grew.
    bare = type(claim)(claim.name, claim.type, claim.kind, claim.key, claim.stratum, {"a": "pseudo_huber", "b": "l2"})
    assert list(claim_data(bare, claim_arms(bare, trials, "final_fd"), [], 6).values) == pytest.approx(
        [13.0 - 13.5, 12.5 - 13.0, 13.4 - 14.0])
    # Arms an earlier look chose before the space pinned its paper arm (the campaign's c = 0.3 and L2) are not
    # grown again: the claim re-picks the paper's c.
    old = claim_arms(bare, trials, "final_fd")["arms"]
    assert list(claim_data(claim, claim_arms(claim, trials, "final_fd", fixed=old), [], 6).values) == pytest.approx(
        [9.1 - 13.5, 9.6 - 13.0, 9.3 - 14.0])
    # An `at` naming a configuration the space never runs fails when planned, naming it.
    tree = yaml.safe_load((SPACE_DIR / "metric.yaml").read_text())
    tree["claims"][0]["at"] = {"loss.huber_c": 0.5}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(SpaceError, match=r"stratum digits runs no configuration with loss.metric='pseudo_huber' and "
                                         r"\{'loss.huber_c': 0.5\}"):
        load_space(tmp_path / "m.yaml").plan("cpu")
    # So does an `at` on a range a sampled search draws from: no run would sit exactly at it.
    tree = yaml.safe_load((SPACE_DIR / "metric.yaml").read_text())
    tree.pop("points")
    tree["search"] = {"algorithm": "optuna_tpe"}
    tree["params"] = {"loss.metric": {"type": "choice", "values": ["pseudo_huber", "l2"]},
                      "loss.huber_c": {"type": "loguniform", "low": 0.001, "high": 0.3}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(SpaceError, match="stratum digits runs no configuration with"):
        load_space(tmp_path / "t.yaml").plan("cpu")


def test_the_metric_pilot_pairs_the_papers_c_with_l2_over_every_round_of_its_seeds():
    """A pilot whose arms the designer grew: L2's seeds 0-2 and 3-5 ran as two trials (two config_ids). The spread
    is the paired one of the paper's c against L2 (all of L2's seeds one arm), not c = 0.3's."""
    claim = load_space("metric").plan("cpu").claims[0]
    paper_c, rows = 0.00054 * 8, []
    planted = {("pseudo_huber", paper_c): [9.0, 10.0, 9.5], ("pseudo_huber", 0.3): [13.0, 12.0, 14.0, 13.0, 12.5, 13.5],
               ("l2", paper_c): [13.0, 13.2, 13.1, 13.3, 13.0, 13.4]}
    for (metric_name, c), fds in planted.items():
        for seed, fd in enumerate(fds):
            rows.append({"stratum": "digits", "status": "completed", "seed": seed, "final_fd": fd,
                         "loss.metric": metric_name, "loss.huber_c": c,
                         "config_id": f"{'b' if seed < 3 else 'a'}-{metric_name}-{c}"})  # round 2's id sorts first
    spread = claim_spread(claim, pd.DataFrame(rows), "metric", "final_fd")
    assert spread["how"] == "paired difference over 3 seeds"
    assert spread["sd"] == pytest.approx(np.std([9.0 - 13.0, 10.0 - 13.2, 9.5 - 13.1], ddof=1))


def test_the_best_arm_chosen_at_the_first_look_is_kept_when_its_later_seeds_regress():
    """What the cpu campaign's c_scaling search hit: round 1 picks 0.3 as the best dropout (3 seeds) and grows it
    and the reference to 6; its later seeds are worse, so re-picking by mean chose 0.1 (3 seeds), the claim's
    common seeds fell back to 3 and its look never grew. The first look's arms are kept."""
    plan = load_space("dropout").plan("cpu")
    claim = plan.claims[0]  # consistency-digits: best dropout vs 0
    first = _rows({0.0: [20, 21, 22], 0.1: [16, 16.5, 16], 0.3: [15, 16, 14]}, 3, stratum="consistency-digits",
                  key="network.dropout")
    found = claim_arms(claim, first, "final_fd")
    grown = pd.concat([first, _rows({0.0: [20, 21, 22, 21, 20, 22], 0.3: [15, 16, 14, 19, 18, 18]}, 6,
                                    stratum="consistency-digits", key="network.dropout").query("seed >= 3")])
    repicked = claim_data(claim, claim_arms(claim, grown, "final_fd"), [3], 6)
    assert repicked.looks == [3]  # 0.1 now has the lowest mean, with 3 seeds: the round's seeds are wasted
    kept = claim_data(claim, claim_arms(claim, grown, "final_fd", fixed=found["arms"]), [3], 6)
    assert kept.looks == [3, 6] and list(kept.values) == [-5, -5, -8, -2, -2, -4]
    # An arm that no longer has runs (all errored, say) is not forced: the arms are chosen again.
    assert claim_arms(claim, first, "final_fd", fixed=["gone"])["arms"] == found["arms"]


def test_campaign_dry_run_shows_every_shipped_claims_detectable_effect(tmp_path, capsys):
    """The shipped spaces at the cpu budget, with the CPU findings as the pilot: every declared claim gets a
    detectable effect, at Holm's share of the campaign's whole family."""
    from tune import campaign

    repo = SPACE_DIR.parent.parent
    assert campaign.main(["--budget", "cpu", "--dry-run", "--no-timing", "--storage", str(tmp_path),
                          "--pilot", str(repo / "docs" / "findings" / "cpu")]) == 0
    out = capsys.readouterr().out
    claims = [c.name for _, plan in campaign.plan_campaign(None, "cpu") for c in plan.claims]
    assert len(claims) >= 8
    family = f"alpha {0.05 / len(claims):.4g} (Holm's strictest share of {len(claims)} claim(s))"
    assert out.count(family) == sum(1 for _, p in campaign.plan_campaign(None, "cpu") if p.claims)
    piloted = {p.name for p in (repo / "docs" / "findings" / "cpu").iterdir() if (p / "trials.parquet").exists()}
    for space, plan in campaign.plan_campaign(None, "cpu"):
        for claim in plan.claims:
            line = next(x for x in out.splitlines() if x.strip().startswith(claim.name + " "))
            if plan.space in piloted:
                assert " FD (spread " in line, line
            else:  # a space the pilot never ran (c_ladder, new in issue 22) says so instead of guessing
                assert "unknown until a pilot" in line, line
