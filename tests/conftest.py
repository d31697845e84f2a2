"""Shared test set-up: the shipped variants, and one torch thread (small problems on a shared 2-core machine)."""

import pytest
import torch

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
