"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The suite's networks are tiny: a second thread gains nothing, and OpenMP threads that spin-wait make a
    # step several times slower when Ray's processes share the machine's 2 cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
