"""TensorBoard event files of one run, in RUN_DIR/tensorboard: training scalars (train/loss, train/num_points,
train/images_per_s, train/lr), every numeric result of an evaluation (eval/fd, eval/kid, ...) and the sample grid
of each evaluation. Only rank 0 writes. Without the `tensorboard` package (the project's `viz` extra) a run
prints one note and writes no events; nothing else changes.

View them with `tensorboard --logdir RUN_DIR` (or a folder of runs).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np

EVENTS_SUBDIR = "tensorboard"


class EventLog:
    """A thin wrapper around torch's SummaryWriter that skips non-numeric and non-finite values."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.log_dir = Path(run_dir) / EVENTS_SUBDIR
        self.writer = None
        if resume_step is None:  # a fresh run in a reused folder (a restarted trial) starts a fresh history
            shutil.rmtree(self.log_dir, ignore_errors=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("[ict] the tensorboard package is not installed, so this run writes no TensorBoard events "
                  "(pip install tensorboard)", flush=True)
            return
        # purge_step: after a resume, TensorBoard drops the events an earlier attempt wrote past the checkpoint. It
        # drops steps >= purge_step, and the checkpoint's own step was logged before it was written: keep that one.
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge, flush_secs=30)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def scalars(self, group: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self.writer.add_scalar(f"{group}/{key}", float(value), step)

    def image(self, tag: str, png_path: str | Path, step: int) -> None:
        """Log a PNG file (a sample grid) as an image."""
        if self.writer is None or not Path(png_path).is_file():
            return
        from PIL import Image

        with Image.open(png_path) as image:
            array = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, array, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


HPARAMS_PREFIX = "hparams"  # scalar tags of the metrics a run's HParams entry shows: hparams/final_fd, ...


def hparam_value(value):
    """A config value as TensorBoard HParams takes it: numbers and text as they are, lists as "1,2", None as "-"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(str(v) for v in value)
    return str(value)


def write_hparams(run_dir: str | Path, hparams: dict, metrics: dict, step: int = 0) -> bool:
    """Add a TensorBoard HParams entry to the run's events (RUN_DIR/tensorboard): `hparams` (name -> value) and the
    finite numeric `metrics` as hparams/<name> scalars at `step`, which the HParams view shows beside them, so
    runs sort and filter by configuration. False (and nothing written) without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary
    except ImportError:
        return False
    values = {k: hparam_value(v) for k, v in hparams.items()}
    numbers = {f"{HPARAMS_PREFIX}/{k}": float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    experiment, start, end = hparams_summary(values, numbers)
    writer = SummaryWriter(str(Path(run_dir) / EVENTS_SUBDIR))
    try:
        for summary in (experiment, start, end):
            writer._get_file_writer().add_summary(summary)
        for tag, value in numbers.items():
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()
    return True
