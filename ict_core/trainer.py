"""The training loop of iCT (Song & Dhariwal 2023) and its baselines, unaware of any launcher.

`train(cfg, report)` runs on one CPU under pytest, on one GPU, or on every rank of a torch.distributed
group that someone else initialised (Ray Train, torchrun). It owns the evaluation EMA, the optional CT
EMA teacher, checkpoints with every RNG state (exact resume), the NaN guard, evaluation and the run folder.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from . import provenance
from .config import Config, ConfigError, resolve_config
from .ema import ema_beta
from .fileio import atomic_write_text

Report = Callable[[dict, "str | None"], None]

FAULT_MARKER = ".fault_injected"
_DROPOUT_SEED_STRIDE = 1_000_003  # rank r seeds its dropout RNG with seed + r * stride
_EVAL_SEED_OFFSET = 7_919  # evaluation noise is fixed per run and independent of the training RNG
_KID_SUBSETS = 10  # 100 costs seconds per evaluation at small scale; 10 suffices for tracking a run
_LOSS_PROBE_IMAGES = 256
_SAMPLE_CHUNK = 1000  # images per sampler call during evaluation  # images in the fixed train / held-out subsets of loss_train and loss_heldout

METRIC_KEYS = (
    "step", "total_steps", "num_points", "loss", "fd", "fd_2step", "kid", "loss_train", "loss_heldout",
    "nn_dist", "nn_dist_ref", "images_seen", "elapsed_s", "status", "fd_student", "fd_se",
)
# fd: one-step FD of the evaluation EMA (what searches act on); fd_student: the same for the raw student, with
# the same noise; fd_se: bootstrap standard error of fd (ict_core.metrics.frechet_distance_se).
_EVAL_FLOAT_KEYS = ("fd", "fd_2step", "kid", "loss_train", "loss_heldout", "nn_dist", "nn_dist_ref", "fd_student",
                    "fd_se")


# ---- distributed helpers -------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_mean(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size
    return values


def _broadcast_floats(values: list[float], device: torch.device, world_size: int) -> list[float]:
    if world_size == 1:
        return values
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(buf, src=0)
    return buf.tolist()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; allowed here: auto, cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# ---- small modules -------------------------------------------------------------------------------
class _Bf16Net(torch.nn.Module):
    """Runs the network under bf16 autocast and hands back fp32, so the loss (lambda up to ~2.6e4) stays fp32.

    keep_stem_fp32 (train.precision=bf16_stem) keeps the noise embedding and the first convolution, which see
    c_in * x and ln(sigma) / 4 directly, in fp32 (network.set_fp32_stem): adjacent sigmas of the N=1281 grid
    differ by less than one bf16 step there. benchmarks/precision.py measures what each variant keeps.
    """

    def __init__(self, net: torch.nn.Module, device_type: str, keep_stem_fp32: bool = False):
        from .network import set_fp32_stem

        super().__init__()
        self.net = set_fp32_stem(net, keep_stem_fp32)
        self.device_type = device_type

    def forward(self, x, sigma):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.net(x, sigma)
        return out.float()


def wrap_precision(net: torch.nn.Module, precision: str, device_type: str) -> torch.nn.Module:
    """The network as train.precision runs it: itself (fp32) or under bf16 autocast (bf16, bf16_stem)."""
    if precision == "fp32":
        return net
    if precision in ("bf16", "bf16_stem"):
        return _Bf16Net(net, device_type, keep_stem_fp32=precision == "bf16_stem")
    raise ConfigError(f"train.precision must be one of fp32, bf16, bf16_stem; got {precision!r}")


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


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    out = copy.deepcopy(module)
    out.requires_grad_(False)
    return out


# ---- run folder ----------------------------------------------------------------------------------
def _step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def latest_checkpoint(path: str | os.PathLike) -> Path:
    """`path` is a checkpoint folder (holds state.pt) or a run folder (-> its newest checkpoint)."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    candidates = sorted(p for p in root.glob("step_*") if (p / "state.pt").is_file())
    if not candidates:
        raise FileNotFoundError(f"resume_from={str(path)!r} holds no checkpoint (expected state.pt or checkpoints/step_*/state.pt)")
    return candidates[-1]


