"""The training objectives behind one interface: iCT's consistency objective and EDM's diffusion objective.

An objective tells the training loop and the evaluation everything that differs between them:

- draw(step, batch_size, shape, generator): the noise of one optimizer step for the GLOBAL batch (a dict of
  tensors whose first dimension is the batch); every rank draws the same and keeps its slice (slice_noise);
- loss(net, x, step, noise, teacher): the per-sample loss (B,) on this rank's slice, and an info dict;
- probe_loss(net, x, step, generator): the loss of an evaluation probe, its noise drawn from `generator`;
- sample(net, shape, steps, generator, device): how the evaluation and the sample command generate images;
- precond: the Precond kind of the network (ict_core/network.py);
- num_points(step) and curriculum: the discretization curriculum N(k) (0 and None without one); an adaptive
  curriculum is fed by the loop (observe) and checkpointed with the run;
- ema_teacher and teacher_rate(step): whether a separate EMA teacher is kept, and its rate after step k.

OBJECTIVES maps every `loss.objective` choice of the config to its class; build_objective builds the run's.
The loss math itself lives in ict_core/loss.py.
"""
from __future__ import annotations

import abc

import torch

from . import loss as loss_mod


def slice_noise(noise: dict, lo: int, hi: int) -> dict:
    """This rank's rows [lo, hi) of a global-batch draw."""
    return {key: value[lo:hi] for key, value in noise.items()}


class Objective(abc.ABC):
    """The interface; see the module docstring. Subclasses set the class attributes and the methods."""

    name: str = ""
    precond: str = ""  # Precond kind of the network
    shares_dropout: bool = False  # teacher and student passes must draw the same dropout masks
    sample_steps: tuple[int, ...] = ()  # step counts sample() takes; () = a fixed sampler that ignores steps

    def __init__(self, cfg, dim: int):
        self.cfg = cfg
        self.dim = int(dim)
        self.curriculum = None  # the adaptive curriculum (schedule.Curriculum) when it has one, fed by the loop
        self.ema_teacher = False

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
        ...

    @abc.abstractmethod
    def loss(self, net, x: torch.Tensor, step: int, noise: dict, teacher=None) -> tuple[torch.Tensor, dict]:
        ...

    @abc.abstractmethod
    def probe_loss(self, net, x: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def sample(self, net, shape, steps: int | None, generator: torch.Generator, device) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def sampler_label(self, steps: int | None) -> str:
        ...


class ConsistencyObjective(Objective):
    """CT / iCT (Song & Dhariwal 2023): loss.ConsistencyLoss on the curriculum N(k), one- or two-step sampling."""

    name = "consistency"
    precond = "consistency"
    shares_dropout = True
    sample_steps = (1, 2)

    def __init__(self, cfg, dim: int):
        super().__init__(cfg, dim)
        self.loss_fn = loss_mod.ConsistencyLoss(cfg, dim)
        curriculum = self.loss_fn.curriculum
        self.curriculum = curriculum if curriculum is not None and curriculum.adaptive else None
        self.ema_teacher = cfg.loss.teacher == "ema"

    def num_points(self, step: int) -> int:
        return int(self.loss_fn.num_points(step))

    def teacher_rate(self, step: int) -> float:
        from .schedule import ema_teacher_mu

        # CT's teacher: theta^- <- mu(k) theta^- + (1 - mu(k)) theta, after the student's update.
        return ema_teacher_mu(self.num_points(step), self.cfg.curriculum.s0, self.cfg.loss.ema_mu0)

    def draw(self, step: int, batch_size: int, shape, generator: torch.Generator) -> dict:
        indices, z = self.loss_fn.draw(step, batch_size, shape, generator=generator)
        return {"indices": indices, "z": z}

    def student_sigma(self, step, noise):
        sigmas = self.loss_fn.grid(self.num_points(step))[0]
        return sigmas[noise["indices"].cpu() + 1]

    def loss(self, net, x, step, noise, teacher=None):
        return self.loss_fn(net, x, step, teacher=teacher, **noise)

    def probe_loss(self, net, x, step, generator):
        return self.loss_fn(net, x, step, generator=generator)[0]

    def _sigmas(self, steps: int | None) -> list[float]:
        steps = 1 if steps is None else steps
        if steps not in self.sample_steps:
            raise ValueError(f"consistency sampling takes steps in {self.sample_steps}, got {steps!r}")
        return [self.cfg.precond.sigma_max] + ([self.cfg.eval.sigma_mid] if steps == 2 else [])

    def sample(self, net, shape, steps, generator, device):
        from . import sampling

        return sampling.sample_consistency(net, shape, self._sigmas(steps), sigma_min=self.cfg.precond.sigma_min,
                                           generator=generator, device=device)

    def sampler_label(self, steps):
        return "1 step" if (steps or 1) == 1 else f"{steps} steps (sigma_mid {self.cfg.eval.sigma_mid:g})"


class DiffusionObjective(Objective):
    """EDM's denoising objective (Karras et al. 2022): loss.DiffusionLoss, Heun sampling in eval.diffusion_steps."""

    name = "diffusion"
    precond = "diffusion"

    def __init__(self, cfg, dim: int):
        super().__init__(cfg, dim)
        self.loss_fn = loss_mod.DiffusionLoss(cfg)

    def draw(self, step, batch_size, shape, generator):
        sigma, z = self.loss_fn.draw(batch_size, shape, generator=generator)
        return {"sigma": sigma, "z": z}

    def student_sigma(self, step, noise):
        return noise["sigma"]

    def loss(self, net, x, step, noise, teacher=None):
        return self.loss_fn(net, x, **noise)

    def probe_loss(self, net, x, step, generator):
        return self.loss_fn(net, x, generator=generator)[0]

    def sample(self, net, shape, steps, generator, device):
        from . import sampling

        if steps is not None:
            raise ValueError(f"the diffusion objective samples with Heun's method in eval.diffusion_steps="
                             f"{self.cfg.eval.diffusion_steps} steps; steps must be None, got {steps!r}")
        p = self.cfg.precond
        return sampling.sample_diffusion(net, shape, num_steps=self.cfg.eval.diffusion_steps, sigma_min=p.sigma_min,
                                         sigma_max=p.sigma_max, rho=p.rho, generator=generator, device=device)

    def sampler_label(self, steps):
        return f"Heun sampler, {self.cfg.eval.diffusion_steps} steps"


OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (ConsistencyObjective, DiffusionObjective)}


def objective_class(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"loss.objective must be one of {', '.join(OBJECTIVES)}; got {name!r}")
    return OBJECTIVES[name]


def build_objective(cfg, dim: int) -> Objective:
    """The objective of cfg.loss.objective for data of dim = C*H*W values per image."""
    return objective_class(cfg.loss.objective)(cfg, dim)
