"""Schedules of CT / iCT against hand-computed values (docs/ALGORITHM.md: Discretization, Curriculum, Noise-level
sampling)."""
import math

import pytest
import scipy.special
import torch

from ict_core import schedule
from ict_core.schedule import ema_teacher_mu, index_probs, karras_sigmas, loss_weight, num_points, sample_indices


# ---- karras_sigmas --------------------------------------------------------------------------------------------

def test_karras_endpoints_dtype_and_monotonic():
    for n in (2, 11, 1281):
        sigmas = karras_sigmas(n)
        assert sigmas.dtype == torch.float64 and sigmas.shape == (n,)
        assert sigmas[0].item() == 0.002 and sigmas[-1].item() == 80.0
        assert bool((sigmas[1:] > sigmas[:-1]).all())


def test_karras_interior_matches_formula():
    n, smin, smax, rho = 11, 0.002, 80.0, 7.0
    sigmas = karras_sigmas(n, smin, smax, rho)
    for i in range(1, n + 1):
        expected = (smin ** (1 / rho) + (i - 1) / (n - 1) * (smax ** (1 / rho) - smin ** (1 / rho))) ** rho
        assert sigmas[i - 1].item() == pytest.approx(expected, rel=1e-12)
    # rho = 1 is a linear grid.
    assert torch.allclose(karras_sigmas(5, 1.0, 5.0, 1.0), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_points": 1}, "num_points"),
    ({"num_points": 2.5}, "num_points"),
    ({"num_points": 5, "sigma_min": 0.0}, "sigma_min"),
    ({"num_points": 5, "sigma_min": 1.0, "sigma_max": 0.5}, "sigma_max must exceed"),
    ({"num_points": 5, "rho": -1.0}, "rho"),
])
def test_karras_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        karras_sigmas(**kwargs)


# ---- num_points: N(k) -----------------------------------------------------------------------------------------

def test_exponential_stage_edges_paper_run():
    total = 400_000  # K' = floor(400000 / (log2(128) + 1)) = 50000
    expected = {0: 11, 49_999: 11, 50_000: 21, 99_999: 21, 100_000: 41, 150_000: 81, 200_000: 161,
                250_000: 321, 300_000: 641, 349_999: 641, 350_000: 1281, 399_999: 1281, 400_000: 1281,
                10_000_000: 1281}
    for step, n in expected.items():
        assert num_points(step, total) == n, step


def test_exponential_non_power_of_two_ratio():
    # s1/s0 = 100/10 -> floor 10, log2(10) + 1 = 4.32..., K' = floor(1000 / 4.32) = 231
    assert num_points(230, 1000, "exponential", 10, 100) == 11
    assert num_points(231, 1000, "exponential", 10, 100) == 21
    assert num_points(3 * 231, 1000, "exponential", 10, 100) == 81
    assert num_points(4 * 231, 1000, "exponential", 10, 100) == 101  # capped at s1 + 1


def test_exponential_tiny_total_steps_guard():
    # K = 5 < 8 stages: K' would be 0; guarded to one stage per step, never a ZeroDivisionError.
    assert [num_points(k, 5) for k in range(7)] == [11, 21, 41, 81, 161, 321, 321]
    assert num_points(0, 1) == 11 and num_points(1, 1) == 21
    assert num_points(100, 1) == 21  # steps past K keep N(K)


def test_sqrt_curriculum_ct_values():
    # CT: s0 = 2, s1 = 150: N(0) = ceil(2 - 1) + 1 = 2, N(K) = ceil(151 - 1) + 1 = 151.
    assert num_points(0, 1000, "sqrt", 2, 150) == 2
    assert num_points(1000, 1000, "sqrt", 2, 150) == 151
    assert num_points(5000, 1000, "sqrt", 2, 150) == 151
    # k = K/2: sqrt(0.5 * (151^2 - 4) + 4) = sqrt(11404.5) = 106.79 -> ceil(105.79) + 1 = 107
    assert num_points(500, 1000, "sqrt", 2, 150) == 107
    # k = 1: sqrt(0.001 * 22797 + 4) = 5.1769 -> ceil(4.1769) + 1 = 6
    assert num_points(1, 1000, "sqrt", 2, 150) == 6