def _truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep rows with step <= max_step so that a step appears once after a crash and restart."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written last line from a crash
        if row.get("step", 0) <= max_step:
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(_json_safe(row)) + "\n")


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n")


def check_compile(cfg: Config) -> None:
    """train.compile with dropout is refused: under inductor the teacher's no-grad graph and the student's
    training graph draw their dropout masks independently, while iCT needs both passes to share them."""
    if cfg.train.compile and cfg.network.dropout > 0 and cfg.loss.objective == "consistency":
        raise ConfigError(f"train.compile=true needs network.dropout=0 for the consistency objective, got "
                          f"network.dropout={cfg.network.dropout}: compiled teacher and student passes draw different "
                          f"dropout masks; set train.compile=false or network.dropout=0")


# ---- evaluation ----------------------------------------------------------------------------------
class Evaluator:
    """Feature FD (one- and two-step, or Heun for diffusion), KID, train/held-out loss and nearest-neighbour
    distances of the EMA network. Noise is fixed per run, and the global RNG is left untouched."""

    def __init__(self, cfg: Config, dataset, device: torch.device, loss_fn):
        from . import metrics

        self.cfg = cfg
        self.dataset = dataset
        self.device = device
        self.loss_fn = loss_fn
        self.metrics = metrics
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            self.extractor = metrics.get_feature_extractor(dataset, cfg.eval, device)
            self.ref_mu, self.ref_sigma = metrics.reference_stats(dataset, self.extractor, cfg.eval.cache_dir)
            g = torch.Generator().manual_seed(cfg.train.seed + _EVAL_SEED_OFFSET)
            train = dataset.train
            reference = metrics.reference_images(dataset, self.extractor)  # KID's reference is FD's
            num_ref = min(len(reference), max(2 * cfg.eval.num_samples, 1000), 10_000)
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
    def _sample(self, net, sigmas: list[float] | None, generator: torch.Generator) -> torch.Tensor:
        from . import sampling

        cfg = self.cfg
        out = []
        # Chunks bound the activation memory of a 10k-sample evaluation next to the training state on a GPU.
        for start in range(0, cfg.eval.num_samples, _SAMPLE_CHUNK):
            count = min(_SAMPLE_CHUNK, cfg.eval.num_samples - start)
            shape = (count, self.dataset.channels, self.dataset.resolution, self.dataset.resolution)
            if sigmas is None:
                out.append(sampling.sample_diffusion(
                    net, shape, num_steps=cfg.eval.diffusion_steps, sigma_min=cfg.precond.sigma_min,
                    sigma_max=cfg.precond.sigma_max, rho=cfg.precond.rho, generator=generator, device=self.device,
                ))
            else:
                out.append(sampling.sample_consistency(
                    net, shape, sigmas, sigma_min=cfg.precond.sigma_min, generator=generator, device=self.device
                ))
        return torch.cat(out)

    def _probe_loss(self, net, images: torch.Tensor, step: int, seed: int) -> float:
        if len(images) == 0:
            return float("nan")
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = images.to(self.device)
        if self.cfg.loss.objective == "diffusion":
            loss, _ = self.loss_fn(net, x, generator=g)
        else:
            loss, _ = self.loss_fn(net, x, step, generator=g)
        return float(loss.float().mean())

    def _one_step(self, net, seed: int) -> torch.Tensor:
        """The evaluation's samples (one step, or Heun for diffusion) from fixed noise."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        sigmas = None if self.cfg.loss.objective == "diffusion" else [self.cfg.precond.sigma_max]
        return self._sample(net, sigmas, g)

    @torch.no_grad()
    def __call__(self, net: torch.nn.Module, step: int, sample_path: Path | None = None,
                 student: torch.nn.Module | None = None) -> dict:
        """Metrics of `net` (the evaluation EMA); fd_student is the FD of `student` from the same noise."""
        cfg = self.cfg
        nets = [net] + ([student] if student is not None else [])
        was_training = [m.training for m in nets]
        for m in nets:
            m.eval()
        seed = cfg.train.seed + _EVAL_SEED_OFFSET
        out = {}
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                samples = self._one_step(net, seed)
                two = None
                if cfg.loss.objective == "diffusion":
                    out["fd_2step"] = float("nan")
                else:
                    g2 = torch.Generator(device=self.device).manual_seed(seed + 1)
                    two = self._sample(net, [cfg.precond.sigma_max, cfg.eval.sigma_mid], g2)
                    out["fd_2step"] = self._fd(self._features(two))
                feats = self._features(samples)
                out["fd"] = self._fd(feats)
                out["fd_se"] = self.metrics.frechet_distance_se(feats, self.ref_mu, self.ref_sigma, seed=seed)
                out["fd_student"] = (self._fd(self._features(self._one_step(student, seed)))
                                     if student is not None else float("nan"))
                out["kid"] = float(self.metrics.kid_reported(feats, self.ref_feats, num_subsets=_KID_SUBSETS))
                out["nn_dist"] = float(
                    self.metrics.nearest_neighbor_distance(samples, self.dataset.train.to(samples.device)).mean()
                )
                out["nn_dist_ref"] = self.nn_dist_ref
                out["loss_train"] = self._probe_loss(net, self.probe_train, step, seed + 2)
                out["loss_heldout"] = self._probe_loss(net, self.probe_heldout, step, seed + 2)
                if sample_path is not None and cfg.eval.grid:
                    self.metrics.save_sample_grid(_grid_panels(cfg, samples, two), sample_path,
                                                  title=f"step {step}/{cfg.train.total_steps}, EMA network")
        finally:
            for m, mode in zip(nets, was_training):
                m.train(mode)
        return out


def _grid_panels(cfg: Config, samples: torch.Tensor, two_step: torch.Tensor | None, count: int = 64) -> dict:
    """The panels of an evaluation's sample grid: one-step and two-step samples side by side, or the diffusion
    sampler's."""
    if two_step is None:
        return {f"Heun sampler, {cfg.eval.diffusion_steps} steps": samples[:count].cpu()}
    return {"1 step": samples[:count].cpu(), f"2 steps (sigma_mid {cfg.eval.sigma_mid:g})": two_step[:count].cpu()}


