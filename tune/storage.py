"""The run folders of a search, kept in the experiment's storage (a local path, NFS, or a URI such as s3://).

Every seed of every trial trains into `RUNS_ROOT/<stratum>/<trial_id>/seed_<seed>` (RUNS_ROOT is `runs/` of the
experiment's shared storage), written there directly by the trial, so nothing depends on Ray copying a trial's
working directory back (it does not, for reused actors: docs/ARCHITECTURE.md, "Where a search writes").
With a URI root the trainer writes to a local scratch folder that is mirrored to the URI after every report.
The driver reads the folders back through pyarrow's file systems, the same code for a path and for s3://.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ict_core import rundir
from ict_core.records import COMPLETED, DIVERGED

RUNS_DIR = "runs"  # under the experiment's shared storage
FINISHED = (COMPLETED, DIVERGED)  # a seed whose summary.json says this is not trained again


def is_uri(path: str) -> bool:
    return "://" in str(path)


def trial_folder(stratum: str, trial_id: str) -> str:
    """A trial's folder relative to RUNS_ROOT."""
    return f"{_safe(stratum)}/{_safe(trial_id)}"


def seed_folder(stratum: str, trial_id: str, seed: int) -> str:
    return f"{trial_folder(stratum, trial_id)}/seed_{int(seed)}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", str(name))


class RunStore:
    """Read and write run folders under one root, a local path or a URI."""

    def __init__(self, root: str):
        import pyarrow.fs as pafs

        self._pafs = pafs
        self.root = str(root).rstrip("/")
        if is_uri(self.root):
            self.fs, self._base = pafs.FileSystem.from_uri(self.root)
        else:
            self.root = str(Path(self.root).expanduser().resolve())
            self.fs, self._base = pafs.LocalFileSystem(), self.root

    @property
    def is_uri(self) -> bool:
        return is_uri(self.root)

    def uri(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _path(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    # ---- reading (driver and trial) ------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type != self._pafs.FileType.NotFound

    def read_text(self, rel: str) -> str | None:
        try:
            with self.fs.open_input_stream(self._path(rel)) as fh:
                return fh.read().decode()
        except (FileNotFoundError, OSError):
            return None

    def read_json(self, rel: str) -> dict | None:
        text = self.read_text(rel)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def read_jsonl(self, rel: str) -> list[dict]:
        rows = []
        for line in (self.read_text(rel) or "").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by a crash
                continue
        return rows

    # ---- writing (trial) -----------------------------------------------------------------------
    def local_dir(self, rel: str) -> Path:
        """Where the trainer writes the run folder `rel`: the folder itself for a local root, else a scratch copy
        holding whatever an earlier attempt mirrored (checkpoints included, so a restart resumes)."""
        if not self.is_uri:
            return Path(self._path(rel))
        local = Path(tempfile.gettempdir()) / "ict_runs" / _safe(self.root) / rel
        shutil.rmtree(local, ignore_errors=True)
        if self.exists(rel):
            local.mkdir(parents=True, exist_ok=True)
            self._pafs.copy_files(self._path(rel), str(local), source_filesystem=self.fs,
                                  destination_filesystem=self._pafs.LocalFileSystem())
        return local

    def push(self, rel: str, local: Path) -> None:
        """Mirror a local run folder to `rel` (URI roots only); checkpoints removed locally are removed there."""
        if not self.is_uri or not Path(local).exists():
            return
        local_fs = self._pafs.LocalFileSystem()
        for path in sorted(Path(local).rglob("*")):
            # Half-written files and checkpoint folders (".tmp-" of fileio, ".tmp_" of rundir) are skipped: they are
            # renamed into place by the writer and would vanish under the copy.
            if path.is_file() and not any(p.startswith(".tmp") for p in path.relative_to(local).parts):
                target = self._path(f"{rel}/{path.relative_to(local).as_posix()}")
                self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                self._pafs.copy_files(str(path), target, source_filesystem=local_fs, destination_filesystem=self.fs)
        ckpts = self._path(f"{rel}/{rundir.CHECKPOINTS}")
        if self.exists(f"{rel}/{rundir.CHECKPOINTS}"):
            keep = {p.name for p in (Path(local) / rundir.CHECKPOINTS).glob("step_*")}
            for info in self.fs.get_file_info(self._pafs.FileSelector(ckpts)):
                if info.base_name.startswith("step_") and info.base_name not in keep:
                    self.fs.delete_dir(info.path)

    def write_text(self, rel: str, text: str) -> None:
        path = self._path(rel)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as fh:
            fh.write(text.encode())

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self._path(rel))

    @contextmanager
    def capture_output(self, rel: str):
        """Copy this process's stdout/stderr (Python level) into `rel`/stdout.log and stderr.log while inside."""
        if self.is_uri:  # a scratch folder for the logs alone, started from what earlier attempts wrote
            local = Path(tempfile.mkdtemp(prefix="ict-logs-"))
            for name in ("stdout.log", "stderr.log"):
                (local / name).write_text(self.read_text(f"{rel}/{name}") or "")
        else:
            local = Path(self._path(rel))
            local.mkdir(parents=True, exist_ok=True)
        out_fh = open(local / "stdout.log", "a", buffering=1)
        err_fh = open(local / "stderr.log", "a", buffering=1)
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old[0], out_fh), _Tee(old[1], err_fh)
        try:
            yield local
        finally:
            sys.stdout, sys.stderr = old
            out_fh.close()
            err_fh.close()
            if self.is_uri:
                for name in ("stdout.log", "stderr.log"):
                    target = self._path(f"{rel}/{name}")
                    self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                    self._pafs.copy_files(str(local / name), target,
                                          source_filesystem=self._pafs.LocalFileSystem(), destination_filesystem=self.fs)
                shutil.rmtree(local, ignore_errors=True)


class _Tee:
    def __init__(self, stream, copy):
        self._stream, self._copy = stream, copy

    def write(self, text):
        self._copy.write(text)
        return self._stream.write(text)

    def flush(self):
        self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)