def test_constant_curriculum():
    assert {num_points(k, 100, "constant", 10, 40) for k in (0, 50, 100, 1000)} == {41}


def test_linear_square_cosine_edges_and_midpoints():
    s0, s1, total = 10, 1280, 100
    for shape in ("linear", "square", "cosine"):
        assert num_points(0, total, shape, s0, s1) == s0 + 1
        assert num_points(total, total, shape, s0, s1) == s1 + 1
        assert num_points(10 * total, total, shape, s0, s1) == s1 + 1
    # linear at k = 50: ceil(10 + 1270 * 0.5) + 1 = 646; at k = 1: ceil(10 + 12.7) + 1 = 24
    assert num_points(50, total, "linear", s0, s1) == 646
    assert num_points(1, total, "linear", s0, s1) == 24
    # square at k = 50: ceil(10 + 1270 * 0.25) + 1 = ceil(327.5) + 1 = 329
    assert num_points(50, total, "square", s0, s1) == 329
    # cosine at k = 50: g = 0.5 -> 646; at k = 25: g = (1 - cos(pi/4))/2 = 0.146447 -> ceil(195.99) + 1 = 197
    assert num_points(50, total, "cosine", s0, s1) == 646
    assert num_points(25, total, "cosine", s0, s1) == 197
    # Exact multiples stay exact: linear with s1 - s0 = K gives N = s0 + k + 1 (no float round-up).
    assert [num_points(k, 30, "linear", 10, 40) for k in (0, 7, 29, 30)] == [11, 18, 40, 41]


