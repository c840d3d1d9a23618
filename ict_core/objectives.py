"""The training objectives behind one interface: iCT's consistency objective and EDM's diffusion objective.

One object per objective holds everything that differs between them; the training loop and the evaluation ask it:

- draw(step, batch_size, shape, generator): the noise of one optimizer step for the GLOBAL batch (a dict of
  tensors whose first dimension is the batch), drawn once; every rank draws the same and keeps its slice
  (slice_noise);
- loss(net, x, step, noise, teacher): the per-sample loss (B,) on this rank's slice of a draw, and an info dict;
- probe_loss(net, x, step, generator): the loss of an evaluation probe, its noise drawn (by draw) from `generator`;
- sample(net, shape, steps, generator, device): how the evaluation and the sample command generate images;
- precond: the Precond kind of the network (ict_core/network.py builds it; the trainer passes this kind);
- num_points(step) and curriculum: the discretization curriculum N(k) (0 and None without one); this object is
  the curriculum's one home, and an adaptive one is fed by the loop (observe) and checkpointed with the run;
- ema_teacher and teacher_rate(step): whether a separate EMA teacher is kept, and its rate after step k.

Each objective takes its own settings (the loss section, the preconditioning constants, its sampler's setting,
the data dimension d = C*H*W); build_objective is the one place a whole Config is taken apart for it. The
allowed values of every setting are checked once, by the config schema, so nothing here checks them again.
OBJECTIVES maps every `loss.objective` choice of the config to its class. The equations live in ict_core/loss.py
(Eq. 8 and EDM's Eq. 2) and ict_core/schedule.py (Eq. 10, Eq. 11, the grid and the weights).
"""
from __future__ import annotations

import abc
import functools

import torch

from . import loss as equations
from . import schedule
from .config import curriculum_steps, default_huber_c, noise_distribution


def slice_noise(noise: dict, lo: int, hi: int) -> dict:
    """This rank's rows [lo, hi) of a global-batch draw."""
    return {key: value[lo:hi] for key, value in noise.items()}


