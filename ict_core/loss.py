"""Losses: the CT / iCT consistency loss and the EDM denoising loss, both returning one value per sample.

The callables take the network and return an unreduced (B,) fp32 loss; the trainer reduces, scales and logs.
"""
from __future__ import annotations

import math

import torch

from . import schedule
from .config import default_huber_c, noise_distribution

METRICS = ("pseudo_huber", "l2")


def _per_sample_sq_norm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    diff = x.to(dtype) - y.to(dtype)
    return diff.square().flatten(1).sum(dim=1)


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """d(x, y) = sqrt(||x - y||_2^2 + c^2) - c over the WHOLE sample (iCT Eq. 9), shape (B,), at least fp32.

    Computed as ||x-y||^2 / (sqrt(||x-y||^2 + c^2) + c), the same value without cancellation when ||x-y|| << c.
    c = 0 gives the L2 norm ||x - y||_2.
    """
    c = float(c)
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"pseudo-Huber c must be a finite number >= 0, got {c!r}")
    sq = _per_sample_sq_norm(x, y)
    if c == 0.0:
        return sq.sqrt()
    return sq / ((sq + c * c).sqrt() + c)


def squared_l2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x - y||_2^2 summed over the whole sample, shape (B,), at least fp32."""
    return _per_sample_sq_norm(x, y)


def _fork_rng_kwargs(x: torch.Tensor) -> dict:
    """fork_rng arguments covering the generator dropout draws from (the CPU one is always forked).

    device_type is passed only for accelerators: some torch releases reject device_type=None.
    """
    if x.device.type == "cpu":
        return {"devices": []}
    return {"devices": [x.device], "device_type": x.device.type}


class ConsistencyLoss:
    """CT / iCT loss (iCT Eq. 8 with Sec. 3 choices):

        lambda(sigma_i) d(f(x + sigma_{i+1} z, sigma_{i+1}), sg(f_teacher(x + sigma_i z, sigma_i)))

    N(k) comes from the curriculum at `step` on every call; the grid, index probabilities and weights are
    cached per N. The teacher is the stop-gradient of `net` (iCT) or the module passed as `teacher` (CT's EMA
    teacher). Both passes use `net`'s train/eval mode and the same dropout masks: the teacher pass runs inside
    torch.random.fork_rng over the generator dropout uses, so the student pass replays its random stream.
    """

    def __init__(self, cfg, dim: int):
        self.dim = int(dim)
        self.huber_c = default_huber_c(self.dim) if cfg.loss.huber_c is None else float(cfg.loss.huber_c)
        if cfg.loss.metric not in METRICS:
            raise ValueError(f"loss.metric must be one of {', '.join(METRICS)}; got {cfg.loss.metric!r}")
        if cfg.loss.weighting not in schedule.WEIGHTINGS:
            raise ValueError(f"loss.weighting must be one of {', '.join(schedule.WEIGHTINGS)}; got {cfg.loss.weighting!r}")
        if cfg.loss.noise_schedule not in schedule.NOISE_SCHEDULES:
            raise ValueError(
                f"loss.noise_schedule must be one of {', '.join(schedule.NOISE_SCHEDULES)}; got {cfg.loss.noise_schedule!r}"
            )
        self.metric = cfg.loss.metric
        self.weighting = cfg.loss.weighting
        self.noise_schedule = cfg.loss.noise_schedule
        self.p_mean, self.p_std = noise_distribution(cfg.loss)
        self.sigma_min, self.sigma_max, self.rho = cfg.precond.sigma_min, cfg.precond.sigma_max, cfg.precond.rho
        self.total_steps = cfg.train.curriculum_steps or cfg.train.total_steps  # K of N(k) (config.curriculum_steps)
        self.shape, self.s0, self.s1 = cfg.curriculum.shape, cfg.curriculum.s0, cfg.curriculum.s1
        # The adaptive curriculum is stateful: the training loop feeds it (observe) and checkpoints it.
        self.curriculum = schedule.curriculum_from_config(cfg.curriculum, self.total_steps)
        self._grids: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._device_grids: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def num_points(self, step: int) -> int:
        return self.curriculum.num_points(step)

    def grid(self, num_points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigmas (N,), index probabilities (N-1,), weights lambda (N-1,)), float64 on the CPU, cached per N."""
        if num_points not in self._grids:
            sigmas = schedule.karras_sigmas(num_points, self.sigma_min, self.sigma_max, self.rho)
            probs = schedule.index_probs(sigmas, self.noise_schedule, self.p_mean, self.p_std)
            weights = schedule.loss_weight(sigmas[:-1], sigmas[1:], self.weighting)
            self._grids[num_points] = (sigmas, probs, weights)
        return self._grids[num_points]

    def _device_grid(self, num_points: int, device: torch.device, dtype: torch.dtype):
        key = (num_points, device, dtype)
        if key not in self._device_grids:
            sigmas, probs, weights = self.grid(num_points)
            # Weights are computed in float64 (1/(sigma_{i+1}-sigma_i) near sigma_min) and stored in fp32 or wider.
            self._device_grids[key] = (sigmas.to(device=device, dtype=dtype),
                                       weights.to(device=device, dtype=torch.promote_types(dtype, torch.float32)),
                                       probs.to(device=device, dtype=torch.promote_types(dtype, torch.float32)))
        return self._device_grids[key]

    def draw(self, step: int, batch_size: int, shape, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (B,), z (B, *shape)) drawn on the generator's device (CPU without one).

        The DDP trainer calls this with a generator shared by all ranks for the global batch and passes each
        rank's slice to __call__, so the loss is identical to a single-process run.
        """
        _, probs, _ = self.grid(self.num_points(step))
        indices = schedule.sample_indices(probs, batch_size, generator=generator)
        z_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn((batch_size, *shape), generator=generator, device=z_device, dtype=dtype)
        return indices, z

    def __call__(self, net, x: torch.Tensor, step: int, teacher=None, generator: torch.Generator | None = None,
                 indices: torch.Tensor | None = None, z: torch.Tensor | None = None):
        """Per-sample loss (B,) in fp32 and info {"num_points": N, "sigma_mean": 0-dim tensor (mean student sigma)}.

        indices (long, values in [0, N-2]) and z (x's shape) may be supplied by the caller; otherwise they are
        drawn from `generator` (on its device; x's device when None).
        """
        num_points = self.num_points(step)
        batch = x.shape[0]
        if indices is None:
            if generator is not None:
                _, probs, _ = self.grid(num_points)
            else:
                probs = self._device_grid(num_points, x.device, x.dtype)[2]
            indices = schedule.sample_indices(probs, batch, generator=generator)
        elif indices.shape != (batch,) or indices.dtype != torch.long:
            raise ValueError(f"indices must be a long tensor of shape ({batch},), got {indices.dtype} {tuple(indices.shape)}")
        elif indices.device.type == "cpu" and indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) <= num_points - 2):
            raise ValueError(f"indices must lie in [0, {num_points - 2}] for N(k)={num_points} at step {step}")
        if z is None:
            z_device = generator.device if generator is not None else x.device
            z = torch.randn(x.shape, generator=generator, device=z_device, dtype=x.dtype)
        elif z.shape != x.shape:
            raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
        indices = indices.to(x.device, non_blocking=True)
        z = z.to(device=x.device, dtype=x.dtype, non_blocking=True)

        sigmas, weights, _ = self._device_grid(num_points, x.device, x.dtype)
        sigma_lo, sigma_hi = sigmas[indices], sigmas[indices + 1]
        lam = weights[indices]
        view = (batch,) + (1,) * (x.ndim - 1)

        teacher_net = net if teacher is None else teacher
        teacher_mode = teacher_net.training
        if teacher_mode != net.training:
            teacher_net.train(net.training)
        try:
            with torch.random.fork_rng(**_fork_rng_kwargs(x)), torch.no_grad():
                target = teacher_net(x + sigma_lo.view(view) * z, sigma_lo)
        finally:
            if teacher_mode != net.training:
                teacher_net.train(teacher_mode)
        pred = net(x + sigma_hi.view(view) * z, sigma_hi)

        # Loss math in fp32 (lambda reaches ~2.6e4 at N = 1281) even inside a bf16 autocast region.
        with torch.autocast(device_type=x.device.type, enabled=False):
            pred, target = pred.float(), target.detach().float()
            if self.metric == "pseudo_huber":
                dist = pseudo_huber(pred, target, self.huber_c)
            else:
                dist = squared_l2(pred, target)
            loss = lam.to(dist.dtype) * dist
        return loss, {"num_points": num_points, "sigma_mean": sigma_hi.detach().mean()}


class DiffusionLoss:
    """EDM denoising loss (Karras et al. 2022, Eq. 2 with Table 1's training choices) on the same Precond net.

    sigma = exp(p_mean + p_std n), n ~ N(0, 1), with loss.p_mean / loss.p_std; weight
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2; loss = lambda ||D(x + sigma z, sigma) - x||^2
    AVERAGED over the C*H*W dimensions, so the value is ~1 at initialisation whatever the image size.
    """

    def __init__(self, cfg):
        self.p_mean, self.p_std = noise_distribution(cfg.loss)
        self.sigma_data = cfg.precond.sigma_data

    def draw(self, batch_size: int, shape, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        """(sigma (B,), z (B, *shape)) on the generator's device (CPU without one); see ConsistencyLoss.draw."""
        device = generator.device if generator is not None else torch.device("cpu")
        n = torch.randn((batch_size,), generator=generator, device=device, dtype=dtype)
        z = torch.randn((batch_size, *shape), generator=generator, device=device, dtype=dtype)
        return (self.p_mean + self.p_std * n).exp(), z

    def __call__(self, net, x: torch.Tensor, generator: torch.Generator | None = None,
                 sigma: torch.Tensor | None = None, z: torch.Tensor | None = None):
        """Per-sample loss (B,) fp32 and info {"sigma_mean": 0-dim tensor}. sigma (B,) and z may be supplied."""
        batch = x.shape[0]
        device = generator.device if generator is not None else x.device
        if sigma is None:
            n = torch.randn((batch,), generator=generator, device=device, dtype=x.dtype)
            sigma = (self.p_mean + self.p_std * n).exp()
        elif sigma.shape != (batch,):
            raise ValueError(f"sigma must have shape ({batch},), got {tuple(sigma.shape)}")
        if z is None:
            z = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        elif z.shape != x.shape:
            raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
        sigma = sigma.to(device=x.device, dtype=x.dtype)
        z = z.to(device=x.device, dtype=x.dtype)
        view = (batch,) + (1,) * (x.ndim - 1)
        denoised = net(x + sigma.view(view) * z, sigma)
        with torch.autocast(device_type=x.device.type, enabled=False):
            sigma32 = sigma.float()
            weight = (sigma32**2 + self.sigma_data**2) / (sigma32 * self.sigma_data) ** 2
            err = (denoised.float() - x.float()).square().flatten(1).mean(dim=1)
            loss = weight * err
        return loss, {"sigma_mean": sigma.detach().mean()}
