"""The loss equations, each a short function named for what it computes, returning one value per sample.

consistency_loss is iCT's Eq. 8 and diffusion_loss EDM's Eq. 2; pseudo_huber is iCT's Eq. 9. They take tensors
(the noise, the noise levels, the weights) and the networks, never a config: ict_core/objectives.py picks the
noise levels from the curriculum, draws the noise and calls these. The unreduced (B,) fp32 loss goes back to the
trainer, which reduces, scales and logs it.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch


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
    """||x - y||_2^2 summed over the whole sample, shape (B,), at least fp32 (CT's metric, loss.metric=l2)."""
    return _per_sample_sq_norm(x, y)


def _fork_rng_kwargs(x: torch.Tensor) -> dict:
    """fork_rng arguments covering the generator dropout draws from (the CPU one is always forked).

    device_type is passed only for accelerators: some torch releases reject device_type=None.
    """
    if x.device.type == "cpu":
        return {"devices": []}
    return {"devices": [x.device], "device_type": x.device.type}


@contextmanager
def stop_gradient_pass(teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor):
    """The teacher's pass of Eq. 8: no gradient, the student's train/eval mode, and the dropout masks the student
    pass that follows draws (the random stream is forked, so the student replays it). `x` names the device."""
    mode = teacher.training
    if mode != student.training:
        teacher.train(student.training)
    try:
        with torch.random.fork_rng(**_fork_rng_kwargs(x)), torch.no_grad():
            yield
    finally:
        if mode != student.training:
            teacher.train(mode)


def consistency_loss(student, teacher, x: torch.Tensor, z: torch.Tensor, sigma_i: torch.Tensor,
                     sigma_next: torch.Tensor, weight: torch.Tensor, distance) -> torch.Tensor:
    """iCT Eq. 8, one value per sample (B,) in fp32:

        lambda(sigma_i) d(f_theta(x + sigma_{i+1} z, sigma_{i+1}), f_theta-(x + sigma_i z, sigma_i))

    student = f_theta; teacher = f_theta- (the student itself for iCT, whose stop-gradient is the no-grad pass;
    CT's EMA teacher otherwise); sigma_i, sigma_next = sigma_{i+1} and weight = lambda(sigma_i) are (B,) tensors of
    the drawn grid indices; distance(a, b) -> (B,) is d (pseudo_huber, Eq. 9, or squared_l2). Both passes see the
    same dropout masks (stop_gradient_pass).
    """
    view = (-1,) + (1,) * (x.ndim - 1)
    with stop_gradient_pass(teacher, student, x):
        target = teacher(x + sigma_i.view(view) * z, sigma_i)  # f_theta-(x + sigma_i z, sigma_i), no gradient
    pred = student(x + sigma_next.view(view) * z, sigma_next)  # f_theta(x + sigma_{i+1} z, sigma_{i+1})
    # The distance in fp32 (lambda reaches ~2.6e4 at N = 1281) even inside a bf16 autocast region.
    with torch.autocast(device_type=x.device.type, enabled=False):
        dist = distance(pred.float(), target.detach().float())  # d(., .)
        return weight.to(dist.dtype) * dist  # lambda(sigma_i) d(., .)


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def diffusion_loss(net, x: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's denoising loss (Karras et al. 2022, Eq. 2 with Table 1's weighting), one value per sample (B,) fp32:

        lambda(sigma) ||D(x + sigma z, sigma) - x||^2, AVERAGED over the C*H*W values

    so that the value is ~1 at initialisation whatever the image size.
    """
    view = (-1,) + (1,) * (x.ndim - 1)
    denoised = net(x + sigma.view(view) * z, sigma)
    with torch.autocast(device_type=x.device.type, enabled=False):
        err = (denoised.float() - x.float()).square().flatten(1).mean(dim=1)
        return edm_weight(sigma.float(), sigma_data) * err