class Objective(abc.ABC):
    """The interface; see the module docstring. Subclasses set the class attributes and the methods."""

    name: str = ""
    precond: str = ""  # Precond kind of the network
    shares_dropout: bool = False  # teacher and student passes must draw the same dropout masks
    sample_steps: tuple[int, ...] = ()  # step counts sample() takes; () = a fixed sampler that ignores steps
    curriculum: schedule.Curriculum | None = None  # the discretization curriculum N(k), when it has one
    ema_teacher: bool = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg, dim: int) -> "Objective":
        """The objective with the settings it takes from a run's Config, for data of dim = C*H*W."""

    def num_points(self, step: int) -> int:
        return 0  # no discretization curriculum; 0 marks "not applicable" in the int column

    def teacher_rate(self, step: int) -> float:
        raise NotImplementedError(f"the {self.name} objective keeps no EMA teacher")

    @abc.abstractmethod
    def draw(self, step: int, batch_size: int, shape, generator: torch.Generator) -> dict:
        ...

    @abc.abstractmethod
    def student_sigma(self, step: int, noise: dict) -> torch.Tensor:
        """The noise level (B,) at which the student network sees each image of a draw."""

    @abc.abstractmethod
    def loss(self, net, x: torch.Tensor, step: int, noise: dict, teacher=None) -> tuple[torch.Tensor, dict]:
        ...

    def probe_loss(self, net, x: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """The per-sample loss of `x` with noise drawn from `generator` (on its device)."""
        return self.loss(net, x, step, self.draw(step, x.shape[0], x.shape[1:], generator))[0]

    @abc.abstractmethod
    def sample(self, net, shape, steps: int | None, generator: torch.Generator, device) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def sampler_label(self, steps: int | None) -> str:
        ...


class ConsistencyObjective(Objective):
    """CT / iCT (Song & Dhariwal 2023): Eq. 8 on the grid of the curriculum N(k), one- or two-step sampling.

    For N = N(k) the grid (Karras sigmas), the index probabilities (Eq. 10) and the weights lambda are cached per
    N. The teacher is the stop-gradient of the student (iCT) or the module the loop passes (CT's EMA teacher).
    """

    name = "consistency"
    precond = "consistency"
    shares_dropout = True
    sample_steps = (1, 2)

    def __init__(self, loss, precond, curriculum: schedule.Curriculum, dim: int, sigma_mid: float):
        """loss: the loss section (LossConfig); precond: the preconditioning constants (PrecondConfig);
        curriculum: N(k); dim: d = C*H*W (for the default pseudo-Huber c); sigma_mid: two-step sampling's."""
        self.huber_c = default_huber_c(int(dim)) if loss.huber_c is None else float(loss.huber_c)
        self.distance = (functools.partial(equations.pseudo_huber, c=self.huber_c) if loss.metric == "pseudo_huber"
                         else equations.squared_l2)
        self.weighting, self.noise_schedule = loss.weighting, loss.noise_schedule
        self.p_mean, self.p_std = noise_distribution(loss)
        self.ema_teacher, self.ema_mu0 = loss.teacher == "ema", loss.ema_mu0
        self.sigma_min, self.sigma_max, self.rho = precond.sigma_min, precond.sigma_max, precond.rho
        self.sigma_mid = sigma_mid
        self.curriculum = curriculum
        self._grids: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._device_grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, cfg, dim):
        curriculum = schedule.curriculum_from_config(cfg.curriculum, curriculum_steps(cfg))
        return cls(cfg.loss, cfg.precond, curriculum, dim, cfg.eval.sigma_mid)

    def num_points(self, step: int) -> int:
        return int(self.curriculum.num_points(step))

    def teacher_rate(self, step: int) -> float:
        # CT's teacher: theta^- <- mu(k) theta^- + (1 - mu(k)) theta, after the student's update.
        return schedule.ema_teacher_mu(self.num_points(step), self.curriculum.s0, self.ema_mu0)

    def grid(self, num_points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigmas (N,), index probabilities (N-1,), weights lambda (N-1,)), float64 on the CPU, cached per N."""
        if num_points not in self._grids:
            sigmas = schedule.karras_sigmas(num_points, self.sigma_min, self.sigma_max, self.rho)
            probs = schedule.index_probs(sigmas, self.noise_schedule, self.p_mean, self.p_std)
            weights = schedule.loss_weight(sigmas[:-1], sigmas[1:], self.weighting)
            self._grids[num_points] = (sigmas, probs, weights)
        return self._grids[num_points]

    def _device_grid(self, num_points: int, device: torch.device, dtype: torch.dtype):
        """(sigmas, weights) of grid(num_points) on `device`: sigmas in `dtype`, the weights (computed in float64:
        1/(sigma_{i+1}-sigma_i) near sigma_min) in fp32 or wider."""
        key = (num_points, device, dtype)
        if key not in self._device_grids:
            sigmas, _, weights = self.grid(num_points)
            self._device_grids[key] = (sigmas.to(device=device, dtype=dtype),
                                       weights.to(device=device, dtype=torch.promote_types(dtype, torch.float32)))
        return self._device_grids[key]

    def draw(self, step, batch_size, shape, generator=None, dtype=torch.float32):
        """{"indices": (B,) grid intervals i drawn by Eq. 10, "z": (B, *shape) standard normal}, on the generator's
        device (CPU without one). The DDP trainer draws the global batch from a generator shared by all ranks and
        passes each rank's slice to loss(), so the loss is identical to a single-process run."""
        _, probs, _ = self.grid(self.num_points(step))
        indices = schedule.sample_indices(probs, batch_size, generator=generator)
        z_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn((batch_size, *shape), generator=generator, device=z_device, dtype=dtype)
        return {"indices": indices, "z": z}

    def student_sigma(self, step, noise):
        sigmas = self.grid(self.num_points(step))[0]
        return sigmas[noise["indices"].cpu() + 1]

    def loss(self, net, x, step, noise, teacher=None):
        """Eq. 8 at N = N(step) on this rank's draw; info {"num_points": N, "sigma_mean": mean student sigma}."""
        num_points = self.num_points(step)
        sigmas, weights = self._device_grid(num_points, x.device, x.dtype)
        i = noise["indices"].to(x.device, non_blocking=True)
        z = noise["z"].to(device=x.device, dtype=x.dtype, non_blocking=True)
        per_sample = equations.consistency_loss(net, net if teacher is None else teacher, x, z, sigmas[i],
                                                sigmas[i + 1], weights[i], self.distance)
        return per_sample, {"num_points": num_points, "sigma_mean": sigmas[i + 1].detach().mean()}

    def _sigmas(self, steps: int | None) -> list[float]:
        steps = 1 if steps is None else steps
        if steps not in self.sample_steps:
            raise ValueError(f"consistency sampling takes steps in {self.sample_steps}, got {steps!r}")
        return [self.sigma_max] + ([self.sigma_mid] if steps == 2 else [])

    def sample(self, net, shape, steps, generator, device):
        from . import sampling

        return sampling.sample_consistency(net, shape, self._sigmas(steps), sigma_min=self.sigma_min,
                                           generator=generator, device=device)

    def sampler_label(self, steps):
        return "1 step" if (steps or 1) == 1 else f"{steps} steps (sigma_mid {self.sigma_mid:g})"


