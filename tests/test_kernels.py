"""Triton kernels of the sparse code against the reference ops (ATen) and against float64.

Where no GPU is at hand they run on CPU tensors under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported); with CUDA they run compiled on the GPU. Skipped with the reason when
triton is not installed.

Tolerance: the kernels sum in a different order than ATen (a tile reduction, not a sequential loop), so fp32 results
are not bit-identical. Each is checked against the float64 result with the standard bound for a float32 sum of n
products, |error| <= (n + 2) * eps32 * sum |terms| elementwise (a wrong index, weight or row breaks it by orders of
magnitude; it allows only rounding). The top-k has no rounding: its values must equal torch.topk's exactly.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthsae.config import ConfigError
from synthsae.sae import kernels
from synthsae.sae.kernels import bench as kernel_bench
from synthsae.sae.sparse import code_from_rows_cols, code_from_topk, fast_topk, sparse_decode

EPS32 = torch.finfo(torch.float32).eps


def _device() -> str | None:
    if not kernels.triton_available():
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if kernels._interpreting() else None


DEV = _device()
REASON = (f"triton unavailable ({kernels.triton_unavailable_reason()})" if not kernels.triton_available()
          else "no CUDA and TRITON_INTERPRET is not set (triton was imported before tests/conftest.py could set it)")
needs_triton = pytest.mark.skipif(DEV is None, reason=REASON)
# on a GPU each new shape class compiles a kernel variant (seconds each): fewer examples there, same properties
PROP = settings(max_examples=10 if DEV == "cuda" else 20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _distinct_idx(S: int, B: int, m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Duplicate-free latent indices per token [S, B, k] (a random permutation's first k)."""
    return torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(S * B)]).view(S, B, k)


def _bound(n: int, abs_result: torch.Tensor) -> torch.Tensor:
    """Rounding bound of a float32 sum of n products whose absolute values sum to abs_result."""
    return (n + 2) * EPS32 * abs_result


def _decode_problem(S, B, m, d, k, zero_frac, seed):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(S, m, d, generator=gen)
    vals = torch.rand(S * B * k, generator=gen) * 3 - 1
    vals[torch.rand(S * B * k, generator=gen) < zero_frac] = 0.0
    g_out = torch.randn(S * B, d, generator=gen)
    return W, vals, g_out, code_from_topk(_distinct_idx(S, B, m, k, gen), m)


def _decode_grads(W, vals, g_out, code, choice, dtype=torch.float32):
    W = W.to(DEV, dtype).clone().requires_grad_(True)
    v = vals.to(DEV, dtype).clone().requires_grad_(True)
    with kernels.forced(choice):
        out = sparse_decode(v, W, code)
        out.backward(g_out.to(DEV, dtype))
    return out.detach().double().cpu(), v.grad.double().cpu(), W.grad.double().cpu()


def _to(code, dev):
    """The same code on device `dev`."""
    return type(code)(rows=code.rows.to(dev), cols=code.cols.to(dev), offsets=code.offsets.to(dev), n_rows=code.n_rows,
                      n_cols=code.n_cols, per_row=code.per_row)


def _exact(W, vals, g_out, code):
    """float64 forward and gradients, and the same sums over absolute values (for the bound)."""
    S, m, d = W.shape
    Wf = W.double().reshape(S * m, d)
    dense = torch.zeros(code.n_rows, S * m, dtype=torch.float64)
    dense[code.rows, code.cols] = vals.double()
    out, g_v, g_W = dense @ Wf, (g_out.double() @ Wf.t())[code.rows, code.cols], dense.t() @ g_out.double()
    a = dense.abs()
    abs_out, abs_gv, abs_gW = a @ Wf.abs(), (g_out.double().abs() @ Wf.abs().t())[code.rows, code.cols], a.t() @ g_out.double().abs()
    return (out, g_v, g_W.view(S, m, d)), (abs_out, abs_gv, abs_gW.view(S, m, d))