@pytest.mark.parametrize("shape", schedule.FIXED_CURRICULUM_SHAPES)
def test_curricula_monotone_and_bounded(shape):
    s0, s1, total = (2, 150, 997) if shape == "sqrt" else (10, 1280, 997)
    values = [num_points(k, total, shape, s0, s1) for k in range(0, total + 5)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert min(values) >= s0 and max(values) == s1 + 1


@pytest.mark.parametrize("args, match", [
    ((0, 100, "quadratic"), "exponential, sqrt, constant, linear, square, cosine"),
    ((-1, 100), "step"),
    ((0, 0), "total_steps"),
    ((0, 100, "linear", 20, 10), "s1 must be >= s0"),
    ((0, 100, "linear", 0, 10), "s0"),
])
def test_num_points_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        num_points(*args)


# ---- index_probs / sample_indices -----------------------------------------------------------------------------

def test_lognormal_probs_match_spec_list_for_n11():
    probs = index_probs(karras_sigmas(11))
    spec = [0.063, 0.182, 0.246, 0.214, 0.142, 0.081, 0.041, 0.020, 0.009, 0.004]
    assert probs.dtype == torch.float64 and probs.shape == (10,)
    # The spec rounds to 3 digits (0.21349 is listed as 0.214).
    assert torch.allclose(probs, torch.tensor(spec, dtype=torch.float64), atol=6e-4)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, p_mean, p_std", [(11, -1.1, 2.0), (1281, -1.1, 2.0), (41, 0.5, 0.7)])
def test_lognormal_probs_match_scipy_erf(n, p_mean, p_std):
    sigmas = karras_sigmas(n)
    t = (torch.log(sigmas).numpy() - p_mean) / (math.sqrt(2) * p_std)
    mass = scipy.special.erf(t[1:]) - scipy.special.erf(t[:-1])
    expected = torch.from_numpy(mass / mass.sum())
    assert torch.allclose(index_probs(sigmas, "lognormal", p_mean, p_std), expected, rtol=1e-9, atol=1e-15)


def test_lognormal_sign_of_p_mean_matters():
    # The README typo P_mean = +1.1 shifts mass to large sigma; -1.1 peaks at index 2 (sigma ~ 0.085-0.32).
    sigmas = karras_sigmas(11)
    assert int(index_probs(sigmas, p_mean=-1.1).argmax()) == 2
    assert int(index_probs(sigmas, p_mean=1.1).argmax()) > 2


def test_uniform_probs():
    probs = index_probs(karras_sigmas(21), "uniform")
    assert torch.equal(probs, torch.full((20,), 1 / 20, dtype=torch.float64))


def test_index_probs_bad_inputs():
    with pytest.raises(ValueError, match="lognormal, uniform"):
        index_probs(karras_sigmas(5), "gaussian")
    with pytest.raises(ValueError, match="ascending"):
        index_probs(karras_sigmas(5).flip(0))
    with pytest.raises(ValueError, match="at least 2"):
        index_probs(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="p_std"):
        index_probs(karras_sigmas(5), p_std=0.0)


def test_sample_indices_range_distribution_and_generator():
    probs = index_probs(karras_sigmas(11))
    gen = torch.Generator().manual_seed(0)
    idx = sample_indices(probs, 200_000, generator=gen)
    assert idx.dtype == torch.long and idx.shape == (200_000,)
    assert int(idx.min()) >= 0 and int(idx.max()) <= 9
    freq = torch.bincount(idx, minlength=10).double() / idx.numel()
    assert torch.allclose(freq, probs, atol=4e-3)
    # Same generator seed -> same draw (what lets all DDP ranks share the global batch's indices).
    again = sample_indices(probs, 200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    with pytest.raises(ValueError, match="batch_size"):
        sample_indices(probs, 0)


# ---- weights and EMA teacher rate -----------------------------------------------------------------------------

def test_loss_weight_ict_and_uniform():
    sigmas = karras_sigmas(11)
    w = loss_weight(sigmas[:-1], sigmas[1:], "ict")
    assert torch.allclose(w, 1.0 / (sigmas[1:] - sigmas[:-1]))
    assert w[0].item() == pytest.approx(1.0 / (0.016721 - 0.002), rel=1e-3)
    assert torch.equal(loss_weight(sigmas[:-1], sigmas[1:], "uniform"), torch.ones(10, dtype=torch.float64))
    assert loss_weight(1.0, 1.5) == 2.0
    # At N = 1281 the first weight is ~2.6e4 (why the loss stays in fp32).
    s = karras_sigmas(1281)
    assert 2e4 < loss_weight(s[0], s[1]).item() < 3e4
    with pytest.raises(ValueError, match="ict, uniform"):
        loss_weight(sigmas[:-1], sigmas[1:], "lpips")


def test_ema_teacher_mu_paper_form():
    assert ema_teacher_mu(2, 2, 0.9) == pytest.approx(0.9)  # CT: N(0) = s0 = 2 -> mu0
    assert ema_teacher_mu(151, 2, 0.9) == pytest.approx(math.exp(2 * math.log(0.9) / 151))
    # Not openai's N - 1 variant, which gives 0.81 at N = 2.
    assert ema_teacher_mu(2, 2, 0.9) != pytest.approx(math.exp(2 * math.log(0.9) / 1))
    assert ema_teacher_mu(11, 10, 0.0) == 0.0
    with pytest.raises(ValueError, match="mu0"):
        ema_teacher_mu(11, 10, 1.0)
    with pytest.raises(ValueError, match="num_points"):
        ema_teacher_mu(0, 10)


# ---- Curriculum: fixed shapes and the adaptive one ------------------------------------------------------------

def _feed(curriculum, losses, every):
    """Observe losses[j] at step (j + 1) * every; returns the steps at which N doubled."""
    doubled = []
    for j, loss in enumerate(losses):
        step = (j + 1) * every
        if curriculum.observe(step, loss):
            doubled.append(step)
    return doubled


@pytest.mark.parametrize("shape", schedule.FIXED_CURRICULUM_SHAPES)
def test_curriculum_fixed_shapes_equal_num_points_and_ignore_the_loss(shape):
    c = schedule.Curriculum(shape, 2, 150, total_steps=1000)
    assert not c.adaptive
    assert [c.observe(s, 1.0) for s in range(0, 1000, 10)] == [False] * 100
    assert [c.num_points(k) for k in range(0, 1100, 37)] == [num_points(k, 1000, shape, 2, 150) for k in range(0, 1100, 37)]


def test_adaptive_flat_signal_doubles_after_the_patience_window_until_s1():
    every, window, patience = 10, 5, 3
    c = schedule.Curriculum("adaptive", 10, 80, total_steps=10_000, every=every, window=window, patience=patience,
                            threshold=0.02)
    assert c.every == every and c.num_points(0) == 11
    doubled = _feed(c, [2.0] * 100, every)
    # A stage needs `window` observations before its first test, then `patience` stalled tests in a row.
    stage = (window + patience - 1) * every
    assert doubled == [stage, 2 * stage, 3 * stage]  # 11 -> 21 -> 41 -> 81 = s1 + 1, then no more
    assert c.stage_starts == [0, stage, 2 * stage, 3 * stage]
    assert [c.num_points(k) for k in (0, stage - 1, stage, 2 * stage - 1, 2 * stage, 3 * stage, 10**6)] == \
        [11, 11, 21, 21, 41, 81, 81]


def test_adaptive_falling_signal_keeps_n_and_a_stalling_one_doubles_when_it_flattens():
    every = 10
    c = schedule.Curriculum("adaptive", 10, 1280, total_steps=10_000, every=every, window=8, patience=2,
                            threshold=0.02)
    # ln L falls by 0.01 per observation: 0.07 over a window of 8, above the 0.02 threshold.
    falling = [3.0 * math.exp(-0.01 * j) for j in range(300)]
    assert _feed(c, falling, every) == []
    assert c.num_points(10**6) == 11
    # Then it flattens: 0.002 per observation is 0.014 over the window, below the threshold.
    c2 = schedule.Curriculum("adaptive", 10, 1280, total_steps=10_000, every=every, window=8, patience=2,
                             threshold=0.02)
    curve = falling[:50] + [falling[49] * math.exp(-0.002 * j) for j in range(1, 50)]
    doubled = _feed(c2, curve, every)
    assert len(doubled) >= 1 and doubled[0] > 50 * every
    # A rising loss has not improved either.
    c3 = schedule.Curriculum("adaptive", 10, 1280, total_steps=10_000, every=every, window=4, patience=1)
    assert _feed(c3, [1.0 + 0.1 * j for j in range(4)], every) == [4 * every]


def test_adaptive_compares_within_a_stage_only():
    """The loss jumps when N doubles (the iCT loss changes scale); the window restarts, so a jump followed by a
    steady fall does not count as a stall, and the old stage's values do not enter the new stage's slope."""
    every, window = 10, 4
    c = schedule.Curriculum("adaptive", 10, 1280, total_steps=10_000, every=every, window=window, patience=1)
    assert _feed(c, [1.0] * window, every) == [window * every]
    assert c.recent == [] and c.stalls == 0
    # New stage: loss at 3x the old scale, falling 5% per observation -> never stalled.
    for j in range(50):
        assert not c.observe((window + 1 + j) * every, 3.0 * math.exp(-0.05 * j))
    assert c.num_points(10**6) == 21


def test_adaptive_noisy_plateau_vs_noisy_fall():
    """Planted noisy signals: a plateau with 3% noise doubles N; a fall of 2% per observation with the same noise
    keeps N within the first 60 observations (the defaults: window=20, patience=5, threshold=0.1)."""
    g = torch.Generator().manual_seed(0)
    noise = (0.03 * torch.randn(60, generator=g, dtype=torch.float64)).exp().tolist()
    plateau = schedule.Curriculum("adaptive", 10, 1280, total_steps=4000, every=10)
    assert len(_feed(plateau, [2.0 * n for n in noise], 10)) >= 1
    falling = schedule.Curriculum("adaptive", 10, 1280, total_steps=4000, every=10)
    assert _feed(falling, [2.0 * math.exp(-0.02 * j) * n for j, n in enumerate(noise)], 10) == []


def test_adaptive_ignores_non_finite_losses_and_state_round_trips():
    c = schedule.Curriculum("adaptive", 10, 1280, total_steps=1000, every=5, window=3, patience=2)
    assert not c.observe(5, float("nan")) and not c.observe(10, float("inf")) and not c.observe(15, 0.0)
    assert c.recent == []
    losses = [1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    _feed(c, losses[:6], 5)
    copy = schedule.Curriculum("adaptive", 10, 1280, total_steps=1000, every=5, window=3, patience=2)
    copy.load_state_dict(c.state_dict())
    rest_a = [c.observe((7 + j) * 5, v) for j, v in enumerate(losses[6:])]
    rest_b = [copy.observe((7 + j) * 5, v) for j, v in enumerate(losses[6:])]
    assert rest_a == rest_b and any(rest_a) and c.state_dict() == copy.state_dict()
    with pytest.raises(ValueError, match="shape 'exponential'"):
        schedule.Curriculum("adaptive").load_state_dict({**c.state_dict(), "shape": "exponential"})


def test_adaptive_every_defaults_to_a_two_hundredth_of_the_run():
    assert schedule.Curriculum("adaptive", total_steps=400_000).every == 2000
    assert schedule.Curriculum("adaptive", total_steps=50).every == 1
    assert schedule.Curriculum("adaptive", total_steps=50, every=7).every == 7


def test_stalled_is_the_fitted_drop_of_ln_loss():
    # Exact line: ln L = 1 - 0.01 j over 5 points drops 0.04.
    line = [1.0 - 0.01 * j for j in range(5)]
    assert not schedule.stalled(line, 0.039) and schedule.stalled(line, 0.041)
    # A single outlier moves the least-squares slope by a bounded amount, not to the last value.
    assert schedule.stalled([0.0, 0.0, 0.0, 0.0, -0.01], 0.02)
    with pytest.raises(ValueError, match="at least 2"):
        schedule.stalled([1.0], 0.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"shape": "zigzag"}, "adaptive"),
    ({"shape": "adaptive", "window": 1}, "window"),
    ({"shape": "adaptive", "patience": 0}, "patience"),
    ({"shape": "adaptive", "every": -1}, "every"),
    ({"shape": "adaptive", "threshold": float("nan")}, "threshold"),
    ({"shape": "adaptive", "s0": 20, "s1": 10}, "s1 must be >= s0"),
])
def test_curriculum_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        schedule.Curriculum(**kwargs)


def test_num_points_refuses_the_stateful_adaptive_shape():
    with pytest.raises(ValueError, match="schedule.Curriculum"):
        num_points(0, 100, "adaptive")


def test_curriculum_from_config_reads_every_adaptive_key():
    from ict_core.config import ConfigError, load_config

    cfg = load_config(overrides={"curriculum.shape": "adaptive", "curriculum.adaptive_every": 3,
                                 "curriculum.adaptive_window": 4, "curriculum.adaptive_patience": 5,
                                 "curriculum.adaptive_threshold": 0.1})
    c = schedule.curriculum_from_config(cfg.curriculum, cfg.train.total_steps)
    assert (c.shape, c.every, c.window, c.patience, c.threshold) == ("adaptive", 3, 4, 5, 0.1)
    with pytest.raises(ConfigError, match="curriculum.adaptive_window"):
        load_config(overrides={"curriculum.adaptive_window": 1})
