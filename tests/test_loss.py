"""Losses: whole-sample pseudo-Huber, the iCT consistency loss (shared dropout masks, stop-gradient, EMA teacher,
caller-supplied noise for DDP) and the EDM diffusion loss, on real networks and real training steps."""
import copy
import math

import pytest
import torch
from torch import nn

from ict_core import schedule
from ict_core.config import default_huber_c, load_config
from ict_core.loss import consistency_loss, pseudo_huber, squared_l2
from ict_core.network import Precond, UNet, build_network
from ict_core.objectives import build_objective


def _cfg(**overrides):
    base = {"train.total_steps": 400, "network.channels": 16, "network.dropout": 0.3}
    base.update(overrides)
    return load_config(overrides=base)


def _net(cfg, channels=1, resolution=8):
    return build_network(cfg.network, cfg.precond, build_objective(cfg, 64).precond, channels, resolution)


def _loss(objective, net, x, step, seed=0, teacher=None):
    """The objective's loss on noise drawn from a generator seeded with `seed`."""
    noise = objective.draw(step, x.shape[0], x.shape[1:], torch.Generator().manual_seed(seed))
    return objective.loss(net, x, step, noise, teacher=teacher)


def _data(batch=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, 8, 8, generator=gen) * 2 - 1


def _randomize_(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module


# ---- metrics --------------------------------------------------------------------------------------------------

def test_pseudo_huber_on_whole_sample_norm():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, 4, 4, generator=gen), torch.randn(5, 3, 4, 4, generator=gen)
    c = 0.03
    sq = ((x - y) ** 2).flatten(1).sum(1)
    expected = torch.sqrt(sq + c**2) - c
    d = pseudo_huber(x, y, c)
    assert d.shape == (5,) and d.dtype == torch.float32
    assert torch.allclose(d, expected, rtol=1e-5)
    # Not the per-pixel pseudo-Huber averaged over pixels (public ports' mistake).
    per_pixel = (torch.sqrt((x - y) ** 2 + c**2) - c).flatten(1).mean(1)
    assert not torch.allclose(d, per_pixel, rtol=1e-2)


def test_pseudo_huber_limits():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64), torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    norm = (x - y).flatten(1).norm(dim=1)
    assert torch.allclose(pseudo_huber(x, y, 1e-9), norm, rtol=1e-8)  # c -> 0: L2 norm
    assert torch.allclose(pseudo_huber(x, y, 0.0), norm)
    big = 1e6  # c -> inf: ||x-y||^2 / (2c)
    assert torch.allclose(pseudo_huber(x, y, big) * 2 * big, norm**2, rtol=1e-5)
    # Tiny differences keep their precision in fp32 (no sqrt(c^2 + e) - c cancellation).
    a = torch.zeros(1, 1, 1, 1)
    b = torch.full((1, 1, 1, 1), 1e-5)
    assert pseudo_huber(a, b, 0.03).item() == pytest.approx(1e-10 / 0.06, rel=1e-4)
    with pytest.raises(ValueError, match="c must be"):
        pseudo_huber(x, y, -1.0)


def test_squared_l2_and_default_c():
    x, y = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    assert torch.equal(squared_l2(x, y), torch.full((2,), 12.0))
    assert default_huber_c(3 * 32 * 32) == pytest.approx(0.0299, abs=1e-4)
    assert default_huber_c(3 * 64 * 64) == pytest.approx(0.0599, abs=1e-4)
    with pytest.raises(ValueError, match="dim"):
        default_huber_c(0)


# ---- consistency loss -----------------------------------------------------------------------------------------

class MaskRecorder(nn.Module):
    """A real dropout layer that keeps the masks it drew (inserted after a real conv)."""

    def __init__(self, p):
        super().__init__()
        self.p, self.masks = p, []

    def forward(self, x):
        if not self.training:
            return x
        mask = (torch.rand_like(x) >= self.p).to(x.dtype)
        self.masks.append(mask)
        return x * mask / (1 - self.p)


class TinyBackbone(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 3, padding=1)
        self.drop = MaskRecorder(p)
        self.conv1 = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x_in, c_noise):
        return self.conv1(self.drop(torch.tanh(self.conv0(x_in) + c_noise[:, None, None, None])))


