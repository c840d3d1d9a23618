"""Where this process runs: its rank and world size in a torch.distributed group someone else initialised (Ray
Train, torchrun), the collective operations the training loop needs, the device train.device names, and the
process's own random streams (each rank's, saved in every checkpoint)."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from .config import ConfigError


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of `values` over all ranks (a copy; `values` itself is left alone)."""
    if world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size
    return values


def broadcast_floats(values: list[float], device: torch.device, world_size: int) -> list[float]:
    """Rank 0's `values` on every rank."""
    if world_size == 1:
        return values
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(buf, src=0)
    return buf.tolist()


def agreed_mean(value: torch.Tensor, device: torch.device, world_size: int) -> float:
    """The mean of `value` over all ranks as one float, rank 0's on every rank: for decisions all ranks must take
    alike (the adaptive curriculum's)."""
    mean = all_reduce_mean(value, world_size)
    return broadcast_floats([float(mean)], device, world_size)[0]


def any_nonfinite(value: torch.Tensor, world_size: int) -> bool:
    """True on every rank when `value` is NaN or infinite on any rank."""
    bad = (~torch.isfinite(value)).to(torch.float32).reshape(1)
    if world_size > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return bool(bad.item() > 0)


class RunningMean:
    """The mean of per-step values since the last pop(), over this rank's steps and then over all ranks. Sums in
    float64 on the device, so that add() costs no host sync."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, value: torch.Tensor) -> None:
        self.sum += value
        self.count += 1

    def pop(self, world_size: int) -> float:
        """The mean over all ranks (a collective; NaN, and none, when nothing was added); then start over."""
        mean = float(all_reduce_mean(self.sum / self.count, world_size)) if self.count else float("nan")
        self.sum.zero_()
        self.count = 0
        return mean


def gather_objects(obj, world_size: int) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def resolve_device(name: str) -> torch.device:
    """train.device: auto (CUDA when available), cuda (this process's LOCAL_RANK GPU) or cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; allowed here: auto, cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def rng_state(device: torch.device) -> dict:
    """This process's global random streams: torch's CPU generator, numpy's, and `device`'s CUDA generator."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what rng_state() returned (a CUDA state only onto a CUDA device)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
