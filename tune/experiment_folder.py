"""The driver's experiment folder: a local folder, or a local copy of a folder under a URI pushed to storage after
every write (the files move through tune/store.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

from tune.store import RUNS_DIR, FolderSync, Store, experiment_cache, is_uri


EXPERIMENT_SKIP = (RUNS_DIR, "ray")  # the trials' run folders and Ray's state: written there by others


class ExperimentFolder:
    """Where the driver writes an experiment's tables, experiment.json, ledgers and reports.

    `location` is a local folder or a URI. For a URI the driver writes into a local copy (`dir`, fetched from
    storage by `pull()`) and `push()` copies what changed to the URI after every write, so a driver whose disk is
    lost (`ray down`) loses nothing but its last unfinished write. Run folders (`runs/`) and Ray's state (`ray/`)
    are written into storage by the trials and by Ray and are not copied here."""

    def __init__(self, location, skip=EXPERIMENT_SKIP):
        location = str(location)
        self.is_uri = is_uri(location)
        if self.is_uri:
            self.location = location.rstrip("/")
            self.dir = experiment_cache(self.location)
            self._sync = FolderSync(Store(self.location), "", self.dir, skip=skip)
        else:
            self.dir = Path(location).expanduser().resolve()
            self.location = str(self.dir)
            self._sync = None

    def exists(self, rel: str) -> bool:
        if self.is_uri:
            return Store(self.location).is_file(rel)
        return (self.dir / rel).exists()

    def pull(self) -> None:
        """Make the local copy what storage holds (nothing to do for a local folder)."""
        if self._sync is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._sync.pull()

    def push(self) -> list[str]:
        return self._sync.push() if self._sync is not None else []

    def __str__(self) -> str:
        return self.location
