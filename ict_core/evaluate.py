"""Evaluation during training: feature FD of one- and two-step samples (or the diffusion objective's sampler),
its bootstrap standard error, KID, the loss on fixed train and held-out images, and nearest-neighbour distances
(docs/MEASUREMENT.md). Evaluator measures on one process; Evaluations runs it on rank 0 of a run and shares the
values with every rank."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .config import EvalConfig
from .dist import broadcast_floats
from .records import EVALUATOR_METRICS

EVAL_SEED_OFFSET = 7_919  # evaluation noise is fixed per run and independent of the training RNG
_KID_SUBSETS = 10  # 100 costs seconds per evaluation at small scale; 10 suffices for tracking a run
_LOSS_PROBE_IMAGES = 256  # images in the fixed train / held-out subsets of loss_train and loss_heldout
_SAMPLE_CHUNK = 1000  # images per sampler call during evaluation



class Evaluator:
    """Feature FD (one- and two-step, or Heun for diffusion), KID, train/held-out loss and nearest-neighbour
    distances of the EMA network. Noise is fixed per run (by `seed`, the run's train.seed), and the global RNG is
    left untouched. `settings` is the eval section (EvalConfig); `total_steps` only titles the sample grids."""

    def __init__(self, settings: EvalConfig, seed: int, dataset, device: torch.device, objective,
                 total_steps: int = 0):
        from . import featnet, image_grids, metrics

        self.settings, self.seed, self.total_steps = settings, seed, total_steps
        self.dataset = dataset
        self.device = device
        self.objective = objective
        self.metrics, self.image_grids = metrics, image_grids
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            self.extractor = featnet.get_feature_extractor(dataset, settings, device)
            self.ref_mu, self.ref_sigma = featnet.reference_stats(dataset, self.extractor, settings.cache_dir)
            g = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
            train = dataset.train
            reference = featnet.reference_images(dataset, self.extractor)  # KID's reference is FD's
            num_ref = min(len(reference), max(2 * settings.num_samples, 1000), 10_000)
            ref_idx = torch.randperm(len(reference), generator=g)[:num_ref]
            self.ref_images = reference[ref_idx]
            self.ref_feats = self._features(self.ref_images)
            probe_idx = torch.randperm(len(train), generator=g)[:_LOSS_PROBE_IMAGES]
            self.probe_train = train[probe_idx]
            self.probe_heldout = dataset.heldout[:_LOSS_PROBE_IMAGES]
            nn_ref = self.probe_heldout if len(self.probe_heldout) else self.probe_train
            self.nn_dist_ref = float(metrics.nearest_neighbor_distance(nn_ref.to(device), train.to(device)).mean())

    @torch.no_grad()
    def _features(self, images: torch.Tensor, chunk: int = 500) -> torch.Tensor:
        return torch.cat([self.extractor(images[i : i + chunk].to(self.device)).float().cpu()
                          for i in range(0, len(images), chunk)])

    def _fd(self, feats: torch.Tensor) -> float:
        mu, sigma = self.metrics.feature_stats(feats)
        return float(self.metrics.frechet_distance(mu, sigma, self.ref_mu, self.ref_sigma))

    @torch.no_grad()
    def _sample(self, net, steps: int | None, seed: int) -> torch.Tensor:
        """eval.num_samples samples of `net` in `steps` (None: the objective's own sampler) from fixed noise."""
        num_samples = self.settings.num_samples
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = []
        # Chunks bound the activation memory of a 10k-sample evaluation next to the training state on a GPU.
        for start in range(0, num_samples, _SAMPLE_CHUNK):
            count = min(_SAMPLE_CHUNK, num_samples - start)
            shape = (count, self.dataset.channels, self.dataset.resolution, self.dataset.resolution)
            out.append(self.objective.sample(net, shape, steps, generator, self.device))
        return torch.cat(out)

    def _probe_loss(self, net, images: torch.Tensor, step: int, seed: int) -> float:
        if len(images) == 0:
            return float("nan")
        g = torch.Generator(device=self.device).manual_seed(seed)
        return float(self.objective.probe_loss(net, images.to(self.device), step, g).float().mean())

    @torch.no_grad()
    def __call__(self, net: torch.nn.Module, step: int, sample_path: Path | None = None,
                 student: torch.nn.Module | None = None) -> dict:
        """Metrics of `net` (the evaluation EMA); fd_student is the FD of `student` from the same noise."""
        nets = [net] + ([student] if student is not None else [])
        was_training = [m.training for m in nets]
        for m in nets:
            m.eval()
        seed = self.seed + EVAL_SEED_OFFSET
        two_step = 2 in self.objective.sample_steps
        one = 1 if two_step else None  # the one-step sampler, or the objective's own
        out = {}
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                samples = self._sample(net, one, seed)
                two = None
                if two_step:
                    two = self._sample(net, 2, seed + 1)
                    out["fd_2step"] = self._fd(self._features(two))
                else:
                    out["fd_2step"] = float("nan")
                feats = self._features(samples)
                out["fd"] = self._fd(feats)
                out["fd_se"] = self.metrics.frechet_distance_se(feats, self.ref_mu, self.ref_sigma, seed=seed)
                out["fd_student"] = (self._fd(self._features(self._sample(student, one, seed)))
                                     if student is not None else float("nan"))
                out["kid"] = float(self.metrics.kid_reported(feats, self.ref_feats, num_subsets=_KID_SUBSETS))
                out["nn_dist"] = float(
                    self.metrics.nearest_neighbor_distance(samples, self.dataset.train.to(samples.device)).mean()
                )
                out["nn_dist_ref"] = self.nn_dist_ref
                out["loss_train"] = self._probe_loss(net, self.probe_train, step, seed + 2)
                out["loss_heldout"] = self._probe_loss(net, self.probe_heldout, step, seed + 2)
                if sample_path is not None and self.settings.grid:
                    panels = {self.objective.sampler_label(one): samples[:64].cpu()}
                    if two is not None:
                        panels[self.objective.sampler_label(2)] = two[:64].cpu()
                    self.image_grids.save_sample_grid(panels, sample_path,
                                                  title=f"step {step}/{self.total_steps}, EMA network")
        finally:
            for m, mode in zip(nets, was_training):
                m.train(mode)
        return out


def no_evaluation() -> dict:
    """The metrics of a run not evaluated yet (or whose network diverged): NaN for every EVALUATOR_METRICS entry."""
    return {k: float("nan") for k in EVALUATOR_METRICS}


class Evaluations:
    """The evaluations of one run, on every rank: rank 0 measures (its Evaluator is built at the first evaluation,
    which trains or loads the feature network), and every rank gets the same values. Keeps the last evaluation
    and the best fd so far, which the run's checkpoints hold (state_dict)."""

    def __init__(self, settings: EvalConfig, seed: int, total_steps: int, dataset, device: torch.device, objective,
                 rank: int, world_size: int):
        """settings: the eval section (EvalConfig); seed: the run's train.seed; see Evaluator."""
        self.settings, self.seed, self.total_steps = settings, seed, total_steps
        self.dataset, self.device, self.objective = dataset, device, objective
        self.rank, self.world_size = rank, world_size
        self.evaluator: Evaluator | None = None
        self.last = no_evaluation()
        self.best_fd = float("nan")

    def __call__(self, net: torch.nn.Module, step: int, sample_path: Path, student: torch.nn.Module) -> dict | None:
        """Evaluate `net` (the evaluation EMA) and `student` on rank 0; every rank's `last` becomes its values.
        Returns rank 0's result (None on the other ranks)."""
        values, result = [float("nan")] * len(EVALUATOR_METRICS), None
        if self.rank == 0:
            if self.evaluator is None:
                self.evaluator = Evaluator(self.settings, self.seed, self.dataset, self.device, self.objective,
                                           self.total_steps)
            result = self.evaluator(net, step, sample_path, student=student)
            values = [float(result[k]) for k in EVALUATOR_METRICS]
        self.last = dict(zip(EVALUATOR_METRICS, broadcast_floats(values, self.device, self.world_size)))
        fd = self.last["fd"]
        if math.isfinite(fd) and not fd >= self.best_fd:
            self.best_fd = fd
        return result

    def clear(self) -> None:
        """The network diverged: its last evaluation no longer describes it."""
        self.last = no_evaluation()

    def state_dict(self) -> dict:
        return {"last_eval": self.last, "best_fd": self.best_fd}

    def load_state_dict(self, state: dict) -> None:
        """From a checkpoint's state (its last_eval and best_fd; older checkpoints may lack them)."""
        self.last = dict(state.get("last_eval") or self.last)
        self.best_fd = float(state.get("best_fd", float("nan")))
