"""Noise levels, curricula N(k), noise-index sampling and loss weights of CT / iCT.

Small pure functions in float64. Equations refer to Song & Dhariwal 2023 (iCT, arXiv 2310.14189)
and Song et al. 2023 (CT, arXiv 2303.01469); docs/ALGORITHM.md restates them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .config import CurriculumConfig, LossConfig, choices

# The allowed values are written once, in the config schema (ict_core/config/schema.py); these are views of them.
CURRICULUM_SHAPES = choices(CurriculumConfig, "shape")
# Shapes that are functions of the step alone; "adaptive" also depends on the training signal (Curriculum).
FIXED_CURRICULUM_SHAPES = tuple(shape for shape in CURRICULUM_SHAPES if shape != "adaptive")
NOISE_SCHEDULES = choices(LossConfig, "noise_schedule")
WEIGHTINGS = choices(LossConfig, "weighting")

# Guards float round-off in ceil() for the cosine curriculum (e.g. 20.000000000000004 -> 21).
_CEIL_TOL = 1e-9


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def karras_sigmas(num_points: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Ascending Karras grid sigma_1 < ... < sigma_N (iCT Sec. 3 / EDM Eq. 5), float64.

    sigma_i = (sigma_min^(1/rho) + (i-1)/(N-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho.
    The end points are set to sigma_min and sigma_max exactly, so that f(x, sigma_1) hits the boundary condition.
    """
    num_points = _check_int("num_points", num_points, 2)
    _check_positive("sigma_min", sigma_min)
    _check_positive("sigma_max", sigma_max)
    _check_positive("rho", rho)
    if sigma_max <= sigma_min:
        raise ValueError(f"sigma_max must exceed sigma_min, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    u = torch.arange(num_points, dtype=torch.float64) / (num_points - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (lo + u * (hi - lo)) ** rho
    sigmas[0], sigmas[-1] = sigma_min, sigma_max
    return sigmas


def num_points(step: int, total_steps: int, shape: str = "exponential", s0: int = 10, s1: int = 1280) -> int:
    """Discretization curriculum N(k) at training step k of K = total_steps.

    exponential (iCT Eq. 11): K' = floor(K / (log2 floor(s1/s0) + 1)), N = min(s0 2^floor(k/K'), s1) + 1;
        K' is raised to 1 when K is too short for all stages (otherwise floor(k/0)).
    sqrt (CT Appendix C): N = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1.
    constant: N = s1 + 1.
    linear / square / cosine: N = ceil(s0 + (s1 - s0) g(k/K)) + 1, g(u) = u, u^2, (1 - cos(pi u)) / 2.
    Steps past total_steps keep the final value.
    The adaptive shape is not a function of k alone: see Curriculum.
    """
    if shape == "adaptive":
        raise ValueError("curriculum shape 'adaptive' depends on the training loss; use schedule.Curriculum")
    if shape not in FIXED_CURRICULUM_SHAPES:
        raise ValueError(f"curriculum shape must be one of {', '.join(CURRICULUM_SHAPES)}; got {shape!r}")
    step = _check_int("step", step, 0)
    total_steps = _check_int("total_steps", total_steps, 1)
    s0 = _check_int("s0", s0, 1)
    s1 = _check_int("s1", s1, 1)
    if s1 < s0:
        raise ValueError(f"s1 must be >= s0, got s0={s0}, s1={s1}")
    k = min(step, total_steps)
    if shape == "exponential":
        stage_steps = max(1, int(math.floor(total_steps / (math.log2(s1 // s0) + 1))))
        # 2^64 * s0 already exceeds any s1; capping the exponent keeps the integer small.
        return min(s0 * 2 ** min(k // stage_steps, 64), s1) + 1
    if shape == "constant":
        return s1 + 1
    if shape == "sqrt":
        inner = k / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2
        return int(math.ceil(math.sqrt(inner) - 1 - _CEIL_TOL)) + 1
    if shape == "linear":
        # Exact integer ceil of s0 + (s1 - s0) k / K.
        return s0 + -(-(s1 - s0) * k // total_steps) + 1
    if shape == "square":
        return s0 + -(-(s1 - s0) * k * k // (total_steps * total_steps)) + 1
    g = (1.0 - math.cos(math.pi * k / total_steps)) / 2.0
    return int(math.ceil(s0 + (s1 - s0) * g - _CEIL_TOL)) + 1


def adaptive_observe_every(total_steps: int, every: int = 0) -> int:
    """Steps per observation of the adaptive curriculum: `every`, or total_steps // 200 (at least 1) when 0."""
    every = _check_int("every", every, 0)
    return every if every > 0 else max(1, _check_int("total_steps", total_steps, 1) // 200)


def stalled(log_losses, threshold: float) -> bool:
    """True when a window of log-losses has stopped falling: the least-squares line through them drops by less
    than `threshold` over the window (a fraction of the loss, since ln L1 - ln L2 ~ (L1 - L2) / L). A rising
    signal counts as stalled too."""
    count = len(log_losses)
    if count < 2:
        raise ValueError(f"a slope needs at least 2 observations, got {count}")
    mean_x = (count - 1) / 2.0
    mean_y = sum(log_losses) / count
    cov = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(log_losses))
    var = sum((i - mean_x) ** 2 for i in range(count))
    drop = -(cov / var) * (count - 1)  # fitted decrease of ln L from the window's first to its last observation
    return drop < threshold


class Curriculum:
    """N(k) of one run: one of the fixed shapes of num_points(), or "adaptive".

    adaptive (beyond the paper): N starts at s0 + 1 and doubles, as in iCT's exponential curriculum
    (N = min(s0 2^j, s1) + 1 in stage j), but a stage ends when the training loss stops improving instead of
    after a fixed K' steps. Every `every` steps the loop passes the mean loss of those steps to observe(); once a
    stage holds `window` observations, the window's fitted drop of ln L (stalled()) is compared with `threshold`,
    and after `patience` stalled observations in a row the next stage starts. Log-losses are compared only within a
    stage: the iCT loss changes scale when N doubles (lambda = 1/(sigma_{i+1} - sigma_i) roughly doubles while the
    teacher-student distance shrinks), so the window restarts empty at each stage.

    The state (stage start steps, the current window, the stall count) goes into checkpoints through state_dict();
    under DDP every rank must observe the same (all-reduced) loss so that N(k) stays identical on all ranks.
    """

    def __init__(self, shape: str = "exponential", s0: int = 10, s1: int = 1280, total_steps: int = 1,
                 every: int = 0, window: int = 20, patience: int = 5, threshold: float = 0.1):
        if shape not in CURRICULUM_SHAPES:
            raise ValueError(f"curriculum shape must be one of {', '.join(CURRICULUM_SHAPES)}; got {shape!r}")
        self.shape = shape
        self.s0, self.s1 = _check_int("s0", s0, 1), _check_int("s1", s1, 1)
        if self.s1 < self.s0:
            raise ValueError(f"s1 must be >= s0, got s0={s0}, s1={s1}")
        self.total_steps = _check_int("total_steps", total_steps, 1)
        self.every = adaptive_observe_every(self.total_steps, every)
        self.window = _check_int("window", window, 2)
        self.patience = _check_int("patience", patience, 1)
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        self.stage_starts = [0]  # step at which stage j began
        self.recent: list[float] = []  # ln(mean loss) of this stage's last `window` observations
        self.stalls = 0

    @property
    def adaptive(self) -> bool:
        return self.shape == "adaptive"

    @property
    def last_stage(self) -> int:
        """Index of the stage that reaches s1: ceil(log2(s1 / s0))."""
        stage = 0
        while self.s0 * 2**stage < self.s1:
            stage += 1
        return stage

    def num_points(self, step: int) -> int:
        """N(k) at step k; for the adaptive shape, of the stage step k belongs to as observed so far."""
        if not self.adaptive:
            return num_points(step, self.total_steps, self.shape, self.s0, self.s1)
        step = _check_int("step", step, 0)
        stage = sum(1 for start in self.stage_starts if start <= step) - 1
        return min(self.s0 * 2**stage, self.s1) + 1

    def observe(self, step: int, mean_loss: float) -> bool:
        """Feed the mean training loss of the `every` steps before `step` (= steps done). True when N doubled:
        the new stage starts at `step`. No-op for the fixed shapes; non-finite or non-positive losses are ignored."""
        if not self.adaptive:
            return False
        step = _check_int("step", step, 0)
        if step < self.stage_starts[-1]:
            raise ValueError(f"observe() at step {step} before the current stage began (step {self.stage_starts[-1]})")
        if len(self.stage_starts) - 1 >= self.last_stage:
            return False
        mean_loss = float(mean_loss)
        if not (math.isfinite(mean_loss) and mean_loss > 0):
            return False
        self.recent = (self.recent + [math.log(mean_loss)])[-self.window:]
        if len(self.recent) < self.window:
            return False
        self.stalls = self.stalls + 1 if stalled(self.recent, self.threshold) else 0
        if self.stalls < self.patience:
            return False
        self.stage_starts.append(step)
        self.recent, self.stalls = [], 0
        return True

    def state_dict(self) -> dict:
        return {"shape": self.shape, "stage_starts": list(self.stage_starts), "recent": list(self.recent),
                "stalls": self.stalls}

    def load_state_dict(self, state: dict) -> None:
        if state.get("shape") != self.shape:
            raise ValueError(f"curriculum state is for shape {state.get('shape')!r}, this run uses {self.shape!r}")
        self.stage_starts = [int(s) for s in state["stage_starts"]]
        self.recent = [float(v) for v in state["recent"]]
        self.stalls = int(state["stalls"])


class CurriculumFeed:
    """What the training loop does with an adaptive curriculum: it adds every step's loss, and every `every` steps
    the curriculum observes their mean. `agree(mean) -> float` turns this rank's mean into the value every rank
    observes (under DDP the all-reduced mean, rank 0's value broadcast: ict_core.dist.agreed_mean), so that every
    rank takes the same decision and N(k) stays the same on all. The partial sum since the last observation is
    part of the state, so a checkpoint between two observations resumes bitwise."""

    def __init__(self, curriculum: Curriculum, agree: Callable[[torch.Tensor], float], device: torch.device,
                 verbose: bool):
        self.curriculum, self.agree, self.verbose = curriculum, agree, verbose
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        """Accumulate the loss of the step that made `step` steps done; at every `every`-th step, decide."""
        self.sum += loss
        self.count += 1
        if step % self.curriculum.every:
            return
        mean = self.agree(self.sum / max(self.count, 1))
        self.sum.zero_()
        self.count = 0
        if self.curriculum.observe(step, mean) and self.verbose:
            print(f"[ict] step {step}: loss stalled, N(k) -> {self.curriculum.num_points(step)}", flush=True)

    def state_dict(self) -> dict:
        return {**self.curriculum.state_dict(), "pending_sum": self.sum.item(), "pending_count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.curriculum.load_state_dict(state)
        self.sum.fill_(float(state["pending_sum"]))
        self.count = int(state["pending_count"])


def curriculum_from_config(curriculum_cfg, total_steps: int) -> Curriculum:
    """A Curriculum from the curriculum settings (CurriculumConfig) over K = total_steps steps."""
    c = curriculum_cfg
    return Curriculum(c.shape, c.s0, c.s1, total_steps, every=c.adaptive_every, window=c.adaptive_window,
                      patience=c.adaptive_patience, threshold=c.adaptive_threshold)


def index_probs(sigmas: torch.Tensor, kind: str = "lognormal", p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """Probabilities of the N-1 intervals (sigma_i, sigma_{i+1}) of an ascending grid, float64.

    lognormal (iCT Eq. 10): p(i) ~ erf((ln sigma_{i+1} - P_mean) / (sqrt2 P_std)) - erf((ln sigma_i - P_mean) / (sqrt2 P_std)).
    uniform (CT): p(i) = 1 / (N-1).
    """
    if kind not in NOISE_SCHEDULES:
        raise ValueError(f"noise schedule kind must be one of {', '.join(NOISE_SCHEDULES)}; got {kind!r}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 noise levels, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas > 0).all()) or not bool((sigmas[1:] > sigmas[:-1]).all()):
        raise ValueError("sigmas must be positive and strictly ascending")
    if kind == "uniform":
        return torch.full((sigmas.numel() - 1,), 1.0 / (sigmas.numel() - 1), dtype=torch.float64)
    if not math.isfinite(p_mean):
        raise ValueError(f"p_mean must be finite, got {p_mean!r}")
    _check_positive("p_std", p_std)
    t = (torch.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std)
    lo, hi = t[:-1], t[1:]
    # erf(hi) - erf(lo) == erfc(lo) - erfc(hi); the erfc form keeps precision in the upper tail.
    mass = torch.where(lo > 0, torch.special.erfc(lo) - torch.special.erfc(hi), torch.special.erf(hi) - torch.special.erf(lo))
    total = mass.sum()
    if not total > 0:
        raise ValueError(f"lognormal noise schedule puts no mass on the grid (p_mean={p_mean}, p_std={p_std})")
    return mass / total


def sample_indices(probs: torch.Tensor, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Draw batch_size interval indices i in [0, N-2] (long); index i pairs (sigmas[i], sigmas[i+1]).

    The draw runs on the generator's device (CPU when no generator is given), so a shared CPU generator
    gives the same indices on every rank and device.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if probs.ndim != 1 or probs.numel() < 1:
        raise ValueError(f"probs must be a non-empty 1-D tensor, got shape {tuple(probs.shape)}")
    draw_device = generator.device if generator is not None else probs.device
    indices = torch.multinomial(probs.to(draw_device), batch_size, replacement=True, generator=generator)
    return indices if device is None else indices.to(device)


def loss_weight(sigma_lo, sigma_hi, kind: str = "ict"):
    """lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i) for iCT (Sec. 3.3); 1 for CT ("uniform")."""
    if kind not in WEIGHTINGS:
        raise ValueError(f"weighting kind must be one of {', '.join(WEIGHTINGS)}; got {kind!r}")
    if kind == "uniform":
        return torch.ones_like(sigma_hi) if isinstance(sigma_hi, torch.Tensor) else 1.0
    return 1.0 / (sigma_hi - sigma_lo)


def ema_teacher_mu(num_points: int, s0: int, mu0: float = 0.9) -> float:
    """EMA rate of the CT baseline teacher, mu(k) = exp(s0 ln(mu0) / N(k)) (CT Eq. 8's schedule).

    openai's code divides by N(k) - 1 instead; this is the paper's form (0.9 at N = s0).
    """
    num_points = _check_int("num_points", num_points, 1)
    s0 = _check_int("s0", s0, 1)
    if not (isinstance(mu0, (int, float)) and 0.0 <= mu0 < 1.0):
        raise ValueError(f"mu0 must be in [0, 1), got {mu0!r}")
    if mu0 == 0.0:
        return 0.0
    return math.exp(s0 * math.log(mu0) / num_points)
