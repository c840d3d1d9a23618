"""Shared test settings."""
import os

import pytest
import torch

# Every Ray a test starts without an address is a private local one: never join a cluster that `ray start`, or
# another test's ray.cluster_utils.Cluster, left running on this machine (tune/cluster.py, resolve_address).
# Subprocesses of the tests inherit it.
os.environ["ICT_JOIN_RUNNING_CLUSTER"] = "0"


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The suite's networks are tiny: a second thread gains nothing, and OpenMP threads that spin-wait make a
    # step several times slower when Ray's processes share the machine's 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