def test_teacher_and_student_share_dropout_masks():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    net = Precond(backbone).train()
    loss_fn = build_objective(_cfg(), 64)
    _loss(loss_fn, net, _data(), 0)
    teacher_mask, student_mask = backbone.drop.masks
    assert torch.equal(teacher_mask, student_mask)
    _loss(loss_fn, net, _data(), 0)
    assert not torch.equal(backbone.drop.masks[2], teacher_mask)  # a new step draws new masks
    assert torch.equal(backbone.drop.masks[2], backbone.drop.masks[3])


def test_shared_masks_on_real_unet_with_equal_sigmas():
    """With sigma_i == sigma_{i+1} (a crafted grid) teacher and student are the same function: the loss is 0
    only if both passes saw the same dropout masks."""
    torch.manual_seed(0)
    net = Precond(_randomize_(UNet(in_channels=1, resolution=8, channels=16, channel_mult=(1, 2), num_blocks=1,
                                   attn_resolutions=(), dropout=0.5, fourier_scale=0.02))).train()
    sigma = torch.full((8,), 0.5)
    loss = consistency_loss(net, net, _data(), torch.randn(8, 1, 8, 8), sigma, sigma, torch.ones(8), squared_l2)
    assert torch.equal(loss, torch.zeros_like(loss))
    # Same inputs without the fork: two passes differ, so the zero above is the shared masks at work.
    x, z = _data(), torch.randn(8, 1, 8, 8)
    assert not torch.equal(net(x + 0.5 * z, torch.full((8,), 0.5)), net(x + 0.5 * z, torch.full((8,), 0.5)))


