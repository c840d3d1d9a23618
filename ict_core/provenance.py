"""What produced a run: code version, library versions, device and world size (no host names)."""
from __future__ import annotations

import platform
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

_REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> dict:
    """The commit of the checkout the package runs from, and whether it had local changes."""
    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = run("rev-parse", "HEAD")
    if commit is None:
        # Code shipped to remote nodes as a Ray working_dir has no .git; the launcher passes the commit along.
        commit = os.environ.get("ICT_GIT_COMMIT") or None
    status = run("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def versions() -> dict:
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
    }
    for name in ("scipy", "sklearn", "ray", "optuna"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", None)
    return out


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def collect(device: torch.device, world_size: int) -> dict:
    """Provenance of one run, written to provenance.json beside its results."""
    return {
        **git_commit(),
        "versions": versions(),
        "device": device_description(device),
        "device_type": device.type,
        "world_size": world_size,
        "platform": platform.platform(terse=True),
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
    }
