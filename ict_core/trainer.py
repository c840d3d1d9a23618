"""The training loop of iCT (Song & Dhariwal 2023) and its baselines, unaware of any launcher.

`train(cfg, report)` runs on one CPU under pytest, on one GPU, or on every rank of a torch.distributed
group that someone else initialised (Ray Train, torchrun). It owns the evaluation EMA, the optional CT
EMA teacher, the state of its checkpoints (every RNG stream: exact resume) and the NaN guard. The parts it runs
live by job: what differs between objectives (objectives.py), the global batches (batches.py), how the forward runs
(precision.py), the EMA update (ema.py), the adaptive curriculum's feed (schedule.py), evaluation (evaluate.py),
the run folder and checkpoint files (rundir.py), what rank 0 prints and logs (runlog.py), the collectives and
the process's RNG state (dist.py) and the stop signals (stop.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from . import provenance
from .config import Config, ConfigError, keep_schedule, resolve_config
from .dist import (RunningMean, agreed_mean, any_nonfinite, gather_objects, rank_and_world, resolve_device, rng_state,
                   set_rng_state)
from .ema import ema_beta, ema_update, frozen_copy
from .evaluate import Evaluations
from .objectives import build_objective, slice_noise
from .precision import check_compile, training_forwards
from .records import COMPLETED, DIVERGED, INTERRUPTED, RUNNING, report_row
from .rundir import (RunFolder, latest_checkpoint, load_checkpoint, read_checkpoint_config,
                     run_dir_for)
from .runlog import RunLog
from .schedule import CurriculumFeed
from .stop import StopOnSignals, StopRequest, fault_exit

Report = Callable[[dict, "str | None"], None]

_DROPOUT_SEED_STRIDE = 1_000_003  # rank r seeds its dropout RNG with seed + r * stride

__all__ = ["train", "Run", "Report"]


class Run:
    """One training run: its networks, optimizer, objective, random streams and run folder. train() is the entry
    point; train_step() alone (benchmarks, timing) runs one optimizer step without evaluation or bookkeeping."""

    def __init__(self, cfg: Config, report: Report | None, run_dir, resume_from, stop: StopRequest | None = None):
        from .batches import GlobalBatches
        from .data import load_dataset
        from .featnet import check_feature_weights

        self.stop = stop or StopRequest()
        self.t_start = time.time()
        self.rank, self.world_size = rank_and_world()
        self.is_main = self.rank == 0
        self.report_fn = report
        tcfg = cfg.train
        if tcfg.batch_size % self.world_size:
            raise ConfigError(f"train.batch_size must be divisible by the world size {self.world_size}, "
                              f"got {tcfg.batch_size}")
        if tcfg.num_threads > 0:
            torch.set_num_threads(tcfg.num_threads)
        self.device = resolve_device(tcfg.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        self.dataset = load_dataset(cfg.data, seed=cfg.data.seed)
        self.cfg = cfg = resolve_config(cfg, self.dataset.dim)
        check_feature_weights(self.dataset, cfg.eval)
        schedule_note = ""
        if resume_from is not None:  # a changed train.total_steps keeps the run's curriculum (config.keep_schedule)
            self.cfg, schedule_note = keep_schedule(cfg, read_checkpoint_config(latest_checkpoint(resume_from)))
            cfg = self.cfg

        self.run_dir = run_dir_for(run_dir, resume_from)
        self.folder = RunFolder(self.run_dir)
        # Decided once at start, so every rank of the first attempt exits and no rank of a restart does.
        self.fault_armed = tcfg.fault_step >= 0 and not self.folder.fault_marker.exists()

        self.objective = build_objective(cfg, self.dataset.dim)
        self._build_model()
        self.batches = GlobalBatches(self.dataset, tcfg.batch_size, self.rank, self.world_size, tcfg.seed, self.device,
                                     channels_last=tcfg.channels_last)
        curriculum = self.objective.curriculum  # fed by the loop only when adaptive
        self.curriculum = (CurriculumFeed(curriculum, lambda mean: agreed_mean(mean, self.device, self.world_size),
                                          self.device, self.is_main)
                           if curriculum is not None and curriculum.adaptive else None)
        self.evals = Evaluations(cfg.eval, cfg.train.seed, cfg.train.total_steps, self.dataset, self.device,
                                 self.objective, self.rank, self.world_size)

        self.step, self.images_seen, self.elapsed_before = 0, 0, 0.0
        self.final_metrics: dict = {}  # the last report's metrics: the head of the summary
        if resume_from is not None:
            self._load_checkpoint(latest_checkpoint(resume_from))
        else:
            torch.manual_seed(tcfg.seed + self.rank * _DROPOUT_SEED_STRIDE)

        resumed_step = self.step if resume_from is not None else None
        if schedule_note and self.is_main:
            print(f"[ict] resuming at step {self.step}: {schedule_note}", flush=True)
        if self.is_main:
            # The run folder appears only once the model and data are built, so a setup error leaves none behind.
            self.folder.start(cfg, provenance.collect(self.device, self.world_size), resumed_step)
        self.log = RunLog(self.folder if self.is_main else None, resumed_step)

    # -- setup --
    def _build_model(self) -> None:
        from .network import build_network, count_parameters

        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_network(cfg.network, cfg.precond, self.objective.precond, self.dataset.channels,
                              self.dataset.resolution).to(device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = frozen_copy(model)  # evaluation EMA (ict_core/ema.py); never a teacher
        self.teacher = frozen_copy(model) if self.objective.ema_teacher else None  # CT's EMA teacher
        self.num_params = count_parameters(model)

        # What the step trains (precision, compile, DDP) and what the loss's teacher pass runs (ict_core/precision.py).
        check_compile(cfg.train.compile, cfg.network.dropout, self.objective)
        self.student, self.teacher_forward = training_forwards(model, self.teacher, cfg.train.precision,
                                                               cfg.train.compile, device, self.world_size)

        o = cfg.optim
        opt_cls = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[o.name]
        # foreach: torch defaults to a per-tensor loop on the CPU, which doubles the optimizer's share of a small step.
        self.optimizer = opt_cls(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                                 foreach=True)

    # -- one optimizer step --
    def draw_batch(self) -> tuple[torch.Tensor, dict]:
        """This rank's images and objective noise of the global batch at self.step (ict_core/batches.py GlobalBatches)."""
        x = self.batches.draw()
        noise = self.objective.draw(self.step, self.cfg.train.batch_size, x.shape[1:], self.batches.noise_generator)
        return x, slice_noise(noise, *self.batches.rows)

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

    # -- the loop --
    def run(self) -> dict:
        """Train to train.total_steps (or a stop signal, or divergence) and return the run's summary."""
        tcfg, total, world = self.cfg.train, self.cfg.train.total_steps, self.world_size
        if self.step >= total:
            self.final_metrics = self._metrics(float("nan"), COMPLETED)
            return self._summary(COMPLETED)
        check_every = 1 if self.device.type == "cpu" else tcfg.log_every
        self.student.train()
        if self.teacher is not None:
            self.teacher.train()
        log_loss, report_loss = RunningMean(self.device), RunningMean(self.device)  # since the last log / report
        t_log, step_log = time.time(), self.step
        self.log.start(f"{self.cfg.data.name} {self.dataset.channels}x{self.dataset.resolution}^2, "
                       f"{self.num_params / 1e6:.2f}M params, {self.device}, world {world}, "
                       f"steps {self.step}->{total}, batch {tcfg.batch_size}, run {self.run_dir}")

        while self.step < total:
            loss, info = self.train_step()
            done_loss = loss.to(torch.float64)
            log_loss.add(done_loss)
            report_loss.add(done_loss)
            self.step += 1
            self.images_seen += tcfg.batch_size
            if self.fault_armed and self.step == tcfg.fault_step:
                fault_exit(self.folder, self.step, self.rank)

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
                self._report_step(report_loss.pop(world), is_eval, COMPLETED if is_final else RUNNING)
                t_log, step_log = time.time(), self.step  # evaluation time is not training throughput
            if self.stop.signal is not None and not is_final:
                if any_nonfinite(report_loss.sum, world):
                    return self._finish_diverged()
                self.final_metrics = self._metrics(report_loss.pop(world), INTERRUPTED)
                if not (is_eval or is_ckpt):  # keep a checkpoint of this step
                    self._save_checkpoint()
                return self._summary(INTERRUPTED, signal=self.stop.signal)
        return self._summary(COMPLETED)

    def _log_train(self, mean_loss: float, info: dict, images_per_s: float) -> None:
        n_points = int(info.get("num_points", self.objective.num_points(self.step - 1)))
        row = {"step": self.step, "loss": mean_loss, "num_points": n_points, "images_per_s": images_per_s,
               "images_seen": self.images_seen, "elapsed_s": self._elapsed(),
               "lr": self.optimizer.param_groups[0]["lr"]}
        self.log.train(row, self.cfg.train.total_steps, self.cfg.train.batch_size)

    def _report_step(self, mean_loss: float, is_eval: bool, status: str) -> None:
        """Evaluate (at evaluation steps), write a checkpoint and report to the caller on every rank."""
        result, path = None, self.folder.sample_path(self.step)
        if is_eval:
            result = self.evals(self.ema, self.step, path, student=self.model)  # rank 0's; None on the others
        metrics = {**self._metrics(mean_loss, status), "evaluated": is_eval}
        if result is not None:
            self.log.evaluation(metrics, result, path)
        self._report(metrics, self._save_checkpoint())
        self.final_metrics = metrics

    def _finish_diverged(self) -> dict:
        self.evals.clear()
        metrics = {**self._metrics(float("nan"), DIVERGED), "evaluated": False}
        self.log.diverged(metrics)
        self._report(metrics, None)
        self.final_metrics = metrics
        return self._summary(DIVERGED)

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
            **self.batches.state_dict(),  # batch_generator, noise_generator
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
                raise ConfigError(f"checkpoint {ckpt_dir} has no adaptive curriculum state but "
                                  f"curriculum.shape=adaptive")
            self.curriculum.load_state_dict(state["curriculum"])
        self.batches.load_state_dict(state)
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
        # num_points: N(k) of the last step trained (k = step - 1), as in metrics.jsonl; not that of the step to come.
        num_points = self.objective.num_points(max(min(self.step, self.cfg.train.total_steps) - 1, 0))
        return report_row(self.step, self.cfg.train.total_steps, num_points, loss, self.evals.last,
                          self.images_seen, self._elapsed(), status)

    def _summary(self, status: str, **extra) -> dict:
        summary = {**self.final_metrics, "status": status, "best_fd": self.evals.best_fd, "wall_s": self._elapsed(),
                   "run_dir": str(self.run_dir), "world_size": self.world_size, "device": self.device.type,
                   "num_params": self.num_params, "config": self.cfg.flat(), **extra}
        summary.pop("evaluated", None)
        if self.is_main:
            self.folder.write_summary(summary)
        return summary

    def _report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        if self.report_fn is not None:
            self.report_fn(dict(metrics), checkpoint_dir)

    def close(self) -> None:
        """Flush and close the TensorBoard log (rank 0)."""
        self.log.close()


