"""Shared test set-up: the shipped variants, and one torch thread (small problems on a shared 2-core machine)."""

import pytest
import torch

SHIPPED = ["topk", "batchtopk", "matryoshka", "relu", "jumprelu", "gated"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small problems: one thread avoids OpenMP barrier stalls when anything else runs on the machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
