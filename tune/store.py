"""One store for everything a search or a training run writes: run folders, Parquet tables, ledgers, reports.

A store root is a local path (or NFS) or a URI that pyarrow's file systems understand (s3://, gs://, file://).
The same code moves files for both trial paths (the in-process trial, tune/trial.py, and the Ray Train path,
tune/ray_train.py) and for the driver (tune/search.py, analysis/report.py):

  Store(root)                 read / write / list / delete files under the root
  FolderSync(store, rel, local, skip=...)
                              keeps a local folder and STORE/rel in step: `pull()` fetches what storage holds,
                              `push()` copies only files that changed since the last push or pull (size and mtime)
                              and deletes the checkpoint folders (`checkpoints/step_*`) the trainer pruned locally,
                              so storage keeps the same `train.keep_checkpoints` newest ones
  fetch_input(uri)            a data set folder or a weights file under a URI, copied once into a node-local cache
                              (tune/inputs.py, with the checks of input paths)
  ExperimentFolder(location)  the driver's experiment folder, local or a copy of a URI (tune/experiment_folder.py)

Every node reaches the storage on its own (credentials from the node's environment or instance profile). For an
S3-compatible server other than AWS, set AWS_ENDPOINT_URL=http://HOST:PORT (pyarrow, so Ray and pandas, and boto
read it) in the environment of the driver and of every node.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ict_core import rundir
from ict_core.records import COMPLETED, DIVERGED
from tune.tee import tee_output

RUNS_DIR = "runs"  # under the experiment's shared storage
FINISHED = (COMPLETED, DIVERGED)  # a seed whose summary.json says this is not trained again
# Half-written files and checkpoint folders (".tmp-" of ict_core.fileio, ".tmp_" of rundir) are never copied: the
# writer renames them into place and they would vanish under the copy.
TMP_PREFIX = ".tmp"
CACHE_ENV = "ICT_CACHE"  # node-local cache of fetched inputs and scratch copies (default ~/.cache/ict_core)


def is_uri(path) -> bool:
    """A storage URI (s3://..., gs://..., file://...) rather than a local path."""
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a URI or a local path."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts if p]])
    return str(Path(base, *parts))


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ict_core").expanduser()


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", str(name))


def trial_folder(stratum: str, trial_id: str) -> str:
    """A trial's folder relative to RUNS_ROOT."""
    return f"{safe_name(stratum)}/{safe_name(trial_id)}"


def seed_folder(stratum: str, trial_id: str, seed: int) -> str:
    return f"{trial_folder(stratum, trial_id)}/seed_{int(seed)}"


class StoreError(OSError):
    """A storage location that cannot be reached or does not hold what was asked for."""


class Store:
    """Files under one root, a local path or a URI; `rel` paths use '/' and are relative to the root."""

    def __init__(self, root):
        import pyarrow.fs as pafs

        self._pafs = pafs
        self.root = str(root).rstrip("/")
        if is_uri(self.root):
            try:
                self.fs, self._base = pafs.FileSystem.from_uri(self.root)
            except (OSError, ValueError) as err:
                raise StoreError(f"storage {self.root!r} cannot be opened: {err}") from None
            self._base = self._base.rstrip("/")
        else:
            self.root = str(Path(self.root).expanduser().resolve())
            self.fs, self._base = pafs.LocalFileSystem(), self.root
        self.local_fs = pafs.LocalFileSystem()

    @property
    def is_uri(self) -> bool:
        return is_uri(self.root)

    def uri(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _path(self, rel: str) -> str:
        return f"{self._base}/{rel}" if rel else self._base

    # ---- reading -------------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self._path(rel)).type != self._pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self._path(rel)).type == self._pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(rel)) as fh:
                return fh.read()
        except (FileNotFoundError, OSError):
            return None

    def read_text(self, rel: str) -> str | None:
        data = self.read_bytes(rel)
        return None if data is None else data.decode()

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

    def files(self, rel: str = "") -> dict[str, int]:
        """{path relative to `rel`: size} of every file below `rel` (empty when it does not exist)."""
        base = self._path(rel)
        if self.fs.get_file_info(base).type != self._pafs.FileType.Directory:
            return {}
        out = {}
        for info in self.fs.get_file_info(self._pafs.FileSelector(base, recursive=True)):
            if info.type == self._pafs.FileType.File:
                out[info.path[len(base):].lstrip("/")] = info.size
        return out

    # ---- writing -------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one file. On a local root through a temp file and a rename (readers never see half a file);
        object stores make a whole object visible at once."""
        path = self._path(rel)
        if not self.is_uri:
            from ict_core.fileio import atomic_path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(data)
            return
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as fh:
            fh.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def put_file(self, local, rel: str) -> None:
        target = self._path(rel)
        if not self.is_uri and Path(local).resolve() == Path(target).resolve():
            return
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        self._pafs.copy_files(str(local), target, source_filesystem=self.local_fs, destination_filesystem=self.fs)

    def get_file(self, rel: str, local) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self._pafs.copy_files(self._path(rel), str(local), source_filesystem=self.fs,
                              destination_filesystem=self.local_fs)

    def remove(self, rel: str) -> None:
        info = self.fs.get_file_info(self._path(rel))
        if info.type == self._pafs.FileType.Directory:
            self.fs.delete_dir(self._path(rel))
        elif info.type == self._pafs.FileType.File:
            self.fs.delete_file(self._path(rel))

    def dirs(self, rel: str) -> list[str]:
        """Names of the folders directly below `rel`."""
        base = self._path(rel)
        if self.fs.get_file_info(base).type != self._pafs.FileType.Directory:
            return []
        return [i.base_name for i in self.fs.get_file_info(self._pafs.FileSelector(base))
                if i.type == self._pafs.FileType.Directory]

    # ---- whole folders -------------------------------------------------------------------------
    def sync(self, rel: str, local, skip=(), checkpoints: bool = True) -> "FolderSync":
        return FolderSync(self, rel, local, skip=skip, checkpoints=checkpoints)

    def working_copy(self, rel: str, local=None, checkpoints: bool = True) -> "FolderSync":
        """Where a writer works on the folder `rel`: the folder itself for a local root; for a URI root a
        node-local folder (`local`, default a scratch folder, emptied first) holding what storage has, checkpoints
        included, so a restart on another node resumes. Push it after each change."""
        if not self.is_uri and local is None:
            return FolderSync(self, rel, self._path(rel), checkpoints=checkpoints)
        local = Path(local) if local is not None else scratch_dir(self.root, rel)
        shutil.rmtree(local, ignore_errors=True)
        sync = FolderSync(self, rel, local, checkpoints=checkpoints)
        sync.pull()
        return sync

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
        try:
            with tee_output(local / "stdout.log", local / "stderr.log"):
                yield local
        finally:
            if self.is_uri:
                for name in ("stdout.log", "stderr.log"):
                    self.put_file(local / name, f"{rel}/{name}")
                shutil.rmtree(local, ignore_errors=True)


class FolderSync:
    """A local folder kept in step with STORE/rel.

    `push()` copies the files that changed since this object last pushed or pulled them (by size and mtime) and
    returns their paths; it deletes in storage the checkpoint folders `checkpoints/step_*` that are gone locally
    (the trainer keeps the newest `train.keep_checkpoints`), so storage holds the same ones. `checkpoints=False`
    leaves `checkpoints/` alone in both directions (the Ray Train path, where Ray persists the checkpoints).
    `skip` names top-level entries never copied (e.g. `runs` and `ray` of an experiment folder), `skip_any`
    folder names skipped at any depth (a report's copy leaves out `ray` and `checkpoints`). On a local
    root that is the folder itself, push and pull do nothing."""

    def __init__(self, store: Store, rel: str, local, skip=(), checkpoints: bool = True, skip_any=()):
        self.store, self.rel, self.local = store, rel.strip("/"), Path(local)
        self.skip = set(skip) | ({rundir.CHECKPOINTS} if not checkpoints else set())
        self.skip_any = set(skip_any)
        self.checkpoints = checkpoints
        self._sent: dict[str, tuple[int, int]] = {}

    def _r(self, rel: str) -> str:
        return f"{self.rel}/{rel}" if self.rel else rel

    @property
    def same_place(self) -> bool:
        return not self.store.is_uri and self.local.resolve() == Path(self.store._path(self.rel)).resolve()

    def _skipped(self, rel_parts: tuple[str, ...]) -> bool:
        return rel_parts[0] in self.skip or any(p.startswith(TMP_PREFIX) or p in self.skip_any for p in rel_parts)

    def _local_files(self) -> dict[str, os.stat_result]:
        out = {}
        if not self.local.is_dir():
            return out
        for path in self.local.rglob("*"):
            rel = path.relative_to(self.local)
            if self._skipped(rel.parts):
                continue
            try:
                if path.is_file():
                    out[rel.as_posix()] = path.stat()
            except OSError:  # removed while listing (a checkpoint pruned by the trainer)
                continue
        return out

    def pull(self) -> list[str]:
        """Fetch what storage holds into the local folder (created); returns the files fetched."""
        self.local.mkdir(parents=True, exist_ok=True)
        if self.same_place:
            return []
        fetched = []
        for rel, size in sorted(self.store.files(self.rel).items()):
            if self._skipped(tuple(rel.split("/"))):
                continue
            target = self.local / rel
            self.store.get_file(self._r(rel), target)
            stat = target.stat()
            self._sent[rel] = (stat.st_size, stat.st_mtime_ns)
            fetched.append(rel)
        return fetched

    def push(self) -> list[str]:
        """Copy what changed locally to storage; returns the files copied."""
        if self.same_place or not self.local.is_dir():
            return []
        copied = []
        for rel, stat in sorted(self._local_files().items()):
            key = (stat.st_size, stat.st_mtime_ns)
            if self._sent.get(rel) == key:
                continue
            try:
                self.store.put_file(self.local / rel, self._r(rel))
            except FileNotFoundError:  # pruned between listing and copying
                continue
            self._sent[rel] = key
            copied.append(rel)
        if self.checkpoints:
            self._prune_checkpoints()
        return copied

    def _prune_checkpoints(self) -> None:
        ckpts = self._r(rundir.CHECKPOINTS)
        keep = {p.name for p in (self.local / rundir.CHECKPOINTS).glob("step_*")}
        for name in self.store.dirs(ckpts):
            if name.startswith("step_") and name not in keep:
                self.store.remove(f"{ckpts}/{name}")
                prefix = f"{rundir.CHECKPOINTS}/{name}/"
                self._sent = {k: v for k, v in self._sent.items() if not k.startswith(prefix)}


def scratch_dir(root: str, rel: str) -> Path:
    """A node-local folder for the local copy of STORE(root)/rel."""
    return Path(tempfile.gettempdir()) / "ict_runs" / safe_name(root) / rel


def experiment_cache(uri: str) -> Path:
    """The driver's local copy of an experiment folder under a URI (the same on every start, so a resume on
    another machine finds its own copy by the URI alone)."""
    return cache_root() / "experiments" / safe_name(uri.rstrip("/"))


def check_storage(location: str, flag: str) -> None:
    """A clear one-line error when a storage URI cannot be used (no such bucket, no access, unknown scheme)."""
    if not is_uri(location):
        return
    try:
        store = Store(location)
        bucket = store._base.split("/", 1)[0]
        if store.fs.get_file_info(bucket).type == store._pafs.FileType.NotFound:
            raise StoreError(f"{bucket!r} does not exist")
    except (OSError, ValueError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StoreError(f"{flag} {location!r} cannot be used: {msg}. Give an existing bucket (and for a non-AWS "
                         f"endpoint set AWS_ENDPOINT_URL) or a local folder") from None


def check_storage_option(location: str, flag: str, error=StoreError) -> None:
    """A command line's storage option: a URI that can be used (check_storage), or a local folder that can be
    written; `error` is the command's own error class for the URI case."""
    from ict_core.cli import check_writable_folder

    if not is_uri(location):
        check_writable_folder(location, flag)
        return
    try:
        check_storage(location, flag)
    except StoreError as err:
        raise error(str(err)) from None


def report_copy(location: str) -> FolderSync:
    """A local copy of experiments under a URI (one experiment or a folder above several) for analysis/: the
    tables, experiment.json, ledgers and the run folders' samples and logs, without Ray's state or checkpoints.
    Push it afterwards to store what the report wrote (the report folder, Optuna journals)."""
    sync = FolderSync(Store(location), "", experiment_cache(location), skip_any=("ray", rundir.CHECKPOINTS))
    shutil.rmtree(sync.local, ignore_errors=True)
    sync.pull()
    return sync