@needs_triton
@PROP
@given(S=st.integers(1, 3), B=st.integers(1, 6), m=st.integers(1, 48), d=st.integers(1, 40), k=st.integers(1, 8),
       zero_frac=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_sparse_decode_forward_backward_agree(S, B, m, d, k, zero_frac, seed):
    """Triton and the reference give the float64 result within the fp32 rounding bound, forward and backward, at
    any (S, B, m, d, k) incl. k = 1 and all-zero values; duplicate-free indices per token as TopK makes them."""
    k = min(k, m)
    W, vals, g_out, code = _decode_problem(S, B, m, d, k, zero_frac, seed)
    exact, absval = _exact(W, vals, g_out, code)
    counts = torch.bincount(code.cols, minlength=code.n_cols)
    n_terms = (k, d, int(counts.max()))
    dcode = _to(code, DEV)
    tri = _decode_grads(W, vals, g_out, dcode, "triton")
    ref = _decode_grads(W, vals, g_out, dcode, "reference")
    for name, t, r, e, a, n in zip(("out", "grad values", "grad W_dec"), tri, ref, exact, absval, n_terms):
        assert ((t - e).abs() <= _bound(n, a)).all(), f"triton {name}: max error {(t - e).abs().max():.3g}"
        assert ((r - e).abs() <= _bound(n, a)).all(), f"reference {name}: max error {(r - e).abs().max():.3g}"
    if zero_frac == 1.0:
        assert (tri[0] == 0).all() and (tri[2] == 0).all()


@needs_triton
@PROP
@given(n_rows=st.integers(1, 12), n_cols=st.integers(1, 30), d=st.integers(1, 20), nnz=st.integers(0, 60),
       seed=st.integers(0, 2**16))
def test_bag_with_uneven_and_empty_rows(n_rows, n_cols, d, nnz, seed):
    """BatchTopK codes: rows with any number of entries, empty rows included; the bag and the per-entry dots agree."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(n_rows * n_cols, generator=gen)[: min(nnz, n_rows * n_cols)]
    code, _ = code_from_rows_cols(pairs // n_cols, pairs % n_cols, n_rows, n_cols)
    w = torch.randn(pairs.numel(), generator=gen)
    table = torch.randn(n_cols, d, generator=gen)
    grad = torch.randn(n_rows, d, generator=gen)
    from synthsae.sae.kernels import triton_sparse as ts

    got = ts.bag(code.cols.to(DEV), table.to(DEV), code.offsets.to(DEV), w.to(DEV)).double().cpu()
    ref = F.embedding_bag(code.cols, table, code.offsets, mode="sum", per_sample_weights=w).double()
    dense = torch.zeros(n_rows, n_cols, dtype=torch.float64)
    dense[code.rows, code.cols] = w.double()
    exact, a = dense @ table.double(), dense.abs() @ table.double().abs()
    n = int(torch.bincount(code.rows, minlength=n_rows).max()) if pairs.numel() else 0
    assert ((got - exact).abs() <= _bound(n, a)).all() and ((ref - exact).abs() <= _bound(n, a)).all()
    dots = ts.entry_dots(grad.to(DEV), code.rows.to(DEV), table.to(DEV), code.cols.to(DEV)).double().cpu()
    e = (grad.double()[code.rows] * table.double()[code.cols]).sum(1)
    ae = (grad.double()[code.rows].abs() * table.double()[code.cols].abs()).sum(1)
    assert ((dots - e).abs() <= _bound(d, ae)).all()


@needs_triton
@PROP
@given(S=st.integers(1, 3), B=st.integers(1, 5), n_blocks=st.integers(1, 24), k=st.integers(1, 24),
       ties=st.booleans(), masked=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_row_topk_exact(S, B, n_blocks, k, ties, masked, seed):
    """The Triton top-k returns torch.topk's values exactly, indices that point at them and are distinct per row,
    and torch.topk's index set wherever values are distinct; with ties (small integers), zeros and -inf masks."""
    m, k = 16 * n_blocks, min(k, n_blocks)
    gen = torch.Generator().manual_seed(seed)
    pre = (torch.randint(-3, 4, (S, B, m), generator=gen).float() if ties else torch.randn(S, B, m, generator=gen))
    pre[torch.rand(S, B, m, generator=gen) < masked * 0.9] = float("-inf")
    vals, idx = kernels.row_topk_triton(pre.to(DEV), k)
    vals, idx = vals.cpu(), idx.cpu()
    ref_v, ref_i = torch.topk(pre, k, dim=-1)
    assert torch.equal(vals.sort(-1, descending=True).values, ref_v)
    assert torch.equal(pre.gather(-1, idx), vals)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()
    if not ties and masked == 0.0:
        assert torch.equal(idx.sort(-1).values, ref_i.sort(-1).values)


def test_topk_shapes_outside_the_kernel_go_to_torch():
    """Widths the kernel does not take (not a multiple of 16, k above m / 16 or 128, too many blocks) are refused by
    topk_fits, so fast_topk falls back to torch.topk there."""
    assert kernels.topk_fits(65536, 32) and kernels.topk_fits(16384, 64) and kernels.topk_fits(16, 1)
    assert not kernels.topk_fits(100, 2) and not kernels.topk_fits(64, 5) and not kernels.topk_fits(1 << 16, 256)
    assert not kernels.topk_fits(1 << 24, 1)  # 65,536 blocks of 256


@needs_triton
@pytest.mark.parametrize("m,k,block", [(4096, 2, 32), (2048, 1, 32), (1024, 3, 16), (256, 16, 16)])
def test_row_topk_block_sizes(m, k, block):
    """Larger blocks (chosen near sqrt(m / k)) give the same exact top-k; the chosen block is the expected one."""
    from synthsae.sae.kernels import triton_sparse as ts

    assert kernels.topk_block(m, k) == block
    pre = torch.randn(3, m, generator=torch.Generator().manual_seed(m + k))
    pre[0, : m // 2] = float("-inf")
    for b in sorted({16, block}):
        vals, idx = ts.row_topk(pre.to(DEV), k, block=b)
        assert torch.equal(vals.cpu(), torch.topk(pre, k, dim=-1).values)
        assert torch.equal(pre.gather(-1, idx.cpu()), vals.cpu())


@needs_triton
@pytest.mark.parametrize("variant", ["topk", "batchtopk", "matryoshka"])
def test_sae_step_same_gradients_under_triton(variant, monkeypatch):
    """A whole TopK-family forward + backward (selection, encoder gradient, decode, AuxK) gives the reference's loss
    and gradients with the Triton kernels: atol 1e-5 of each gradient's scale (fp32 sums of <= B * k terms)."""
    from conftest import make_sae

    torch.manual_seed(0)
    x = torch.randn(12, 8)
    results = {}
    for choice in ("reference", "triton"):
        sae = make_sae(2, 8, 64, variant, k=4).to(DEV)
        dead = torch.zeros(2, 64, dtype=torch.bool, device=DEV)
        dead[:, ::3] = True
        with kernels.forced(choice):
            out = sae(x.to(DEV), dead=dead)
            out.loss.sum().backward()
        results[choice] = (out.loss.detach().cpu(), {n: p.grad.detach().cpu() for n, p in sae.named_parameters()})
    (l_ref, g_ref), (l_tri, g_tri) = results["reference"], results["triton"]
    torch.testing.assert_close(l_tri, l_ref, rtol=1e-5, atol=1e-6)
    for n in g_ref:
        scale = float(g_ref[n].abs().max()) or 1.0
        torch.testing.assert_close(g_tri[n], g_ref[n], rtol=1e-4, atol=1e-5 * scale, msg=f"gradient of {n}")


@needs_triton
def test_exact_pre_values_agree():
    """After a low-precision selection the selected pre-activations are recomputed in fp32 by per-entry dots: the
    Triton kernel gives the float64 values within the fp32 bound for d = 8 products plus the bias."""
    from conftest import make_sae

    sae = make_sae(2, 8, 64, "topk", k=4).to(DEV)
    x = torch.randn(12, 8, device=DEV)
    bias = sae.bias_eff().detach()
    with torch.no_grad():
        code, _ = sae.select(sae.pre_acts(x, bias))
    with kernels.forced("triton"):
        got = sae.exact_pre(x, code, bias).double().cpu()
    w = sae.W_enc.detach().double().cpu()
    rows, cols = code.rows.cpu(), code.cols.cpu()
    s, j, b = cols // 64, cols % 64, rows % 12
    terms = x.double().cpu()[b] * w[s, :, j]
    exact = terms.sum(1) + bias.double().cpu().reshape(-1)[cols]
    assert ((got - exact).abs() <= _bound(9, terms.abs().sum(1) + exact.abs())).all()


@needs_triton
def test_fast_topk_dispatches_to_triton_only_when_told(monkeypatch):
    """Under SYNTHSAE_KERNELS=reference the Triton top-k is never called; under triton it is, where the width fits."""
    calls = []
    real = kernels.row_topk_triton
    monkeypatch.setattr(kernels, "row_topk_triton", lambda pre, k: calls.append(k) or real(pre, k))
    pre = torch.randn(3, 64, device=DEV)
    with kernels.forced("reference"):
        fast_topk(pre, 4)
    assert calls == []
    with kernels.forced("triton"):
        v, i = fast_topk(pre, 4)
        fast_topk(pre, 5)  # 5 > 64 / 16 blocks: the reference path
    with kernels.forced("triton,topk:reference"):  # the decode kernels without the top-k kernel
        fast_topk(pre, 4)
    assert calls == [4]
    assert torch.equal(pre.gather(-1, i), v)


@pytest.mark.parametrize("ties", [False, True])
def test_batchtopk_block_selection_equals_torch_topk(ties, monkeypatch):
    """BatchTopK's selection by block maxima (CUDA's path; here under SYNTHSAE_KERNELS=triton) picks torch.topk's
    values exactly, hence the same entries wherever values are distinct; with ties only the values must agree."""
    from conftest import make_sae

    from synthsae.sae import topk as topk_mod

    calls = []
    real = topk_mod.block_topk
    monkeypatch.setattr(topk_mod, "block_topk", lambda p, k: calls.append(k) or real(p, k))
    sae = make_sae(2, 8, 256, "batchtopk", k=2)
    g = torch.Generator().manual_seed(3)
    pre = torch.randint(-4, 5, (2, 12, 256), generator=g).float() if ties else torch.randn(2, 12, 256, generator=g)
    pre[0, :, ::3] = float("-inf")
    out = {}
    for choice in ("reference", "triton"):
        with kernels.forced(choice):
            out[choice] = sae.select(pre)
    assert calls == [24]
    (c_ref, v_ref), (c_tri, v_tri) = out["reference"], out["triton"]
    assert torch.equal(v_tri.sort().values, v_ref.sort().values)
    assert torch.equal(pre.reshape(-1, 256)[c_tri.rows, c_tri.cols % 256], v_tri)
    if not ties:  # the same entries (a row's entries may come in another order: the code is sorted by row only)
        key_t, o_t = (c_tri.rows * 512 + c_tri.cols).sort()
        key_r, o_r = (c_ref.rows * 512 + c_ref.cols).sort()
        assert torch.equal(key_t, key_r) and torch.equal(v_tri[o_t], v_ref[o_r])


def test_kernel_choice_is_validated(monkeypatch):
    """An unknown SYNTHSAE_KERNELS value is refused in one line naming the allowed values; reference never uses triton."""
    for bad in ("fast", "auto,sort:triton", "topk:quick"):
        monkeypatch.setenv(kernels.ENV, bad)
        with pytest.raises(ConfigError, match=f"SYNTHSAE_KERNELS = '{bad}' is not one of auto, reference, triton, "
                                              "optionally followed by op:choice for op in decode, topk, batch_topk"):
            kernels.mode()
    monkeypatch.setenv(kernels.ENV, "Triton, topk:reference,batch_topk:auto")
    assert (kernels.mode(), kernels.mode("decode"), kernels.mode("topk"), kernels.mode("batch_topk")) == \
        ("triton", "triton", "reference", "auto")
    monkeypatch.setenv(kernels.ENV, "reference")
    assert not kernels.use_triton(torch.zeros(1))
    monkeypatch.setenv(kernels.ENV, "auto")
    assert not kernels.use_triton(torch.zeros(1))  # auto on CPU: the reference, interpreter or not
    monkeypatch.setenv(kernels.ENV, "triton")
    assert not kernels.use_triton(torch.zeros(1, dtype=torch.float64))  # fp32 accumulation: never for float64


@needs_triton
def test_bench_functions_report_both_paths():
    """bench_decoder / bench_topk time both paths at one shape and report that they agree."""
    r = kernel_bench.bench_decoder(2, 8, 64, 24, 4, device=DEV, repeats=1)
    assert r["triton_skipped"] is None and r["reference_ms"] > 0 and r["triton_ms"] > 0
    assert r["max_abs_diff_out"] < 1e-5 and r["max_abs_diff_grad_W_dec"] < 1e-5 and r["max_abs_diff_grad_values"] < 1e-5
    t = kernel_bench.bench_topk(2, 8, 128, 4, device=DEV, repeats=1)
    assert t["values_equal"] and t["indices_point_at_values"]
    b = kernel_bench.bench_batch_topk(2, 8, 128, 2, device=DEV, repeats=1)
    assert b["values_equal"] and b["indices_point_at_values"] and b["block_ms"] > 0


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_on_cuda_at_real_size(dtype):
    """On the GPU at a training size (S 2, B 4096, m 16384, d 768, k 32): decode forward/backward and top-k agree
    with the reference (largest difference within fp32: 1e-4 of the largest value; bf16: 2e-2, a few bf16 ulps,
    since both accumulate in fp32 but round their outputs to bf16)."""
    if not kernels.triton_available():
        pytest.skip(f"triton unavailable: {kernels.triton_unavailable_reason()}")
    r = kernel_bench.bench_decoder(2, 4096, 16384, 768, 32, device="cuda", dtype=dtype, repeats=2)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert r["triton_skipped"] is None
    for name in ("out", "grad_values", "grad_W_dec"):
        assert r[f"max_abs_diff_{name}"] <= tol * r[f"max_abs_{name}"], (name, r)
    t = kernel_bench.bench_topk(2, 4096, 16384, 32, device="cuda", dtype=dtype, repeats=2)
    assert t["values_equal"] and t["indices_point_at_values"]
    b = kernel_bench.bench_batch_topk(2, 4096, 16384, 32, device="cuda", dtype=dtype, repeats=2)
    assert b["values_equal"] and b["indices_point_at_values"]


@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_sae_step_on_cuda_auto_matches_reference(variant):
    """A training-size step on the GPU (S 2, d 768, m 16384, k 32, B 4096): SYNTHSAE_KERNELS=auto (Triton) gives the
    reference's loss and gradients within 1e-4 of each gradient's scale (fp32 sums in another order)."""
    if not kernels.triton_available():
        pytest.skip(f"triton unavailable: {kernels.triton_unavailable_reason()}")
    from synthsae.config import SAEConfig
    from synthsae.sae import build_sae

    x = torch.randn(4096, 768, device="cuda")
    res = {}
    for choice in ("reference", "auto"):
        sae = build_sae(SAEConfig(variant=variant, d_sae=16384, k=32), 768, [0, 1], "cuda", torch.float32)
        dead = torch.zeros(2, 16384, dtype=torch.bool, device="cuda")
        dead[:, ::7] = True
        with kernels.forced(choice):
            out = sae(x, dead=dead)
            out.loss.sum().backward()
        res[choice] = (out.loss.detach(), {n: p.grad.detach() for n, p in sae.named_parameters()})
    (l_ref, g_ref), (l_tri, g_tri) = res["reference"], res["auto"]
    torch.testing.assert_close(l_tri, l_ref, rtol=1e-4, atol=1e-6)
    for n in g_ref:
        scale = float(g_ref[n].abs().max()) or 1.0
        torch.testing.assert_close(g_tri[n], g_ref[n], rtol=1e-3, atol=1e-4 * scale, msg=f"gradient of {n}")


_COMPILE = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from synthsae.sae.kernels import topk_block, triton_sparse as ts

tgt = GPUTarget("cuda", 90, 32)  # the H200's sm_90; no GPU needed to compile
for dt in ("fp32", "bf16"):
    ts_ = dict(BLOCK_E="constexpr", BLOCK_D="constexpr")
    triton.compile(ASTSource(ts._bag_kernel, dict(idx_ptr="*i64", w_ptr="*" + dt, table_ptr="*" + dt, bounds_ptr="*i64",
                   out_ptr="*" + dt, d="i32", stride_t="i32", stride_o="i32", **ts_), dict(BLOCK_E=16, BLOCK_D=128)),
                   target=tgt)
    triton.compile(ASTSource(ts._dots_kernel, dict(a_ptr="*" + dt, a_idx_ptr="*i64", b_ptr="*" + dt, b_idx_ptr="*i64",
                   out_ptr="*" + dt, nnz="i32", d="i32", stride_a="i32", stride_b="i32", **ts_),
                   dict(BLOCK_E=32, BLOCK_D=64)), target=tgt)
    for m, k in [(256, 4), (2048, 1)]:
        b = topk_block(m, k)
        nb = triton.next_power_of_2(m // b)
        triton.compile(ASTSource(ts._topk_kernel, dict(pre_ptr="*" + dt, maxima_ptr="*fp32", val_ptr="*" + dt,
                       idx_ptr="*i64", m="i32", n_blocks="i32", k="i32", stride_p="i32", BLOCK="constexpr",
                       TILE="constexpr", NB_P2="constexpr", K_P2="constexpr"),
                       dict(BLOCK=b, TILE=min(nb, 256), NB_P2=nb, K_P2=triton.next_power_of_2(k))), target=tgt)
print("compiled")
"""


def test_kernels_compile_for_the_h200_without_a_gpu(tmp_path):
    """The interpreter does not lower the kernels: compile them (fp32 and bf16) to sm_90 machine code with Triton's own
    ptxas, in a process without TRITON_INTERPRET, so a frontend or lowering error shows here and not on the GPU."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("a GPU is at hand: the other tests compile and run the kernels on it")
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError as e:
        pytest.skip(f"triton without its CUDA backend: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])  # this checkout's synthsae, not an installed one
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode and "ptxas" in r.stderr and "not found" in r.stderr.lower():
        pytest.skip("no ptxas to compile with")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]