# ---- the loop ------------------------------------------------------------------------------------
class _StopRequest:
    """Set by the SIGINT/SIGTERM handler that train(handle_signals=True) installs; the loop checks it after each
    step, writes a checkpoint and ends the run with status "interrupted"."""

    def __init__(self):
        self.signal: str | None = None


class _Run:
    """State of one training run; `train()` is the public entry point."""

    def __init__(self, cfg: Config, report: Report | None, run_dir, resume_from, stop: _StopRequest | None = None):
        from .data import load_dataset

        self.stop = stop or _StopRequest()
        self.events = None
        self.t_start = time.time()
        self.rank, self.world_size = _dist_info()
        self.is_main = self.rank == 0
        self.report_fn = report
        tcfg = cfg.train
        if tcfg.batch_size % self.world_size:
            raise ConfigError(
                f"train.batch_size must be divisible by the world size {self.world_size}, got {tcfg.batch_size}"
            )
        self.local_batch = tcfg.batch_size // self.world_size
        if tcfg.num_threads > 0:
            torch.set_num_threads(tcfg.num_threads)
        self.device = resolve_device(tcfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        self.dataset = load_dataset(cfg.data, seed=cfg.data.seed)
        self.cfg = cfg = resolve_config(cfg, self.dataset.dim)
        from .metrics import check_feature_weights

        check_feature_weights(self.dataset, cfg.eval)

        if run_dir is None:
            if resume_from is not None:
                ckpt = latest_checkpoint(resume_from)
                run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
            else:
                import tempfile

                run_dir = tempfile.mkdtemp(prefix="ict-run-")
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        # Decided once at start, so every rank of the first attempt exits and no rank of a restart does.
        self.fault_armed = tcfg.fault_step >= 0 and not (self.run_dir / FAULT_MARKER).exists()

        self._build_model()
        self._build_loss()
        self._build_batches()
        self._build_curriculum()

        self.step = 0
        self.images_seen = 0
        self.elapsed_before = 0.0
        self.last_eval: dict = {k: float("nan") for k in _EVAL_FLOAT_KEYS}
        self.best_fd = float("nan")
        if resume_from is not None:
            self._load_checkpoint(latest_checkpoint(resume_from))
        else:
            torch.manual_seed(tcfg.seed + self.rank * _DROPOUT_SEED_STRIDE)
        self.evaluator: Evaluator | None = None  # built at the first evaluation (trains or loads the feature net)

        if self.is_main:
            # The run folder appears only once the model and data are built, so a setup error leaves none behind.
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.json")
            _write_json(self.run_dir / "provenance.json", provenance.collect(self.device, self.world_size))
            if resume_from is None:
                for name in ("metrics.jsonl", "evals.jsonl"):
                    (self.run_dir / name).unlink(missing_ok=True)
            else:
                for name in ("metrics.jsonl", "evals.jsonl"):
                    _truncate_jsonl(self.run_dir / name, self.step)
            from .events import EventLog

            self.events = EventLog(self.run_dir, resume_step=self.step if resume_from is not None else None)

    # -- setup --
    def _build_model(self) -> None:
        from .network import build_network

        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_network(cfg, self.dataset.channels, self.dataset.resolution).to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = _frozen_copy(model)  # evaluation EMA (ict_core/ema.py); never a teacher
        self.teacher = _frozen_copy(model) if cfg.loss.teacher == "ema" and cfg.loss.objective == "consistency" else None
        self.num_params = sum(p.numel() for p in model.parameters())

        check_compile(cfg)
        forward = wrap_precision(model, cfg.train.precision, device.type)
        inner = torch.compile(forward) if cfg.train.compile else forward
        if self.world_size > 1:
            ddp = torch.nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
            self.student = torch.compile(ddp) if cfg.train.compile else ddp
            # The stop-gradient teacher pass runs on the unwrapped module: no DDP hooks, no gradient sync.
            self.stopgrad_teacher = inner
        else:
            self.student = inner
            self.stopgrad_teacher = None
        teacher_forward = self.teacher
        if self.teacher is not None:
            teacher_forward = wrap_precision(self.teacher, cfg.train.precision, device.type)
        self.teacher_forward = teacher_forward

        o = cfg.optim
        opt_cls = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[o.name]
        # foreach: torch defaults to a per-tensor loop on the CPU, which doubles the optimizer's share of a small step.
        self.optimizer = opt_cls(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                                 foreach=True)

    def _build_loss(self) -> None:
        from . import loss as loss_mod

        cfg = self.cfg
        if cfg.loss.objective == "diffusion":
            self.loss_fn = loss_mod.DiffusionLoss(cfg)
        else:
            self.loss_fn = loss_mod.ConsistencyLoss(cfg, self.dataset.dim)

    def _build_curriculum(self) -> None:
        """The adaptive curriculum (schedule.Curriculum) is fed the mean loss of every `every` steps; None otherwise."""
        curriculum = getattr(self.loss_fn, "curriculum", None)
        self.curriculum = curriculum if curriculum is not None and curriculum.adaptive else None
        self.curriculum_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.curriculum_count = 0

    def _feed_curriculum(self, loss: torch.Tensor) -> None:
        """Accumulate this step's loss; at every `every`-th step hand the mean over all ranks to the curriculum.
        Rank 0's value is broadcast so that every rank takes the same decision and N(k) stays the same on all."""
        self.curriculum_sum += loss
        self.curriculum_count += 1
        if self.step % self.curriculum.every:
            return
        mean = _all_reduce_mean(self.curriculum_sum / max(self.curriculum_count, 1), self.world_size)
        mean = _broadcast_floats([float(mean)], self.device, self.world_size)[0]
        self.curriculum_sum.zero_()
        self.curriculum_count = 0
        if self.curriculum.observe(self.step, mean) and self.is_main:
            print(f"[ict] step {self.step}: loss stalled, N(k) -> {self.curriculum.num_points(self.step)}", flush=True)

    def _build_batches(self) -> None:
        seed = self.cfg.train.seed
        # One generator for the GLOBAL batch, identical on every rank; each rank keeps its slice. Hence
        # 2 ranks x b equal 1 rank x 2b when dropout is 0.
        self.batch_gen = torch.Generator().manual_seed(seed)
        self.noise_gen = (
            torch.Generator(device=self.device).manual_seed(seed + 1) if self.device.type == "cuda" else self.batch_gen
        )
        train = self.dataset.train
        on_device = self.device.type == "cuda" and train.numel() * train.element_size() < 4 * 2**30
        self.train_images = train.to(self.device) if on_device else train
        self.flip = self.cfg.data.hflip and bool(getattr(self.dataset, "allows_flip", False))

    # -- one step's randomness --
    def _draw_batch(self) -> tuple[torch.Tensor, dict]:
        """Data indices, flips, noise-level indices and z for the global batch; returns this rank's slice."""
        cfg = self.cfg
        global_b = cfg.train.batch_size
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        idx = torch.randint(len(self.train_images), (global_b,), generator=self.batch_gen)[lo:hi]
        x = self.train_images[idx.to(self.train_images.device)].to(self.device, non_blocking=True)
        if self.flip:
            flip = (torch.rand(global_b, generator=self.batch_gen) < 0.5)[lo:hi].to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if cfg.loss.objective == "diffusion":
            sigma, z = self.loss_fn.draw(global_b, x.shape[1:], generator=self.noise_gen)
            extra = {"sigma": sigma[lo:hi], "z": z[lo:hi]}
        else:
            indices, z = self.loss_fn.draw(self.step, global_b, x.shape[1:], generator=self.noise_gen)
            extra = {"indices": indices[lo:hi], "z": z[lo:hi]}
        return x, extra

    def _loss(self, x: torch.Tensor, extra: dict) -> tuple[torch.Tensor, dict]:
        if self.cfg.loss.objective == "diffusion":
            return self.loss_fn(self.student, x, **extra)
        teacher = self.teacher_forward if self.teacher is not None else self.stopgrad_teacher
        return self.loss_fn(self.student, x, self.step, teacher=teacher, **extra)

    def _num_points(self, step: int) -> int:
        if self.cfg.loss.objective == "diffusion":
            return 0  # no discretization curriculum; 0 marks "not applicable" in the int column
        return int(self.loss_fn.num_points(step))

    # -- checkpoints --
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save_checkpoint(self) -> str | None:
        per_rank_rng = self._rng_state()
        if self.world_size > 1:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, per_rank_rng)
        else:
            gathered = [per_rank_rng]
        if not self.is_main:
            return None
        state = {
            "step": self.step,
            "images_seen": self.images_seen,
            "elapsed_s": self._elapsed(),
            "student": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "rng_per_rank": gathered,
            "batch_generator": self.batch_gen.get_state(),
            "noise_generator": self.noise_gen.get_state() if self.noise_gen is not self.batch_gen else None,
            "last_eval": self.last_eval,
            "best_fd": self.best_fd,
            "curriculum": self._curriculum_state(),
            "world_size": self.world_size,
            "config": self.cfg.to_dict(),
        }
        name = _step_dir_name(self.step)
        tmp = self.ckpt_root / f".tmp_{name}"
        final = self.ckpt_root / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "state.pt")
        _write_json(tmp / "meta.json", {"step": self.step, "metrics": self.last_eval, "config": self.cfg.to_dict()})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        kept = sorted(p for p in self.ckpt_root.glob("step_*") if p.is_dir())
        for old in kept[: -self.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)

    def _curriculum_state(self) -> dict | None:
        if self.curriculum is None:
            return None
        return {**self.curriculum.state_dict(), "pending_sum": self.curriculum_sum.item(),
                "pending_count": self.curriculum_count}

    def _load_curriculum_state(self, state: dict | None, ckpt_dir: Path) -> None:
        if self.curriculum is None:
            return
        if state is None:
            raise ConfigError(f"checkpoint {ckpt_dir} has no adaptive curriculum state but curriculum.shape=adaptive")
        self.curriculum.load_state_dict(state)
        self.curriculum_sum.fill_(float(state["pending_sum"]))
        self.curriculum_count = int(state["pending_count"])

    def _load_checkpoint(self, ckpt_dir: Path) -> None:
        # On the CPU first: generator states must stay CPU ByteTensors; load_state_dict moves weights and
        # optimizer moments to the parameters' device.
        state = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        if self.teacher is not None:
            if state.get("teacher") is None:
                raise ConfigError(f"checkpoint {ckpt_dir} has no EMA teacher but loss.teacher=ema")
            self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.elapsed_before = float(state["elapsed_s"])
        self.last_eval = dict(state.get("last_eval") or self.last_eval)
        self.best_fd = float(state.get("best_fd", float("nan")))
        self._load_curriculum_state(state.get("curriculum"), ckpt_dir)
        self.batch_gen.set_state(state["batch_generator"])
        if state.get("noise_generator") is not None and self.noise_gen is not self.batch_gen:
            self.noise_gen.set_state(state["noise_generator"].cpu())
        rngs = state["rng_per_rank"]
        if len(rngs) == self.world_size:
            rng = rngs[self.rank]
            torch.set_rng_state(rng["torch"].cpu())
            np.random.set_state(rng["numpy"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        else:  # a different world size cannot continue bitwise; keep dropout streams distinct and reproducible
            torch.manual_seed(self.cfg.train.seed + self.rank * _DROPOUT_SEED_STRIDE + self.step)
        if self.is_main:
            old = state.get("config") or {}
            new = self.cfg.to_dict()
            changed = [f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
            if changed:
                print(f"[ict] resuming {ckpt_dir} with changed keys: {', '.join(changed)}", flush=True)

    # -- bookkeeping --
    def _elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.t_start)

    def _metrics(self, loss: float, status: str) -> dict:
        out = {
            "step": self.step,
            "total_steps": self.cfg.train.total_steps,
            # N(k) of the last step trained (k = step - 1), as in metrics.jsonl; not that of the step to come.
            "num_points": self._num_points(max(min(self.step, self.cfg.train.total_steps) - 1, 0)),
            "loss": loss,
            **{k: self.last_eval.get(k, float("nan")) for k in _EVAL_FLOAT_KEYS},
            "images_seen": self.images_seen,
            "elapsed_s": self._elapsed(),
            "status": status,
        }
        return out

    def _evaluate(self) -> None:
        values = [float("nan")] * len(_EVAL_FLOAT_KEYS)
        if self.is_main:
            path = self.run_dir / "samples" / f"{_step_dir_name(self.step)}.png"
            if self.evaluator is None:
                self.evaluator = Evaluator(self.cfg, self.dataset, self.device, self.loss_fn)
            result = self.evaluator(self.ema, self.step, path, student=self.model)
            values = [float(result[k]) for k in _EVAL_FLOAT_KEYS]
            self._log_events("eval", result, path)
        values = _broadcast_floats(values, self.device, self.world_size)
        self.last_eval = dict(zip(_EVAL_FLOAT_KEYS, values))
        fd = self.last_eval["fd"]
        if math.isfinite(fd) and not fd >= self.best_fd:
            self.best_fd = fd

    def _log_events(self, group: str, values: dict, image: Path | None = None) -> None:
        """TensorBoard on rank 0: every numeric value given, and the sample grid if one was written."""
        if self.events is None:
            return
        self.events.scalars(group, values, self.step)
        if image is not None:
            self.events.image("samples", image, self.step)
            self.events.flush()

    def _report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if self.report_fn is not None:
            self.report_fn(dict(metrics), checkpoint_dir)

    def _fault(self) -> None:
        marker = self.run_dir / FAULT_MARKER
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"fault injected at step {self.step}\n")
        finally:
            print(f"[ict] rank {self.rank}: injected fault at step {self.step}", flush=True)
            os._exit(1)

    def _diverged(self, loss_sum: torch.Tensor) -> bool:
        bad = (~torch.isfinite(loss_sum)).to(torch.float32).reshape(1)
        if self.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item() > 0)

    def train_step(self) -> tuple[torch.Tensor, dict]:
        """One optimizer step at self.step (not incremented): batch, loss, update, EMA(s). Returns the mean loss."""
        cfg = self.cfg
        x, extra = self._draw_batch()
        loss_vec, info = self._loss(x, extra)
        loss = loss_vec.float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        # The update after optimizer step k = self.step + 1, with the warm-up of ict_core/ema.py.
        ema_update(self.ema, self.model, ema_beta(self.step + 1, cfg.train.ema_rate, cfg.train.ema_rampup))
        if self.teacher is not None:
            from .schedule import ema_teacher_mu

            # CT's teacher: theta^- <- mu(k) theta^- + (1 - mu(k)) theta, after the student's update.
            mu = ema_teacher_mu(self._num_points(self.step), cfg.curriculum.s0, cfg.loss.ema_mu0)
            ema_update(self.teacher, self.model, mu)
        return loss.detach(), info

    def run(self) -> dict:
        cfg, tcfg = self.cfg, self.cfg.train
        total = tcfg.total_steps
        eval_every = cfg.eval.every
        check_every = 1 if self.device.type == "cpu" else tcfg.log_every
        self.student.train()
        if self.teacher is not None:
            self.teacher.train()

        log_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        log_count = 0
        report_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        report_count = 0
        t_log, step_log = time.time(), self.step

        if self.is_main:
            print(
                f"[ict] {cfg.data.name} {self.dataset.channels}x{self.dataset.resolution}^2, "
                f"{self.num_params / 1e6:.2f}M params, {self.device}, world {self.world_size}, "
                f"steps {self.step}->{total}, batch {tcfg.batch_size}, run {self.run_dir}",
                flush=True,
            )
            if self.events is not None and self.events.active:
                print(f"[ict] watch it: tensorboard --logdir {self.run_dir}", flush=True)

        while self.step < total:
            loss, info = self.train_step()
            done_loss = loss.to(torch.float64)
            log_sum += done_loss
            report_sum += done_loss
            log_count += 1
            report_count += 1
            self.step += 1
            self.images_seen += tcfg.batch_size

            if self.fault_armed and self.step == tcfg.fault_step:
                self._fault()

            is_final = self.step == total
            is_eval = is_final or (eval_every > 0 and self.step % eval_every == 0)
            is_ckpt = tcfg.checkpoint_every > 0 and self.step % tcfg.checkpoint_every == 0
            is_log = self.step % tcfg.log_every == 0 or is_final

            if (self.step % check_every == 0 or is_eval or is_ckpt or is_log) and self._diverged(report_sum):
                return self._finish_diverged()
            if self.curriculum is not None:
                self._feed_curriculum(done_loss)

            if is_log:
                mean_loss = float(_all_reduce_mean(log_sum / log_count, self.world_size))
                now = time.time()
                ips = (self.step - step_log) * tcfg.batch_size / max(now - t_log, 1e-9)
                if self.is_main:
                    n_points = info.get("num_points", self._num_points(self.step - 1)) if isinstance(info, dict) else None
                    row = {"step": self.step, "loss": mean_loss, "num_points": int(n_points) if n_points is not None else None,
                           "images_per_s": ips, "images_seen": self.images_seen, "elapsed_s": self._elapsed(),
                           "lr": self.optimizer.param_groups[0]["lr"]}
                    _append_jsonl(self.run_dir / "metrics.jsonl", row)
                    self._log_events("train", {k: row[k] for k in ("loss", "num_points", "images_per_s", "lr")})
                    eta = (total - self.step) * tcfg.batch_size / max(ips, 1e-9)
                    print(f"[ict] step {self.step}/{total}  N(k) {row['num_points']}  loss {mean_loss:.4g}  "
                          f"{ips:.0f} img/s  ETA {_fmt_s(eta)}", flush=True)
                log_sum.zero_()
                log_count = 0
                t_log, step_log = time.time(), self.step

            if is_eval or is_ckpt:
                mean_loss = float(_all_reduce_mean(report_sum / max(report_count, 1), self.world_size))
                report_sum.zero_()
                report_count = 0
                if is_eval:
                    self._evaluate()
                metrics = self._metrics(mean_loss, "completed" if is_final else "running")
                metrics["evaluated"] = is_eval
                if is_eval and self.is_main:
                    _append_jsonl(self.run_dir / "evals.jsonl", metrics)
                    print(f"[ict] eval step {self.step}: fd {metrics['fd']:.4g} +- {metrics['fd_se']:.2g}  "
                          f"fd_student {metrics['fd_student']:.4g}  fd_2step {metrics['fd_2step']:.4g}  "
                          f"kid(x1e3) {metrics['kid']:.4g}  loss_train {metrics['loss_train']:.4g}  "
                          f"loss_heldout {metrics['loss_heldout']:.4g}", flush=True)
                ckpt_dir = self._save_checkpoint()
                self._report(metrics, ckpt_dir)
                self.final_metrics = metrics
                t_log, step_log = time.time(), self.step  # evaluation time is not training throughput

            if self.stop.signal is not None and not is_final:
                if self._diverged(report_sum):
                    return self._finish_diverged()
                return self._finish_interrupted(report_sum, report_count, saved=is_eval or is_ckpt)

        return self._summary("completed")

    def _finish_interrupted(self, report_sum: torch.Tensor, report_count: int, saved: bool) -> dict:
        """A stop signal: keep a checkpoint of this step (unless one was just written) and end the run."""
        mean_loss = float(_all_reduce_mean(report_sum / report_count, self.world_size)) if report_count else float("nan")
        metrics = self._metrics(mean_loss, "interrupted")
        if not saved:
            self._save_checkpoint()
        self.final_metrics = metrics
        return self._summary("interrupted", signal=self.stop.signal)

    def _finish_diverged(self) -> dict:
        self.last_eval = {k: float("nan") for k in _EVAL_FLOAT_KEYS}
        metrics = self._metrics(float("nan"), "diverged")
        metrics["evaluated"] = False
        if self.is_main:
            _append_jsonl(self.run_dir / "evals.jsonl", metrics)
            print(f"[ict] diverged at step {self.step}: non-finite loss; stopping", flush=True)
        self._report(metrics, None)
        self.final_metrics = metrics
        return self._summary("diverged")

    def _summary(self, status: str, **extra) -> dict:
        summary = {
            **self.final_metrics,
            "status": status,
            "best_fd": self.best_fd,
            "wall_s": self._elapsed(),
            "run_dir": str(self.run_dir),
            "world_size": self.world_size,
            "device": self.device.type,
            "num_params": self.num_params,
            "config": self.cfg.flat(),
            **extra,
        }
        summary.pop("evaluated", None)
        if self.is_main:
            _write_json(self.run_dir / "summary.json", summary)
        return summary


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _StopOnSignals:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step (a checkpoint, then status
    "interrupted"); a second SIGINT raises KeyboardInterrupt at once. Signal handlers exist only in the main
    thread of a process, so elsewhere (a Ray Train worker's training thread) this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop: _StopRequest, enabled: bool):
        self.stop = stop
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop.signal is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.stop.signal = name
        more = " (Ctrl-C again quits without one)" if signum == signal.SIGINT else ""
        print(f"\n[ict] {name} received: stopping after this step to write a checkpoint{more}", flush=True)

    def __enter__(self) -> "_StopOnSignals":
        if self.enabled:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(cfg: Config, report: Report | None = None, run_dir=None, resume_from=None,
          handle_signals: bool = False) -> dict:
    """Train one model and return its summary (the last report's metrics plus best_fd, wall_s, run_dir, ...).

    report(metrics, checkpoint_dir) is called on every rank at each evaluation (eval.every steps and the final
    step) and at each train.checkpoint_every step; checkpoint_dir is set on rank 0 only. resume_from is a
    checkpoint folder or a run folder (its newest checkpoint) and continues bitwise on the same hardware.
    A non-finite loss ends the run with status "diverged" instead of raising. With handle_signals (one process,
    main thread: the command line) SIGINT/SIGTERM end the run after the current step with a checkpoint and
    status "interrupted"; the summary's "signal" names the signal.
    """
    if not isinstance(cfg, Config):
        raise ConfigError(f"train() needs an ict_core.config.Config, got {type(cfg).__name__}")
    stop = _StopRequest()
    with _StopOnSignals(stop, handle_signals and _dist_info()[1] == 1):
        run = _Run(cfg, report, run_dir, resume_from, stop)
        try:
            if run.step >= cfg.train.total_steps:
                run.final_metrics = run._metrics(float("nan"), "completed")
                return run._summary("completed")
            return run.run()
        finally:
            if run.events is not None:
                run.events.close()
