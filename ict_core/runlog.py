"""What a run tells while it trains, on rank 0 only: progress lines on stdout, the rows of metrics.jsonl and
evals.jsonl (through rundir.RunFolder) and TensorBoard events (events.py). Every other rank holds a RunLog that
does nothing, so the loop calls it without asking which rank it runs on."""
from __future__ import annotations

import shlex
from pathlib import Path

from .cli import command
from .events import EventLog
from .rundir import RunFolder

TRAIN_SCALARS = ("loss", "num_points", "images_per_s", "lr")  # train/<key> TensorBoard scalars of a metrics row


class RunLog:
    def __init__(self, folder: RunFolder | None, resume_step: int | None):
        """`folder` is None on ranks other than 0; `resume_step` as EventLog takes it (None: a fresh run)."""
        self.folder = folder
        self.events = EventLog(folder.path, resume_step=resume_step) if folder is not None else None

    def start(self, text: str) -> None:
        """The run's first line, and where to watch it."""
        if self.folder is None:
            return
        print(f"[ict] {text}", flush=True)
        if self.events.active:
            print(f"[ict] watch it: {command('tensorboard')} --logdir {shlex.quote(str(self.folder.path))}", flush=True)

    def train(self, row: dict, total_steps: int, batch_size: int) -> None:
        """A metrics.jsonl row (step, loss, num_points, images_per_s, ...), its scalars and a progress line."""
        if self.folder is None:
            return
        step = row["step"]
        self.folder.log_metrics(row)
        self.events.scalars("train", {k: row[k] for k in TRAIN_SCALARS}, step)
        eta = (total_steps - step) * batch_size / max(row["images_per_s"], 1e-9)
        print(f"[ict] step {step}/{total_steps}  N(k) {row['num_points']}  loss {row['loss']:.4g}  "
              f"{row['images_per_s']:.0f} img/s  ETA {format_seconds(eta)}", flush=True)

    def evaluation(self, metrics: dict, result: dict, sample_path: Path) -> None:
        """An evaluation: every numeric value of the evaluator's `result` and the sample grid as events, the
        report `metrics` as an evals.jsonl row, and a line of the main metrics."""
        if self.folder is None:
            return
        step = metrics["step"]
        self.events.scalars("eval", result, step)
        self.events.image("samples", sample_path, step)
        self.events.flush()
        self.folder.log_eval(metrics)
        print(f"[ict] eval step {step}: fd {metrics['fd']:.4g} +- {metrics['fd_se']:.2g}  "
              f"fd_student {metrics['fd_student']:.4g}  fd_2step {metrics['fd_2step']:.4g}  "
              f"kid(x1e3) {metrics['kid']:.4g}  loss_train {metrics['loss_train']:.4g}  "
              f"loss_heldout {metrics['loss_heldout']:.4g}", flush=True)

    def diverged(self, metrics: dict) -> None:
        """The last evals.jsonl row of a run whose loss became NaN or infinite."""
        if self.folder is None:
            return
        self.folder.log_eval(metrics)
        print(f"[ict] diverged at step {metrics['step']}: non-finite loss; stopping", flush=True)

    def close(self) -> None:
        """Flush and close the TensorBoard events."""
        if self.events is not None:
            self.events.close()


def format_seconds(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
