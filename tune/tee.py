"""Copying a process's stdout and stderr into files while it runs (a run's stdout.log and stderr.log)."""
from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def tee_output(stdout_path, stderr_path):
    """Copy this process's stdout/stderr (Python level) into two files while inside."""
    out_fh = open(stdout_path, "a", buffering=1)
    err_fh = open(stderr_path, "a", buffering=1)
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(old[0], out_fh), _Tee(old[1], err_fh)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old
        out_fh.close()
        err_fh.close()


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
