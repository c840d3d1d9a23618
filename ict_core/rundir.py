"""The run folder: its layout, checkpoints (save, find, load) and the logs a restart truncates.

A run folder holds

    config.json       the resolved config (ict_core.config.Config.save)
    provenance.json   code version, host, device and world size (ict_core/provenance.py)
    metrics.jsonl     one row per train.log_every steps (loss, N(k), throughput, learning rate)
    evals.jsonl       one row per evaluation or checkpoint report: the trainer's metrics
    summary.json      how the run ended: the last report's metrics plus best_fd, wall_s, config, ...
    samples/          step_<k>.png sample grids of the evaluations
    checkpoints/      step_<k>/{state.pt, meta.json}, the newest train.keep_checkpoints of them; meta.json
                      holds the step, last evaluation and config of state.pt, readable without torch
    events.*          TensorBoard events (ict_core/events.py)

This module is the one place that knows these names; the trainer, the command lines and tune/ find files
through it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text

CONFIG = "config.json"
PROVENANCE = "provenance.json"
METRICS = "metrics.jsonl"
EVALS = "evals.jsonl"
SUMMARY = "summary.json"
SAMPLES = "samples"
CHECKPOINTS = "checkpoints"
STATE = "state.pt"
META = "meta.json"
FAULT_MARKER = ".fault_injected"  # written by train.fault_step's injected fault; a restart does not fault again
# What the trainer writes into a run folder; any of them means the folder holds a run.
RUN_FILES = (CONFIG, SUMMARY, METRICS, EVALS, CHECKPOINTS, SAMPLES)


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def latest_checkpoint(path: str | os.PathLike) -> Path:
    """`path` is a checkpoint folder (holds state.pt) or a run folder (-> its newest checkpoint)."""
    path = Path(path)
    if (path / STATE).is_file():
        return path
    root = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
    candidates = sorted(p for p in root.glob("step_*") if (p / STATE).is_file())
    if not candidates:
        raise FileNotFoundError(f"resume_from={str(path)!r} holds no checkpoint (expected {STATE} or "
                                f"{CHECKPOINTS}/step_*/{STATE})")
    return candidates[-1]


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint folder belongs to."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def run_dir_for(run_dir: str | os.PathLike | None, resume_from: str | os.PathLike | None) -> Path:
    """The folder a run writes: `run_dir` when given, else the run folder of `resume_from`'s newest checkpoint,
    else a new temporary folder."""
    if run_dir is not None:
        return Path(run_dir)
    if resume_from is not None:
        return run_dir_of(latest_checkpoint(resume_from))
    import tempfile

    return Path(tempfile.mkdtemp(prefix="ict-run-"))


def load_checkpoint(checkpoint: Path) -> dict:
    """The state a checkpoint folder holds, on the CPU (generator states must stay CPU ByteTensors; the
    trainer's load_state_dict calls move weights and optimizer moments to the parameters' device)."""
    import torch

    return torch.load(Path(checkpoint) / STATE, map_location="cpu", weights_only=False)


def read_checkpoint_config(checkpoint: Path) -> dict:
    """The config tree a checkpoint was written with (its meta.json, readable without torch); {} if unknown."""
    try:
        return json.loads((Path(checkpoint) / META).read_text()).get("config") or {}
    except (OSError, ValueError):
        return {}


def json_safe(value: Any) -> Any:
    """`value` with NaN as null and infinities as +-1e308, so that strict JSON readers accept it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(json_safe(row)) + "\n")


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=True) + "\n")


def truncate_jsonl(path: Path, max_step: int) -> None:
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


class RunFolder:
    """The files of one run folder, as the trainer writes them (rank 0 only)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.checkpoints = self.path / CHECKPOINTS
        self.fault_marker = self.path / FAULT_MARKER

    def start(self, cfg, provenance: dict, resumed_step: int | None) -> None:
        """Write config and provenance; a fresh run drops old logs, a resumed one keeps rows up to its step."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        cfg.save(self.path / CONFIG)
        write_json(self.path / PROVENANCE, provenance)
        for name in (METRICS, EVALS):
            if resumed_step is None:
                (self.path / name).unlink(missing_ok=True)
            else:
                truncate_jsonl(self.path / name, resumed_step)

    def sample_path(self, step: int) -> Path:
        return self.path / SAMPLES / f"{step_dir_name(step)}.png"

    def log_metrics(self, row: dict) -> None:
        append_jsonl(self.path / METRICS, row)

    def log_eval(self, row: dict) -> None:
        append_jsonl(self.path / EVALS, row)

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)

    def mark_fault(self, step: int) -> None:
        self.fault_marker.parent.mkdir(parents=True, exist_ok=True)
        self.fault_marker.write_text(f"fault injected at step {step}\n")

    def save_checkpoint(self, step: int, state: dict, keep: int) -> Path:
        """checkpoints/step_<step>/ written whole or not at all; only the newest `keep` are kept. meta.json copies
        the state's `last_eval` and `config` (when it has them)."""
        import torch

        meta = {"step": step, "metrics": state.get("last_eval"), "config": state.get("config")}
        name = step_dir_name(step)
        tmp = self.checkpoints / f".tmp_{name}"
        final = self.checkpoints / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / STATE)
        write_json(tmp / META, meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        kept = sorted(p for p in self.checkpoints.glob("step_*") if p.is_dir())
        for old in kept[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final
