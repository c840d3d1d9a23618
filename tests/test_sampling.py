"""Samplers: consistency one-/two-step with the sqrt(sigma^2 - sigma_min^2) re-noise, EDM Heun."""
import math

import pytest
import torch
from torch import nn

from ict_core.config import load_config
from ict_core.network import build_network
from ict_core.sampling import sample_consistency, sample_diffusion
from ict_core.schedule import karras_sigmas


def _net(cfg, in_channels, resolution):
    """The network of a whole config, built as the trainer builds it (its objective's preconditioning)."""
    from ict_core.objectives import objective_class

    return build_network(cfg.network, cfg.precond, objective_class(cfg.loss.objective).precond, in_channels,
                         resolution)


class Recorder(nn.Module):
    """A real module f(x, sigma) = scale * x (plus a parameter, so the device is found) that logs its calls."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(scale))
        self.calls = []

    def forward(self, x, sigma):
        self.calls.append((x.clone(), sigma.clone(), self.training, torch.is_grad_enabled()))
        return self.weight * x


def test_one_step_is_f_of_sigma_max_noise_clamped():
    net = Recorder(0.01).train()
    out = sample_consistency(net, (4, 1, 8, 8), [80.0], generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x_in, sigma, training, grad = net.calls[0]
    assert len(net.calls) == 1
    assert torch.allclose(x_in, 80.0 * z)
    assert torch.equal(sigma, torch.full((4,), 80.0))
    assert torch.allclose(out, (0.01 * 80.0 * z).clamp(-1, 1), atol=1e-6)
    assert out.abs().max().item() == 1.0  # 0.8 z exceeds 1 somewhere: clamping happened
    assert not training and not grad
    assert net.training  # mode restored


def test_two_step_renoises_with_sqrt_sigma_sq_minus_sigma_min_sq():
    net = Recorder(0.01)
    gen = torch.Generator().manual_seed(1)
    out = sample_consistency(net, (3, 2, 4, 4), [80.0, 0.821], sigma_min=0.002, generator=gen)
    ref = torch.Generator().manual_seed(1)
    z1 = torch.randn(3, 2, 4, 4, generator=ref)
    z2 = torch.randn(3, 2, 4, 4, generator=ref)
    x1 = (0.01 * 80.0 * z1).clamp(-1, 1)
    x_in2, sigma2, _, _ = net.calls[1]
    assert (x_in2 - (x1 + math.sqrt(0.821**2 - 0.002**2) * z2)).abs().max() < 5e-7
    assert (x_in2 - (x1 + 0.821 * z2)).abs().max() > 1e-6  # the re-noise of public ports' mistake is detectable
    assert torch.equal(sigma2, torch.full((3,), 0.821))
    assert torch.allclose(out, (0.01 * x_in2).clamp(-1, 1), atol=1e-6)


def test_consistency_sampling_real_network_shapes_and_eval_mode():
    torch.manual_seed(0)
    net = _net(load_config(overrides={"network.channels": 8, "network.dropout": 0.5}), 3, 16).train()
    gen = torch.Generator().manual_seed(0)
    a = sample_consistency(net, (2, 3, 16, 16), [80.0, 0.821], generator=gen)
    b = sample_consistency(net, (2, 3, 16, 16), [80.0, 0.821], generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)  # eval mode: no dropout, so the same noise gives the same samples
    assert net.training


def test_consistency_sampling_bad_sigmas():
    net = Recorder()
    with pytest.raises(ValueError, match="at least one"):
        sample_consistency(net, (1, 1, 2, 2), [])
    with pytest.raises(ValueError, match="descending"):
        sample_consistency(net, (1, 1, 2, 2), [0.821, 80.0])
    with pytest.raises(ValueError, match="exceed sigma_min"):
        sample_consistency(net, (1, 1, 2, 2), [80.0, 0.001])


class ExactDenoiser(nn.Module):
    """EDM's ideal denoiser for data concentrated at one point mu: D(x, sigma) = mu."""

    def __init__(self, mu):
        super().__init__()
        self.mu = nn.Parameter(mu)
        self.calls = 0

    def forward(self, x, sigma):
        self.calls += 1
        return self.mu.expand_as(x)


def test_heun_sampler_reaches_the_data_point_and_counts_evaluations():
    mu = torch.full((1, 1, 4, 4), 0.3)
    net = ExactDenoiser(mu)
    out = sample_diffusion(net, (5, 1, 4, 4), num_steps=6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, mu.expand(5, 1, 4, 4), atol=1e-5)
    assert net.calls == 2 * 6 - 1  # Heun: one extra evaluation per step except the last (to sigma = 0)


def test_heun_sampler_gaussian_data_converges_to_ode_solution():
    """For data ~ N(0, s^2) the ideal denoiser is x s^2/(s^2 + sigma^2) and the probability-flow ODE maps
    x(sigma_max) to x(0) = x(sigma_max) s / sqrt(s^2 + sigma_max^2). Heun is second order: 4x the steps
    cut the error ~16x (hand-run: 7.1% at 20 steps, 0.35% at 80). s = 0.1 keeps samples inside the clamp."""
    s = 0.1

    class Gauss(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x, sigma):
            return x * s**2 / (s**2 + sigma[:, None, None, None] ** 2)

    z = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0)).double()
    exact = z * 80.0 * s / math.sqrt(s**2 + 80.0**2)
    errors = []
    for steps in (20, 80):
        out = sample_diffusion(Gauss(), (16, 1, 2, 2), num_steps=steps, generator=torch.Generator().manual_seed(0))
        errors.append(((out.double() - exact) / exact).abs().max().item())
    assert errors[1] < 0.005 and errors[0] > 8 * errors[1], errors


def test_diffusion_sampling_real_network_and_bad_steps():
    net = _net(load_config(overrides={"network.channels": 8, "loss.objective": "diffusion"}), 1, 8)
    out = sample_diffusion(net, (2, 1, 8, 8), num_steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(karras_sigmas(3).flip(0)[0], torch.tensor(80.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_steps"):
        sample_diffusion(net, (2, 1, 8, 8), num_steps=1)
