"""SAE variants: shapes, the sparse TopK autograd path against dense autograd, seed slicing, batched = separate."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from synthsae.config import SAEConfig, TrainConfig, TruthConfig
from synthsae.sae import build_sae, get_variant, registered_variants
from synthsae.sae.base import SAE, as_seed_batch, batch_fvu
from synthsae.loop import train_steps
from synthsae.truth import build_truth, make_generator, sample

from conftest import SHIPPED


def small_sae(variant: str, S: int = 3, d: int = 16, m: int = 48, k: int = 4, dtype=torch.float32, seeds=None) -> SAE:
    cfg = SAEConfig(variant=variant, d_sae=m, k=k, aux_k=8, l1_warmup_steps=5)
    sae = build_sae(cfg, d, seeds if seeds is not None else list(range(S)), dtype=dtype)
    with torch.no_grad():  # make biases non-trivial so b_dec handling is exercised
        g = torch.Generator().manual_seed(99)
        sae.b_dec.copy_(0.3 * torch.randn(sae.b_dec.shape, generator=g, dtype=dtype))
        sae.b_enc.copy_(0.1 * torch.randn(sae.b_enc.shape, generator=g, dtype=dtype))
    return sae


def test_every_shipped_variant_is_registered():
    assert set(SHIPPED) <= set(registered_variants())
    for v in SHIPPED:
        assert get_variant(v).variant == v


@pytest.mark.parametrize("variant", SHIPPED)
def test_shapes_and_shared_input_broadcast(variant):
    S, B, d, m = 3, 20, 16, 48
    sae = small_sae(variant, S, d, m)
    assert sae.W_enc.shape == (S, d, m) and sae.b_enc.shape == (S, m)
    assert sae.W_dec.shape == (S, m, d) and sae.b_dec.shape == (S, d)
    assert torch.allclose(sae.W_dec.norm(dim=2), torch.ones(S, m), atol=1e-5)

    x = torch.randn(B, d)
    acts = sae.encode(x)
    assert acts.shape == (S, B, m) and (acts >= 0).all()  # Float[Tensor, "S B m"]
    assert sae.decode(acts).shape == (S, B, d)  # Float[Tensor, "S B d"]
    assert torch.allclose(acts, sae.encode(x.expand(S, B, d)), atol=1e-6)
    out = sae(x, step=0)
    assert out.x_hat.shape == (S, B, d) and out.losses.shape == (S,) and out.fired.shape == (S, m)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("variant", SHIPPED)
def test_seeds_differ_and_init_is_per_seed(variant):
    a = small_sae(variant, seeds=[0, 1, 2])
    b = small_sae(variant, seeds=[2])
    assert not torch.allclose(a.W_dec[0], a.W_dec[1])
    assert torch.equal(a.W_dec[2], b.W_dec[0]) and torch.equal(a.W_enc[2], b.W_enc[0])


@pytest.mark.parametrize("variant", SHIPPED)
def test_select_seeds_is_a_slice(variant):
    sae = small_sae(variant, S=4)
    sub = sae.select_seeds([3, 1])
    assert type(sub) is type(sae) and sub.init_seeds == [3, 1] and sub.n_seeds == 2
    x = torch.randn(10, 16)
    assert torch.equal(sub.encode(x), sae.encode(x)[[3, 1]])
    for k, v in sub.state_dict().items():
        assert torch.equal(v, sae.state_dict()[k][[3, 1]])


def _dense_reference_loss(sae: SAE, x: Tensor, dead: Tensor) -> Tensor:
    """The TopK-family losses written with dense tensors and plain autograd (same selection)."""
    S, m = sae.n_seeds, sae.d_sae
    B = x.shape[-2]
    pre = sae.pre_acts(x)
    with torch.no_grad():
        code, _ = sae.select(pre.detach())
        sel = torch.zeros(S, B, m, dtype=torch.bool)
        sel[code.rows // B, code.rows % B, code.cols % m] = True
    acts = torch.relu(pre) * sel
    if sae.variant == "matryoshka":
        recon = [batch_fvu(x, torch.baddbmm(sae.b_dec.unsqueeze(1), acts[:, :, :p], sae.W_dec[:, :p])) for p in sae.prefixes()]
        return torch.stack(recon).mean(dim=0).sum()
    x_hat = sae.decode(acts)
    loss = batch_fvu(x, x_hat)
    masked = pre.detach().masked_fill(~dead.unsqueeze(1), float("-inf"))
    _, ai = torch.topk(masked, sae.cfg.aux_k, dim=-1)
    amask = torch.zeros(S, B, m, dtype=torch.bool).scatter_(-1, ai, True) & dead.unsqueeze(1)
    e = (as_seed_batch(x, S) - x_hat).detach()
    e_hat = torch.bmm(torch.relu(pre) * amask, sae.W_dec)
    aux = (e - e_hat).pow(2).sum((1, 2)) / (e - e.mean(1, keepdim=True)).pow(2).sum((1, 2))
    return (loss + sae.cfg.aux_coeff * dead.any(dim=1) * aux).sum()


@pytest.mark.parametrize("variant", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("shared", [True, False])
def test_sparse_autograd_matches_dense_autograd(variant, shared):
    torch.manual_seed(0)
    sae = small_sae(variant, dtype=torch.float64)
    x = torch.randn(24, 16, dtype=torch.float64) if shared else torch.randn(3, 24, 16, dtype=torch.float64)
    dead = torch.rand(3, 48) < 0.3
    out = sae(x, 0, dead=dead)
    out.loss.backward()
    ours = {k: p.grad.clone() for k, p in sae.named_parameters()}
    sae.zero_grad()
    ref = _dense_reference_loss(sae, x, dead)
    ref.backward()
    assert torch.allclose(out.loss, ref, rtol=1e-10, atol=1e-12)
    for k, p in sae.named_parameters():
        assert torch.allclose(ours[k], p.grad, rtol=1e-9, atol=1e-12), k


@settings(max_examples=15, deadline=None)
@given(S=st.integers(1, 3), B=st.integers(1, 12), d=st.integers(2, 10), m=st.sampled_from([8, 16, 24]),
       k=st.integers(1, 6), seed=st.integers(0, 1000))
def test_topk_training_forward_equals_inference_encode_decode(S, B, d, m, k, seed):
    cfg = SAEConfig(variant="topk", d_sae=m, k=k)
    sae = build_sae(cfg, d, list(range(seed, seed + S)))
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(seed))
    out = sae(x, 0)
    acts = sae.encode(x)
    assert ((acts > 0).sum(dim=2) <= k).all()
    assert torch.allclose(out.x_hat, sae.decode(acts), atol=1e-5)
    assert torch.equal(out.fired, (acts > 0).any(dim=1))


def _tiny_truth():
    return build_truth(TruthConfig(d=16, n_atoms=24, subspace_ranks=[3, 2], subspace_orthogonal=[True, False],
                                   target_l0=3.0, n_classes=8))


@pytest.mark.parametrize("variant", SHIPPED)
def test_batched_seeds_equal_separate_runs(variant):
    truth = _tiny_truth()
    gen = make_generator(5)
    batches = [sample(truth, 64, gen, details=False).x for _ in range(25)]
    tcfg = TrainConfig(steps=25, lr=3e-3, warmup_steps=3, batch_size=64, dead_window_tokens=64 * 5)
    seeds = [3, 7, 11]
    cfg = SAEConfig(variant=variant, d_sae=40, k=3, aux_k=4, l1_warmup_steps=5)
    together = build_sae(cfg, 16, seeds)
    train_steps(together, iter(batches), 25, tcfg, progress=False)
    for i, s in enumerate(seeds):
        alone = build_sae(cfg, 16, [s])
        train_steps(alone, iter(batches), 25, tcfg, progress=False)
        for name, p in alone.state_dict().items():
            torch.testing.assert_close(together.state_dict()[name][i : i + 1], p, rtol=1e-5, atol=1e-6, msg=f"{variant} {name}")


def test_stable_argsort_runs_on_one_thread_and_gives_the_thread_count_back(monkeypatch):
    """The sparse code's sort runs on one CPU thread (the parallel sort stalls under contention), is stable, and
    leaves torch's thread count as it was."""
    from synthsae.sae.sparse import stable_argsort
    from synthsae.threads import threads_for

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen = []
        keys = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0))
        real_sort = torch.sort
        monkeypatch.setattr(torch, "sort", lambda *a, **kw: (seen.append(torch.get_num_threads()), real_sort(*a, **kw))[1])
        perm = stable_argsort(keys)
        monkeypatch.undo()
        assert seen == [1]  # the sort itself ran on one thread
        seen.clear()
        assert torch.equal(perm, torch.sort(keys, stable=True).indices)
        assert torch.equal(keys[perm], keys.sort().values)
        for v in range(7):  # stable: equal keys keep their original order
            idx = perm[keys[perm] == v]
            assert torch.equal(idx, idx.sort().values)
        assert torch.get_num_threads() == 2
        with threads_for(16, 8, 8, "cpu"):  # a small problem: one thread inside ...
            seen.append(torch.get_num_threads())
        assert seen == [1] and torch.get_num_threads() == 2  # ... and two again after
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("variant", SHIPPED)
def test_init_is_unit_decoder_rows_and_the_encoder_is_their_transpose(variant):
    """Each seed's init: float64 draws from its own generator, unit rows rounded once, encoder = decoder^T exactly,
    and a seed's weights do not depend on the other seeds in the stack."""
    from synthsae.sae import build_sae

    sae = build_sae(SAEConfig(variant=variant, d_sae=96, k=4), 32, [3, 7], "cpu", torch.float32)
    assert torch.equal(sae.W_enc, sae.W_dec.transpose(1, 2))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(2, 96))
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(96, 32, generator=gen, dtype=torch.float64)
    assert torch.equal(sae.W_dec[1], (w / w.norm(dim=1, keepdim=True)).float())
    alone = build_sae(SAEConfig(variant=variant, d_sae=96, k=4), 32, [7], "cpu", torch.float32)
    assert torch.equal(alone.W_dec[0], sae.W_dec[1])