def test_gradients_flow_only_through_student():
    torch.manual_seed(0)
    net = _net(_cfg())
    _randomize_(net)
    loss_fn = build_objective(_cfg(), 64)
    x = _data()
    calls = []
    net.register_forward_hook(lambda m, inp, out: calls.append((torch.is_grad_enabled(), out.requires_grad)))
    loss, info = _loss(loss_fn, net, x, 100)
    assert calls == [(False, False), (True, True)]  # teacher under no_grad, then the student
    assert loss.shape == (8,) and loss.dtype == torch.float32 and loss.requires_grad
    loss.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    # The gradient equals that of the loss with the teacher output held fixed.
    gen = torch.Generator().manual_seed(5)
    indices, z = loss_fn.draw(100, 8, x.shape[1:], gen).values()
    net.eval()  # no dropout: both computations see the same function
    net.zero_grad()
    loss_fn.loss(net, x, 100, {"indices": indices, "z": z})[0].sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    sigmas, _, weights = loss_fn.grid(info["num_points"])
    lo, hi = sigmas[indices].float(), sigmas[indices + 1].float()
    with torch.no_grad():
        target = net(x + lo[:, None, None, None] * z, lo)
    net.zero_grad()
    manual = weights[indices].float() * pseudo_huber(net(x + hi[:, None, None, None] * z, hi), target, loss_fn.huber_c)
    manual.sum().backward()
    for g, p in zip(grads, net.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def test_loss_value_matches_spec_formula():
    torch.manual_seed(0)
    cfg = _cfg(**{"loss.huber_c": 0.05})
    net = _randomize_(_net(cfg)).eval()
    loss_fn = build_objective(cfg, 64)
    x = _data()
    step = 150  # K = 400: K' = 50, N = 10 * 2^3 + 1 = 81
    indices, z = loss_fn.draw(step, 8, x.shape[1:], torch.Generator().manual_seed(3)).values()
    loss, info = loss_fn.loss(net, x, step, {"indices": indices, "z": z})
    assert info["num_points"] == 81 == schedule.num_points(step, 400)
    sigmas = schedule.karras_sigmas(81)
    lo, hi = sigmas[indices].float(), sigmas[indices + 1].float()
    with torch.no_grad():
        student = net(x + hi[:, None, None, None] * z, hi)
        teacher = net(x + lo[:, None, None, None] * z, lo)
    d = torch.sqrt(((student - teacher) ** 2).flatten(1).sum(1) + 0.05**2) - 0.05
    expected = (1.0 / (sigmas[indices + 1] - sigmas[indices])).float() * d
    assert torch.allclose(loss.detach(), expected, rtol=1e-4)
    assert info["sigma_mean"].item() == pytest.approx(hi.mean().item(), rel=1e-6)


def test_config_choices_reach_the_loss():
    x = _data()
    net = _randomize_(_net(_cfg())).eval()
    indices = torch.zeros(8, dtype=torch.long)
    z = torch.randn_like(x)
    ict, _ = build_objective(_cfg(), 64).loss(net, x, 0, {"indices": indices, "z": z})
    ct, _ = build_objective(_cfg(**{"loss.weighting": "uniform", "loss.metric": "l2"}), 64).loss(
        net, x, 0, {"indices": indices, "z": z})
    sigmas = schedule.karras_sigmas(11)
    lam = 1 / (sigmas[1] - sigmas[0])
    ratio = (ict / ct).detach()
    # lambda * pseudo-Huber vs 1 * squared L2 on the same pair of outputs.
    with torch.no_grad():
        lo, hi = torch.full((8,), sigmas[0].item()), torch.full((8,), sigmas[1].item())
        s, t = net(x + hi[:, None, None, None] * z, hi), net(x + lo[:, None, None, None] * z, lo)
    expected = lam * pseudo_huber(s, t, default_huber_c(64)) / squared_l2(s, t)
    assert torch.allclose(ratio.double(), expected.double(), rtol=1e-4)
    # Uniform noise schedule draws every interval equally often.
    uni = build_objective(_cfg(**{"loss.noise_schedule": "uniform"}), 64)
    assert torch.equal(uni.grid(11)[1], torch.full((10,), 0.1, dtype=torch.float64))


def test_num_points_recomputed_each_call_and_grid_cached():
    loss_fn = build_objective(_cfg(**{"train.total_steps": 16}), 64)  # K' = 2
    net = _net(_cfg())
    seen = [_loss(loss_fn, net, _data(2), step)[1]["num_points"] for step in (0, 2, 4, 1, 100)]
    assert seen == [11, 21, 41, 11, 1281]
    assert loss_fn.grid(21)[0] is loss_fn.grid(21)[0]


def test_ema_teacher_is_used_and_gets_no_gradient():
    torch.manual_seed(0)
    cfg = _cfg(**{"loss.teacher": "ema", "network.dropout": 0.0})
    net = _randomize_(_net(cfg), seed=0).train()
    teacher = _randomize_(copy.deepcopy(net), seed=1).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss_fn = build_objective(cfg, 64)
    x = _data()
    gen_args = dict(indices=torch.full((8,), 5, dtype=torch.long), z=torch.randn_like(x))
    with_teacher, _ = loss_fn.loss(net, x, 100, gen_args, teacher=teacher)
    self_teacher, _ = loss_fn.loss(net, x, 100, gen_args)
    assert not torch.allclose(with_teacher, self_teacher)
    sigmas = loss_fn.grid(loss_fn.num_points(100))[0]
    lo, hi = sigmas[5].float(), sigmas[6].float()
    with torch.no_grad():
        target = teacher(x + lo * gen_args["z"], lo)
        pred = net(x + hi * gen_args["z"], hi)
    expected = pseudo_huber(pred, target, loss_fn.huber_c) / (sigmas[6] - sigmas[5]).float()
    assert torch.allclose(with_teacher.detach(), expected, rtol=1e-4)
    with_teacher.mean().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training  # its mode is restored after the pass


def test_caller_supplied_noise_gives_ddp_equivalent_slices():
    """Two 'ranks' each computing their slice of a globally drawn batch reproduce the single-process loss."""
    torch.manual_seed(0)
    cfg = _cfg(**{"network.dropout": 0.0})
    net = _randomize_(_net(cfg)).train()
    loss_fn = build_objective(cfg, 64)
    x = _data(8)
    indices, z = loss_fn.draw(60, 8, x.shape[1:], torch.Generator().manual_seed(11)).values()
    full, _ = loss_fn.loss(net, x, 60, {"indices": indices, "z": z})
    halves = [loss_fn.loss(net, x[r * 4:(r + 1) * 4], 60, {"indices": indices[r * 4:(r + 1) * 4], "z": z[r * 4:(r + 1) * 4]})[0]
              for r in range(2)]
    assert torch.allclose(torch.cat(halves), full, rtol=1e-5, atol=1e-7)
    # The same generator seed reproduces the draw; the generator path gives the same loss as explicit noise.
    again = loss_fn.probe_loss(net, x, 60, torch.Generator().manual_seed(11))
    assert torch.allclose(again, full, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_loss_is_fp32():
    net = _randomize_(_net(_cfg())).train()
    loss_fn = build_objective(_cfg(), 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = _loss(loss_fn, net, _data(), 399)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()


def test_real_training_steps_reduce_the_loss():
    """Real Adam steps on fixed data and a fixed noise draw. The teacher is a frozen copy, so the student
    regresses onto a fixed target and its loss must fall (with the self-teacher the target moves too)."""
    torch.manual_seed(0)
    cfg = _cfg(**{"network.dropout": 0.0, "network.channels": 8})
    net = _net(cfg).train()
    teacher = copy.deepcopy(net).requires_grad_(False)
    loss_fn = build_objective(cfg, 64)
    x = _data(32)
    indices, z = loss_fn.draw(0, 32, x.shape[1:], torch.Generator().manual_seed(0)).values()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = loss_fn.loss(net, x, 0, {"indices": indices, "z": z}, teacher=teacher)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses


# ---- diffusion loss -------------------------------------------------------------------------------------------

def test_diffusion_loss_formula_and_supplied_noise():
    torch.manual_seed(0)
    cfg = _cfg(**{"loss.objective": "diffusion", "network.dropout": 0.0})
    net = _randomize_(_net(cfg)).eval()
    loss_fn = build_objective(cfg, 64)
    x = _data()
    sigma, z = loss_fn.draw(0, 8, x.shape[1:], torch.Generator().manual_seed(2)).values()
    loss, info = loss_fn.loss(net, x, 0, {"sigma": sigma, "z": z})
    with torch.no_grad():
        d = net(x + sigma[:, None, None, None] * z, sigma)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    assert loss.shape == (8,) and loss.dtype == torch.float32
    assert torch.allclose(loss.detach(), weight * ((d - x) ** 2).flatten(1).mean(1), rtol=1e-5)
    # Same seed through the generator path gives the same draw.
    again = loss_fn.probe_loss(net, x, 0, torch.Generator().manual_seed(2))
    assert torch.allclose(again, loss, rtol=1e-5)


def test_diffusion_sigma_is_lognormal_with_config_params():
    cfg = _cfg(**{"loss.objective": "diffusion", "loss.p_mean": -1.2, "loss.p_std": 1.2})
    sigma = build_objective(cfg, 64).draw(0, 100_000, (1,), torch.Generator().manual_seed(0))["sigma"]
    log_sigma = sigma.log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.02)


def test_diffusion_loss_is_about_one_at_init():
    # Zero-initialised output: D = c_skip x, and EDM's weighting makes the expected loss ~ 1 for data of std sigma_data.
    cfg = _cfg(**{"loss.objective": "diffusion"})
    net = _net(cfg).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 8, 8, generator=gen) * 0.5
    loss = build_objective(cfg, 64).probe_loss(net, x, 0, gen)
    assert 0.8 < loss.mean().item() < 1.2


def test_diffusion_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    cfg = _cfg(**{"loss.objective": "diffusion", "network.dropout": 0.0, "network.channels": 8})
    net = _net(cfg).train()
    loss_fn = build_objective(cfg, 64)
    x = _data(32)
    sigma, z = loss_fn.draw(0, 32, x.shape[1:], torch.Generator().manual_seed(0)).values()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = loss_fn.loss(net, x, 0, {"sigma": sigma, "z": z})[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_fork_rng_arguments_cover_the_dropout_generator():
    """CPU inputs fork only the CPU generator and pass no device_type (torch 2.11 rejects device_type=None);
    CUDA inputs fork that device's generator. The CUDA path was checked on an H200: shared masks give loss 0,
    forking only the CPU generator does not."""
    from ict_core.loss import _fork_rng_kwargs

    assert _fork_rng_kwargs(torch.zeros(1)) == {"devices": []}
    meta = torch.empty(1, device="meta")
    assert _fork_rng_kwargs(meta) == {"devices": [meta.device], "device_type": "meta"}
