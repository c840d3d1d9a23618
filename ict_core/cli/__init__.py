"""What every command line of the project shares: input it cannot work with exits with code 2 and one line that
names the value and what is allowed, never a traceback.

Every error type that means "bad input" subclasses ict_core.errors.BadInput; each command line ends in
`except BadInput as err: return bad_input(err)`.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import BadInput

EXIT_BAD_INPUT = 2


def bad_input(err: BaseException) -> int:
    """Print `error: <message>` to stderr and return the exit code of bad input."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT


def command(script: str, fallback: str | None = None) -> str:
    """The command line a printed hint gives for the project's console script `script` (ict-train, ict-search,
    tensorboard, ...), one that works from any folder: the bare name when PATH finds this installation's script,
    else the script's absolute path beside this Python (a venv that is not activated). `fallback` (e.g. "-m
    ict_core.train", or a script's absolute path) runs under this Python when no such script is installed."""
    here = Path(sys.executable).parent / script
    if here.is_file():
        found = shutil.which(script)
        return script if found and Path(found).resolve() == here.resolve() else shlex.quote(str(here))
    if fallback is None:
        return script
    return f"{shlex.quote(sys.executable)} {fallback}"


def check_writable_folder(path: str | os.PathLike | None, flag: str) -> None:
    """Raise BadInput unless `path` is a folder this process can write into, or one it can create: a probe folder
    is made and removed in it, or in the nearest folder above it that exists (the folder itself is not created
    here). URIs (s3://, gs://, file://) are left to their file system; None means the command's default."""
    if path is None:
        return
    text = str(path)
    if "://" in text:
        return
    folder = Path(text).expanduser().absolute()
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"{flag} {text!r}: {probe} is a file, not a folder; give a folder to write into")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=probe))
    except OSError as err:
        what = "is not writable" if probe == folder else f"cannot be created in {probe}"
        raise BadInput(f"{flag} {text!r} {what} ({err.strerror}); give a folder you can write into") from None


def check_data_paths(cfg) -> None:
    """--dry-run's check that the files a config reads exist: data.path of a data set that needs one, and
    eval.inception_path when eval.features=inception."""
    from ..datasets import NEEDS_PATH

    if cfg.data.name in NEEDS_PATH and not Path(cfg.data.path).expanduser().exists():
        raise BadInput(f"data.path={cfg.data.path!r} does not exist (data.name={cfg.data.name} reads a local folder; "
                       f"see README, Data sets)")
    if cfg.eval.features == "inception" and not Path(cfg.eval.inception_path).expanduser().is_file():
        raise BadInput(f"eval.inception_path={cfg.eval.inception_path!r} is not a file (eval.features=inception "
                       f"needs the Inception-v3 weights file)")
