"""The evaluation EMA: its per-step rate, with a warm-up, how much of the initial weights it still holds, and the
update itself (also that of CT's EMA teacher).

A fixed rate r started at the initialization keeps r^k of the initial weights after k steps (0.999^1000 = 37%);
the network's output convolution starts at zero, so such an average shrinks samples toward the mean and every
in-loop FD measures that lag as much as the model. The warm-up follows EDM's ramp-up (Karras et al. 2022,
training_loop): the EMA's half-life, in steps, is

    h(k) = min(h_rate, rampup * k),   h_rate = ln(0.5) / ln(train.ema_rate),

and after optimizer step k (k = 1, 2, ...) the EMA is updated with

    beta(k) = 0.5 ** (1 / h(k)),   ema <- beta(k) * ema + (1 - beta(k)) * student.

Early on the EMA averages over the last ~rampup * k steps only; once rampup * k exceeds the half-life of
train.ema_rate, beta(k) = train.ema_rate. The weight left on the initialization after k steps is the product
beta(1) ... beta(k) (initial_weight_share). train.ema_rampup = 0 gives the constant rate train.ema_rate.
"""
from __future__ import annotations

import copy
import math

import torch


def half_life(ema_rate: float) -> float:
    """Steps after which a constant-rate EMA has halved a weight: ln(0.5) / ln(rate); 0 for rate 0, inf for 1."""
    if not 0.0 <= ema_rate <= 1.0:
        raise ValueError(f"train.ema_rate must be in [0, 1], got {ema_rate}")
    if ema_rate == 0.0:
        return 0.0
    if ema_rate == 1.0:
        return math.inf
    return math.log(0.5) / math.log(ema_rate)


def ema_beta(step: int, ema_rate: float, rampup: float) -> float:
    """beta(step) of the module docstring, for the update after optimizer step `step` >= 1."""
    if step < 1:
        raise ValueError(f"ema_beta is defined for steps >= 1 (the update after the first optimizer step), got {step}")
    if not 0.0 <= rampup <= 1.0:
        raise ValueError(f"train.ema_rampup must be in [0, 1], got {rampup}")
    if rampup == 0.0:
        half_life(ema_rate)  # range check
        return float(ema_rate)
    h = min(half_life(ema_rate), rampup * step)
    if h <= 0.0:
        return 0.0
    return float(0.5 ** (1.0 / h))


def initial_weight_share(step: int, ema_rate: float, rampup: float) -> float:
    """Weight of the initialization in the EMA after `step` updates: prod_{k=1..step} beta(k)."""
    log_share = 0.0
    for k in range(1, step + 1):
        beta = ema_beta(k, ema_rate, rampup)
        if beta == 0.0:
            return 0.0
        log_share += math.log(beta)
    return math.exp(log_share)


@torch.no_grad()
def ema_update(target: torch.nn.Module, source: torch.nn.Module, rate: float) -> None:
    """target <- rate * target + (1 - rate) * source, parameters and floating buffers alike."""
    t_params = list(target.parameters())
    s_params = [p.detach() for p in source.parameters()]
    if rate == 0.0:
        torch._foreach_copy_(t_params, s_params)
    else:
        torch._foreach_lerp_(t_params, s_params, 1.0 - rate)
    for t_buf, s_buf in zip(target.buffers(), source.buffers()):
        t_buf.copy_(s_buf)


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` that no optimizer updates: the start of an EMA."""
    out = copy.deepcopy(module)
    out.requires_grad_(False)
    return out
