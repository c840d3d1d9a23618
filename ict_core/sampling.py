"""Sampling: one- and multistep consistency sampling (CT Algorithm 1) and EDM's deterministic Heun sampler."""
from __future__ import annotations

import math

import torch

from .schedule import karras_sigmas


def _net_device(net, device):
    if device is not None:
        return torch.device(device)
    param = next(iter(net.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _randn(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)


class _EvalMode:
    """Puts a module in eval mode and restores its previous mode on exit."""

    def __init__(self, net):
        self.net = net

    def __enter__(self):
        self.was_training = self.net.training
        self.net.eval()

    def __exit__(self, *exc):
        self.net.train(self.was_training)


def sample_consistency(net, shape, sigmas, sigma_min: float = 0.002, generator: torch.Generator | None = None,
                       device=None) -> torch.Tensor:
    """Multistep consistency sampling (CT Algorithm 1); sigmas descending, e.g. [80.0] or [80.0, 0.821].

    x = f(sigma_1 z, sigma_1); for each next sigma: x = f(x + sqrt(sigma^2 - sigma_min^2) z', sigma).
    Every f output is clamped to [-1, 1]. Runs under no_grad with `net` in eval mode (mode restored after).
    Noise is drawn from `generator` on its own device, so a CPU generator gives the same samples on any device.
    """
    sigmas = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if not sigmas:
        raise ValueError("sigmas must hold at least one noise level, e.g. [80.0]")
    if any(s <= sigma_min for s in sigmas):
        raise ValueError(f"every sampling sigma must exceed sigma_min={sigma_min}, got {sigmas}")
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"sampling sigmas must be strictly descending, got {sigmas}")
    device = _net_device(net, device)
    batch = shape[0]
    with _EvalMode(net), torch.no_grad():
        x = sigmas[0] * _randn(shape, generator, device)
        x = net(x, torch.full((batch,), sigmas[0], device=device)).clamp(-1.0, 1.0)
        for sigma in sigmas[1:]:
            # Re-noise to total noise sigma: the clean estimate already carries sigma_min.
            x = x + math.sqrt(sigma**2 - sigma_min**2) * _randn(shape, generator, device)
            x = net(x, torch.full((batch,), sigma, device=device)).clamp(-1.0, 1.0)
    return x


def sample_diffusion(net, shape, num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                     rho: float = 7.0, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Deterministic EDM sampler (Karras et al. 2022, Algorithm 1: Heun, 2 num_steps - 1 evaluations), clamped.

    Noise levels t_0 = sigma_max > ... > t_{num_steps-1} = sigma_min (Karras rho grid), then t_N = 0.
    The ODE state is kept in float64; `net` is EDM's denoiser D(x, sigma) (Precond kind="diffusion").
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    device = _net_device(net, device)
    t_steps = karras_sigmas(num_steps, sigma_min, sigma_max, rho).flip(0).tolist() + [0.0]
    batch = shape[0]

    param = next(iter(net.parameters()), None)
    net_dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def denoise(x, t):
        return net(x.to(net_dtype), torch.full((batch,), t, device=device, dtype=net_dtype)).double()

    with _EvalMode(net), torch.no_grad():
        x = _randn(shape, generator, device).double() * t_steps[0]
        for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
            d_cur = (x - denoise(x, t_cur)) / t_cur
            x_next = x + (t_next - t_cur) * d_cur
            if t_next > 0:
                d_next = (x_next - denoise(x_next, t_next)) / t_next
                x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
            x = x_next
    return x.float().clamp(-1.0, 1.0)