class DiffusionObjective(Objective):
    """EDM's denoising objective (Karras et al. 2022): sigma = exp(p_mean + p_std n), n ~ N(0, 1), the loss
    loss.diffusion_loss, Heun sampling in `diffusion_steps` steps."""

    name = "diffusion"
    precond = "diffusion"

    def __init__(self, loss, precond, diffusion_steps: int):
        """loss: the loss section (LossConfig); precond: the preconditioning constants; diffusion_steps: Heun's."""
        self.p_mean, self.p_std = noise_distribution(loss)
        self.sigma_data = precond.sigma_data
        self.sigma_min, self.sigma_max, self.rho = precond.sigma_min, precond.sigma_max, precond.rho
        self.diffusion_steps = diffusion_steps

    @classmethod
    def from_config(cls, cfg, dim):
        return cls(cfg.loss, cfg.precond, cfg.eval.diffusion_steps)

    def draw(self, step, batch_size, shape, generator=None, dtype=torch.float32):
        """{"sigma": (B,), "z": (B, *shape)} on the generator's device (CPU without one); see ConsistencyObjective."""
        device = generator.device if generator is not None else torch.device("cpu")
        n = torch.randn((batch_size,), generator=generator, device=device, dtype=dtype)
        z = torch.randn((batch_size, *shape), generator=generator, device=device, dtype=dtype)
        return {"sigma": (self.p_mean + self.p_std * n).exp(), "z": z}

    def student_sigma(self, step, noise):
        return noise["sigma"]

    def loss(self, net, x, step, noise, teacher=None):
        """EDM's loss on this rank's draw; info {"sigma_mean": 0-dim tensor}."""
        sigma = noise["sigma"].to(device=x.device, dtype=x.dtype)
        z = noise["z"].to(device=x.device, dtype=x.dtype)
        return equations.diffusion_loss(net, x, z, sigma, self.sigma_data), {"sigma_mean": sigma.detach().mean()}

    def sample(self, net, shape, steps, generator, device):
        from . import sampling

        if steps is not None:
            raise ValueError(f"the diffusion objective samples with Heun's method in eval.diffusion_steps="
                             f"{self.diffusion_steps} steps; steps must be None, got {steps!r}")
        return sampling.sample_diffusion(net, shape, num_steps=self.diffusion_steps, sigma_min=self.sigma_min,
                                         sigma_max=self.sigma_max, rho=self.rho, generator=generator, device=device)

    def sampler_label(self, steps):
        return f"Heun sampler, {self.diffusion_steps} steps"


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (ConsistencyObjective, DiffusionObjective)}


def objective_class(name: str) -> type[Objective]:
    """The class of a `loss.objective` value (the config schema has already checked it is one)."""
    return OBJECTIVES[name]


def build_objective(cfg, dim: int) -> Objective:
    """The objective of cfg.loss.objective for data of dim = C*H*W values per image."""
    return objective_class(cfg.loss.objective).from_config(cfg, dim)