def train(cfg: Config, report: Report | None = None, run_dir=None, resume_from=None,
          handle_signals: bool = False, stop: StopRequest | None = None) -> dict:
    """Train one model and return its summary (the last report's metrics plus best_fd, wall_s, run_dir, ...).

    report(metrics, checkpoint_dir) is called on every rank at each evaluation (eval.every steps and the final
    step) and at each train.checkpoint_every step; checkpoint_dir is set on rank 0 only. resume_from is a
    checkpoint folder or a run folder (its newest checkpoint) and continues bitwise on the same hardware.
    A non-finite loss ends the run with status "diverged" instead of raising. With handle_signals (one process,
    main thread: the command line) SIGINT/SIGTERM end the run after the current step with a checkpoint and
    status "interrupted"; the summary's "signal" names the signal. `stop` is a StopRequest a caller sets from
    elsewhere (a Tune trial asked to stop, tune/trial.py) with the same effect.
    """
    if not isinstance(cfg, Config):
        raise ConfigError(f"train() needs an ict_core.config.Config, got {type(cfg).__name__}")
    stop = stop if stop is not None else StopRequest()
    with StopOnSignals(stop, handle_signals and rank_and_world()[1] == 1):
        run = Run(cfg, report, run_dir, resume_from, stop)
        try:
            return run.run()
        finally:
            run.close()
