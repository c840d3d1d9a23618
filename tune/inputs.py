"""Inputs under a URI: a data set folder or a weights file fetched once into a node-local cache, a config's input
paths made local (`localize_inputs`), and the checks of the input paths a plan names (tune/store.py moves the
files)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tune.store import Store, StoreError, cache_root, is_uri, safe_name


def fetch_input(uri: str, cache: Path | None = None) -> str:
    """A data set folder or a weights file under a storage URI, copied once into this node's cache; returns the
    local path. Concurrent callers on one node (several ranks, several trials) copy into their own temp folder
    and the first rename wins, so nobody reads a half-copied input."""
    cache = Path(cache) if cache is not None else cache_root() / "inputs"
    key = hashlib.sha1(uri.encode()).hexdigest()[:12]
    name = safe_name(uri.rstrip("/").rsplit("/", 1)[-1]) or "input"
    target = cache / f"{key}-{name}"
    if target.exists():
        return str(target)
    store = Store(uri)
    if not store.exists():
        raise StoreError(f"{uri} does not exist in storage")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache))
    try:
        if store.is_file(""):
            store.get_file("", tmp / name)
            source = tmp / name
        else:
            source = tmp / name
            for rel in store.files():
                store.get_file(rel, source / rel)
            source.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(source, target)
        except OSError:
            if not target.exists():  # not another caller's copy that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


INPUT_KEYS = ("data.path", "eval.inception_path")


def localize_inputs(cfg):
    """The config with data.path / eval.inception_path under a URI replaced by this node's cached copy."""
    overrides = {}
    for key in INPUT_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and is_uri(value):
            overrides[key] = fetch_input(value)
    return cfg.with_overrides(overrides) if overrides else cfg


def input_problem(key: str, value) -> str | None:
    """Why an input a trial reads is missing (None when it is there): a URI is looked up in storage, a path
    on this machine."""
    if not value:
        return None
    if is_uri(value):
        try:
            store = Store(value)
            found = store.is_file("") if key == "eval.inception_path" else store.exists()
        except OSError as err:
            return f"{key}={value!r} cannot be read from storage: {err}"
        return None if found else f"{key}={value!r} does not exist in storage"
    path = Path(value).expanduser()
    ok = path.is_file() if key == "eval.inception_path" else path.exists()
    return None if ok else f"{key}={value!r} does not exist on this machine"


def absolute_input(value):
    """A relative input path made absolute against this process's working directory (URIs unchanged)."""
    if not value or not isinstance(value, str) or is_uri(value):
        return value
    return str(Path(value).expanduser().resolve())
