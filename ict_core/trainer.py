"""The training loop of iCT (Song & Dhariwal 2023) and its baselines, unaware of any launcher.

`train(cfg, report)` runs on one CPU under pytest, on one GPU, or on every rank of a torch.distributed
group that someone else initialised (Ray Train, torchrun). It owns the evaluation EMA, the optional CT
EMA teacher, the state of its checkpoints (every RNG stream: exact resume) and the NaN guard. Elsewhere: what
differs between objectives (objectives.py), the EMA update (ema.py), the adaptive curriculum's feed (schedule.py),
evaluation (evaluate.py), the run folder's files and checkpoint files (rundir.py), the collectives and the
process's RNG state (dist.py), the stop signals (stop.py) and how the forward runs (precision.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

from . import provenance
from .config import Config, ConfigError, resolve_config
from .dist import (RunningMean, agreed_mean, any_nonfinite, gather_objects, rank_and_world, resolve_device, rng_state,
                   set_rng_state)
from .ema import ema_beta, ema_update, frozen_copy
from .evaluate import Evaluations, Evaluator, no_evaluation
from .objectives import build_objective, slice_noise
from .precision import check_compile, wrap_precision
from .records import REPORT_KEYS, report_row
from .rundir import FAULT_MARKER, RunFolder, latest_checkpoint, load_checkpoint, run_dir_for
from .schedule import CurriculumFeed
from .stop import StopOnSignals, StopRequest

Report = Callable[[dict, "str | None"], None]

_DROPOUT_SEED_STRIDE = 1_000_003  # rank r seeds its dropout RNG with seed + r * stride

METRIC_KEYS = REPORT_KEYS  # named in ict_core/records.py

# Evaluator, FAULT_MARKER, latest_checkpoint and resolve_config are also read from here by tests/test_trainer.py.
__all__ = ["train", "Run", "Report", "METRIC_KEYS", "FAULT_MARKER", "Evaluator", "ConfigError", "check_compile",
           "latest_checkpoint", "resolve_config"]


class Run:
    """One training run: its networks, optimizer, objective, random streams and run folder. train() is the entry
    point; train_step() alone (benchmarks, timing) runs one optimizer step without evaluation or bookkeeping."""

    def __init__(self, cfg: Config, report: Report | None, run_dir, resume_from, stop: StopRequest | None = None):
        from .data import load_dataset
        from .metrics import check_feature_weights

        self.stop = stop or StopRequest()
        self.events = None
        self.t_start = time.time()
        self.rank, self.world_size = rank_and_world()
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
        check_feature_weights(self.dataset, cfg.eval)

        self.run_dir = run_dir_for(run_dir, resume_from)
        self.folder = RunFolder(self.run_dir)
        # Decided once at start, so every rank of the first attempt exits and no rank of a restart does.
        self.fault_armed = tcfg.fault_step >= 0 and not self.folder.fault_marker.exists()

        self.objective = build_objective(cfg, self.dataset.dim)
        self._build_model()
        self._build_batches()
        curriculum = self.objective.curriculum
        self.curriculum = (CurriculumFeed(curriculum, lambda mean: agreed_mean(mean, self.device, self.world_size),
                                          self.device, self.is_main) if curriculum is not None else None)
        self.evals = Evaluations(cfg, self.dataset, self.device, self.objective, self.rank, self.world_size)

        self.step = 0
        self.images_seen = 0
        self.elapsed_before = 0.0
        self.final_metrics: dict = {}
        if resume_from is not None:
            self._load_checkpoint(latest_checkpoint(resume_from))
        else:
            torch.manual_seed(tcfg.seed + self.rank * _DROPOUT_SEED_STRIDE)

        if self.is_main:
            # The run folder appears only once the model and data are built, so a setup error leaves none behind.
            resumed_step = self.step if resume_from is not None else None
            self.folder.start(cfg, provenance.collect(self.device, self.world_size), resumed_step)
            from .events import EventLog

            self.events = EventLog(self.run_dir, resume_step=resumed_step)

    # -- setup --
    def _build_model(self) -> None:
        from .network import build_network

        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_network(cfg, self.dataset.channels, self.dataset.resolution).to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = frozen_copy(model)  # evaluation EMA (ict_core/ema.py); never a teacher
        self.teacher = frozen_copy(model) if self.objective.ema_teacher else None  # CT's EMA teacher
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
            stopgrad_teacher = inner
        else:
            self.student = inner
            stopgrad_teacher = None  # the objective's loss uses the student itself
        # What the loss's teacher pass runs: the EMA teacher in train.precision, else the stop-gradient student.
        self.teacher_forward = (wrap_precision(self.teacher, cfg.train.precision, device.type)
                                if self.teacher is not None else stopgrad_teacher)

        o = cfg.optim
        opt_cls = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[o.name]
        # foreach: torch defaults to a per-tensor loop on the CPU, which doubles the optimizer's share of a small step.
        self.optimizer = opt_cls(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                                 foreach=True)

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

    # -- one optimizer step --
    def draw_batch(self) -> tuple[torch.Tensor, dict]:
        """Data indices, flips and the objective's noise for the global batch; returns this rank's slice."""
        cfg = self.cfg
        global_b = cfg.train.batch_size
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        idx = torch.randint(len(self.train_images), (global_b,), generator=self.batch_gen)[lo:hi]
        x = self.train_images[idx.to(self.train_images.device)].to(self.device, non_blocking=True)
        if self.flip:
            flip = (torch.rand(global_b, generator=self.batch_gen) < 0.5)[lo:hi].to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        noise = self.objective.draw(self.step, global_b, x.shape[1:], self.noise_gen)
        return x, slice_noise(noise, lo, hi)

    def step_loss(self, x: torch.Tensor, noise: dict) -> tuple[torch.Tensor, dict]:
        """The per-sample loss of this rank's slice at self.step, and the objective's info."""
        return self.objective.loss(self.student, x, self.step, noise, teacher=self.teacher_forward)

    def train_step(self) -> tuple[torch.Tensor, dict]:
        """One optimizer step at self.step (not incremented): batch, loss, update, EMA(s). Returns the mean loss."""
        cfg = self.cfg
        x, noise = self.draw_batch()
        loss_vec, info = self.step_loss(x, noise)
        loss = loss_vec.float().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        # The update after optimizer step k = self.step + 1, with the warm-up of ict_core/ema.py.
        ema_update(self.ema, self.model, ema_beta(self.step + 1, cfg.train.ema_rate, cfg.train.ema_rampup))
        if self.teacher is not None:
            ema_update(self.teacher, self.model, self.objective.teacher_rate(self.step))
        return loss.detach(), info

    def num_points_done(self) -> int:
        """N(k) of the last step trained (k = step - 1), as in metrics.jsonl; not that of the step to come."""
        return self.objective.num_points(max(min(self.step, self.cfg.train.total_steps) - 1, 0))

    # -- the loop --
    def run(self) -> dict:
        """Train to train.total_steps (or a stop signal, or divergence) and return the run's summary."""
        tcfg, total, world = self.cfg.train, self.cfg.train.total_steps, self.world_size
        if self.step >= total:
            self.final_metrics = self._metrics(float("nan"), "completed")
            return self._summary("completed")
        check_every = 1 if self.device.type == "cpu" else tcfg.log_every
        self.student.train()
        if self.teacher is not None:
            self.teacher.train()
        log_loss, report_loss = RunningMean(self.device), RunningMean(self.device)  # since the last log / report
        t_log, step_log = time.time(), self.step
        self._print_start()

        while self.step < total:
            loss, info = self.train_step()
            done_loss = loss.to(torch.float64)
            log_loss.add(done_loss)
            report_loss.add(done_loss)
            self.step += 1
            self.images_seen += tcfg.batch_size
            if self.fault_armed and self.step == tcfg.fault_step:
                self._fault()

            is_final = self.step == total
            is_eval = is_final or (self.cfg.eval.every > 0 and self.step % self.cfg.eval.every == 0)
            is_ckpt = tcfg.checkpoint_every > 0 and self.step % tcfg.checkpoint_every == 0
            is_log = self.step % tcfg.log_every == 0 or is_final
            if (self.step % check_every == 0 or is_eval or is_ckpt or is_log) and any_nonfinite(report_loss.sum, world):
                return self._finish_diverged()
            if self.curriculum is not None:
                self.curriculum(self.step, done_loss)

            if is_log:
                images_per_s = (self.step - step_log) * tcfg.batch_size / max(time.time() - t_log, 1e-9)
                self._log_train(log_loss.pop(world), info, images_per_s)
                t_log, step_log = time.time(), self.step
            if is_eval or is_ckpt:
                self._report_step(report_loss.pop(world), is_eval, "completed" if is_final else "running")
                t_log, step_log = time.time(), self.step  # evaluation time is not training throughput
            if self.stop.signal is not None and not is_final:
                if any_nonfinite(report_loss.sum, world):
                    return self._finish_diverged()
                self.final_metrics = self._metrics(report_loss.pop(world), "interrupted")
                if not (is_eval or is_ckpt):  # keep a checkpoint of this step
                    self._save_checkpoint()
                return self._summary("interrupted", signal=self.stop.signal)
        return self._summary("completed")

    def _log_train(self, mean_loss: float, info: dict, images_per_s: float) -> None:
        """A metrics.jsonl row, its TensorBoard scalars and a progress line (rank 0)."""
        if not self.is_main:
            return
        total = self.cfg.train.total_steps
        row = {"step": self.step, "loss": mean_loss,
               "num_points": int(info.get("num_points", self.objective.num_points(self.step - 1))),
               "images_per_s": images_per_s, "images_seen": self.images_seen, "elapsed_s": self._elapsed(),
               "lr": self.optimizer.param_groups[0]["lr"]}
        self.folder.log_metrics(row)
        self._log_events("train", {k: row[k] for k in ("loss", "num_points", "images_per_s", "lr")})
        eta = (total - self.step) * self.cfg.train.batch_size / max(images_per_s, 1e-9)
        print(f"[ict] step {self.step}/{total}  N(k) {row['num_points']}  loss {mean_loss:.4g}  "
              f"{images_per_s:.0f} img/s  ETA {_fmt_s(eta)}", flush=True)

    def _report_step(self, mean_loss: float, is_eval: bool, status: str) -> None:
        """Evaluate (at evaluation steps), write a checkpoint and report to the caller on every rank."""
        if is_eval:
            path = self.folder.sample_path(self.step)
            result = self.evals(self.ema, self.step, path, student=self.model)
            if result is not None:
                self._log_events("eval", result, path)
        metrics = {**self._metrics(mean_loss, status), "evaluated": is_eval}
        if is_eval and self.is_main:
            self.folder.log_eval(metrics)
            print(f"[ict] eval step {self.step}: fd {metrics['fd']:.4g} +- {metrics['fd_se']:.2g}  "
                  f"fd_student {metrics['fd_student']:.4g}  fd_2step {metrics['fd_2step']:.4g}  "
                  f"kid(x1e3) {metrics['kid']:.4g}  loss_train {metrics['loss_train']:.4g}  "
                  f"loss_heldout {metrics['loss_heldout']:.4g}", flush=True)
        self._report(metrics, self._save_checkpoint())
        self.final_metrics = metrics

    def _finish_diverged(self) -> dict:
        self.evals.last = no_evaluation()
        metrics = {**self._metrics(float("nan"), "diverged"), "evaluated": False}
        if self.is_main:
            self.folder.log_eval(metrics)
            print(f"[ict] diverged at step {self.step}: non-finite loss; stopping", flush=True)
        self._report(metrics, None)
        self.final_metrics = metrics
        return self._summary("diverged")

    # -- checkpoints: the loop builds and consumes the state; ict_core/rundir.py writes and reads the files --
    def _save_checkpoint(self) -> str | None:
        gathered = gather_objects(rng_state(self.device), self.world_size)
        if not self.is_main:
            return None
        state = {
            "step": self.step, "images_seen": self.images_seen, "elapsed_s": self._elapsed(),
            "student": self.model.state_dict(), "ema": self.ema.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "optimizer": self.optimizer.state_dict(), "rng_per_rank": gathered,
            "batch_generator": self.batch_gen.get_state(),
            "noise_generator": self.noise_gen.get_state() if self.noise_gen is not self.batch_gen else None,
            **self.evals.state_dict(),  # last_eval, best_fd
            "curriculum": self.curriculum.state_dict() if self.curriculum is not None else None,
            "world_size": self.world_size, "config": self.cfg.to_dict(),
        }
        return str(self.folder.save_checkpoint(self.step, state, keep=self.cfg.train.keep_checkpoints))

    def _load_checkpoint(self, ckpt_dir: Path) -> None:
        state = load_checkpoint(ckpt_dir)
        self.model.load_state_dict(state["student"])
        self.ema.load_state_dict(state["ema"])
        if self.teacher is not None:
            if state.get("teacher") is None:
                raise ConfigError(f"checkpoint {ckpt_dir} has no EMA teacher but loss.teacher=ema")
            self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])
        self.elapsed_before = float(state["elapsed_s"])
        self.evals.load_state_dict(state)
        if self.curriculum is not None:
            if state.get("curriculum") is None:
                raise ConfigError(f"checkpoint {ckpt_dir} has no adaptive curriculum state but curriculum.shape=adaptive")
            self.curriculum.load_state_dict(state["curriculum"])
        self.batch_gen.set_state(state["batch_generator"])
        if state.get("noise_generator") is not None and self.noise_gen is not self.batch_gen:
            self.noise_gen.set_state(state["noise_generator"].cpu())
        if len(state["rng_per_rank"]) == self.world_size:
            set_rng_state(state["rng_per_rank"][self.rank], self.device)
        else:  # a different world size cannot continue bitwise; keep dropout streams distinct and reproducible
            torch.manual_seed(self.cfg.train.seed + self.rank * _DROPOUT_SEED_STRIDE + self.step)
        old, new = state.get("config") or {}, self.cfg.to_dict()
        changed = [f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
        if changed and self.is_main:
            print(f"[ict] resuming {ckpt_dir} with changed keys: {', '.join(changed)}", flush=True)

    # -- bookkeeping --
    def _elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.t_start)

    def _metrics(self, loss: float, status: str) -> dict:
        return report_row(self.step, self.cfg.train.total_steps, self.num_points_done(), loss, self.evals.last,
                          self.images_seen, self._elapsed(), status)

    def _summary(self, status: str, **extra) -> dict:
        summary = {**self.final_metrics, "status": status, "best_fd": self.evals.best_fd, "wall_s": self._elapsed(),
                   "run_dir": str(self.run_dir), "world_size": self.world_size, "device": self.device.type,
                   "num_params": self.num_params, "config": self.cfg.flat(), **extra}
        summary.pop("evaluated", None)
        if self.is_main:
            self.folder.write_summary(summary)
        return summary

    def _print_start(self) -> None:
        if not self.is_main:
            return
        cfg = self.cfg
        print(f"[ict] {cfg.data.name} {self.dataset.channels}x{self.dataset.resolution}^2, "
              f"{self.num_params / 1e6:.2f}M params, {self.device}, world {self.world_size}, "
              f"steps {self.step}->{cfg.train.total_steps}, batch {cfg.train.batch_size}, run {self.run_dir}", flush=True)
        if self.events is not None and self.events.active:
            print(f"[ict] watch it: tensorboard --logdir {self.run_dir}", flush=True)

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
        try:
            self.folder.mark_fault(self.step)
        finally:
            print(f"[ict] rank {self.rank}: injected fault at step {self.step}", flush=True)
            os._exit(1)

    def close(self) -> None:
        """Flush and close the TensorBoard log (rank 0)."""
        if self.events is not None:
            self.events.close()


def _fmt_s(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


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
    stop = StopRequest()
    with StopOnSignals(stop, handle_signals and rank_and_world()[1] == 1):
        run = Run(cfg, report, run_dir, resume_from, stop)
        try:
            return run.run()
        finally:
            run.close()
