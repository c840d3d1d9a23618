"""Atomic file writes: a temp file in the target's folder, then a rename, so a reader or a crash never leaves
half a file (concurrent trials share the feature-net cache; a killed run must keep its last good logs; a killed
search driver must keep its last good tables). The one helper for it in this repository."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator


def current_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (/proc/self/status), else by setting
    and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that wants a file name (Parquet, an Optuna journal); on a
    clean exit it is renamed to `path`, on an error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a file written here reads like an open()'s
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Call write(binary_handle) on a temp file beside `path`, then rename it to `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))
