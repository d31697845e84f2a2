"""Shared test set-up: the shipped variants, and one torch thread (small problems on a shared 2-core machine)."""

import os
import sys

import pytest
import torch

# The Triton kernels run on CPU tensors under Triton's interpreter, which must be chosen before triton is imported
# (tests/test_kernels.py); on a CUDA machine they run compiled, on the GPU.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from synthsae.config import SAEConfig

SHIPPED = ["topk", "batchtopk", "matryoshka", "relu", "jumprelu", "gated", "blocktopk"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small problems: one thread avoids OpenMP barrier stalls when anything else runs on the machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_sae(S: int, d: int, m: int, variant: str, k: int = 4, seed: int = 0):
    """S seeds of a small SAE with a non-trivial decoder bias and encoder bias, so both show up in every cost."""
    from synthsae.sae import build_sae

    sae = build_sae(SAEConfig(variant=variant, d_sae=m, k=min(k, m)), d, list(range(seed, seed + S)), "cpu", torch.float32)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 99)
        sae.b_dec.copy_(0.3 * torch.randn(sae.b_dec.shape, generator=g))
        sae.b_enc.copy_(0.05 * torch.randn(sae.b_enc.shape, generator=g))
    return sae


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, with the reason, where no CUDA device is at hand."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
