"""Shared test settings and the fixtures several modules share.

Tiers: `pytest -m "not slow"` is the everyday tier (under 3 minutes on 2 cores); CI runs every test. A test is
`slow` when it runs a search or a cluster on real Ray, drives a subprocess that is interrupted or killed, or trains
or measures for long (over ~5 s on 2 idle cores); see pyproject.toml.

Shared fixtures, so the suite pays each cost once:
- `cache_dir`: one feature-network cache for the session (the digits classifier and the reference statistics are
  trained and computed once, not once per module).
- `tiny_run`: one run folder of the `tiny` preset after 40 real training steps with evaluations, for tests that
  only read a finished run (ict-sample, ict-score). Tests must not write into it.
- `shared_ray`: one local Ray (2 CPUs, with the dashboard Ray Train needs) for tests that only need a Ray to run
  a search on. Those tests run last, one after the other, so Ray starts once; any other test first shuts it down,
  so a test that starts its own Ray or cluster never finds one running. Tests that set environment variables the
  Ray workers must see, or that need their own cluster, keep their own Ray.
"""
import os
import socket

import pytest
import torch

# Every Ray a test starts without an address is a private local one: never join a cluster that `ray start`, or
# another test's ray.cluster_utils.Cluster, left running on this machine (tune/cluster.py, resolve_address).
# Subprocesses of the tests inherit it.
os.environ["ICT_JOIN_RUNNING_CLUSTER"] = "0"

SHARED_RAY = "shared_ray"
_shared = {"running": False}


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The suite's networks are tiny: a second thread gains nothing, and OpenMP threads that spin-wait make a
    # step several times slower when Ray's processes share the machine's 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One feature-network cache for the session, so the digits classifier is trained once. The same folder as
    the search tests give their trials (the session's base folder / featnet-cache)."""
    path = tmp_path_factory.getbasetemp() / "featnet-cache"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir):
    """(run folder, cache_dir): the tiny preset trained 40 real steps, evaluated, checkpointed. Read only."""
    from ict_core import trainer
    from ict_core.config import load_config

    run_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("tiny", ["train.total_steps=40", "train.num_threads=1", f"eval.cache_dir={cache_dir}",
                               "eval.num_samples=100"])
    trainer.train(cfg, run_dir=run_dir)
    return run_dir, cache_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shared_ray():
    """The session's local Ray, started on first use (see the module docstring); tests must not shut it down."""
    import ray

    from tune.cluster import pythonpath_env

    os.environ.update(pythonpath_env())  # the raylet and its workers inherit it, as tune.cluster.connect does
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=_free_port(), log_to_driver=False, logging_level="ERROR")
    _shared["running"] = True
    yield ray
    _stop_shared_ray()


def _stop_shared_ray() -> None:
    if _shared["running"]:
        import ray

        ray.shutdown()
        _shared["running"] = False


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    # The tests on the shared Ray last and together (stable: each group keeps its order), so it starts once.
    items[:] = ([i for i in items if SHARED_RAY not in getattr(i, "fixturenames", ())]
                + [i for i in items if SHARED_RAY in getattr(i, "fixturenames", ())])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before any fixture of the item (module-scoped ones included) starts its own Ray. With the order above this
    # only matters when a run picks tests by hand (e.g. -k) in a way that breaks the shared group up.
    if SHARED_RAY not in getattr(item, "fixturenames", ()):
        _stop_shared_ray()
