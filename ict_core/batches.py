"""GlobalBatches draws the training batches of a run, the same global batch on every rank of a DDP group."""
from __future__ import annotations

import torch

from ict_core.data_types import Dataset


class GlobalBatches:
    """The training batches of one run. The indices and flips of the GLOBAL batch (train.batch_size images) come
    from one generator seeded alike on every rank and each rank keeps its rows, so 2 ranks x b images equal 1 rank
    x 2b (dropout aside). `noise_generator` is for the objective's noise of the global batch: the same generator
    on the CPU, its own one on a GPU. Both are in every checkpoint (state_dict)."""

    def __init__(self, dataset: Dataset, batch_size: int, rank: int, world_size: int, seed: int,
                 device: torch.device, channels_last: bool = False):
        self.generator = torch.Generator().manual_seed(seed)
        self.noise_generator = (
            torch.Generator(device=device).manual_seed(seed + 1) if device.type == "cuda" else self.generator
        )
        train = dataset.train
        on_device = device.type == "cuda" and train.numel() * train.element_size() < 4 * 2**30
        self.images = train.to(device) if on_device else train
        self.flip = dataset.hflip
        self.batch_size, self.device, self.channels_last = batch_size, device, channels_last
        local = batch_size // world_size
        self.rows = (rank * local, (rank + 1) * local)  # this rank's [lo, hi) of the global batch

    def draw(self) -> torch.Tensor:
        """This rank's images of the next global batch, flipped where the data set uses flips."""
        lo, hi = self.rows
        idx = torch.randint(len(self.images), (self.batch_size,), generator=self.generator)[lo:hi]
        x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
        if self.flip:
            flip = (torch.rand(self.batch_size, generator=self.generator) < 0.5)[lo:hi].to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def state_dict(self) -> dict:
        shared = self.noise_generator is self.generator
        return {"batch_generator": self.generator.get_state(),
                "noise_generator": None if shared else self.noise_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["batch_generator"])
        if state.get("noise_generator") is not None and self.noise_generator is not self.generator:
            self.noise_generator.set_state(state["noise_generator"].cpu())
