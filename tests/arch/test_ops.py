"""The autograd functions of saefw/arch/ops.py against autograd on the plain torch expression they replace: the
same forward and the same gradients (float64, so only the order of floating-point sums differs)."""
import pytest
import torch

from saefw.arch import ops
from saefw.arch.ops import (
    SparseLatents,
    as_dense,
    batch_firing,
    encoder_pre_acts,
    gather_pre_acts,
    sparse_decode,
)

TOL = {"atol": 1e-10, "rtol": 1e-10}


def _params(B=7, d=5, m=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    W = torch.randn(d, m, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(m, generator=g, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
    return x, W, b, b_dec


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_grad", [False, True])
def test_encoder_matches_autograd(relu, bias, x_grad):
    x, W, b, b_dec = _params()
    x.requires_grad_(x_grad)
    b_enc = b if bias else None
    ref = (x - b_dec) @ W + (b if bias else 0)
    ref = torch.relu(ref) if relu else ref
    ours = encoder_pre_acts(x, W, b_enc, b_dec, relu=relu)
    torch.testing.assert_close(ours, ref, **TOL)
    weight = torch.randn_like(ref)  # a generic upstream gradient
    wrt = [t for t in (x, W, b_enc, b_dec) if t is not None and t.requires_grad]
    for g_ours, g_ref in zip(_grads((ours * weight).sum(), *wrt), _grads((ref * weight).sum(), *wrt)):
        torch.testing.assert_close(g_ours, g_ref, **TOL)


def test_encoder_takes_any_leading_shape():
    x, W, b, b_dec = _params(B=12)
    out = encoder_pre_acts(x.view(3, 4, -1), W, b, b_dec)
    torch.testing.assert_close(out, ((x - b_dec) @ W + b).view(3, 4, -1), **TOL)


def _entries(B, m, k, seed=1, duplicates=False):
    g = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(B)]).reshape(-1)
    rows = torch.arange(B).repeat_interleave(k)
    if duplicates:  # a (row, col) picked twice (AuxK may pick a latent the main top-k also picked)
        rows, cols = torch.cat([rows, rows[:3]]), torch.cat([cols, cols[:3]])
        order = torch.argsort(rows, stable=True)
        rows, cols = rows[order], cols[order]
    return rows, cols


@pytest.mark.parametrize("duplicates", [False, True])
def test_gathered_pre_acts_gradient_equals_the_dense_one(duplicates):
    x, W, b, b_dec = _params(B=6, m=13)
    rows, cols = _entries(6, 13, 3, duplicates=duplicates)
    ref_z = (x - b_dec) @ W + b
    ref = ref_z[rows, cols]
    with torch.no_grad():
        centred = x - b_dec
        z = centred @ W + b
    ours = gather_pre_acts(z, centred, W, b, b_dec, rows, cols)
    torch.testing.assert_close(ours, ref, **TOL)
    weight = torch.randn_like(ref)
    for g_ours, g_ref in zip(_grads((ours * weight).sum(), W, b, b_dec), _grads((ref * weight).sum(), W, b, b_dec)):
        torch.testing.assert_close(g_ours, g_ref, **TOL)


@pytest.mark.parametrize("duplicates", [False, True])
def test_sparse_decode_equals_the_dense_matmul(duplicates):
    B, m, d = 6, 13, 5
    rows, cols = _entries(B, m, 3, duplicates=duplicates)
    g = torch.Generator().manual_seed(2)
    values = torch.randn(len(rows), generator=g, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(m, d, generator=g, dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(B, m, dtype=torch.float64).index_put((rows, cols), values, accumulate=True)
    ref = dense @ W_dec
    ours = sparse_decode(SparseLatents(values, rows, cols, (B, m)), W_dec)
    torch.testing.assert_close(ours, ref, **TOL)
    weight = torch.randn_like(ref)
    for g_ours, g_ref in zip(_grads((ours * weight).sum(), values, W_dec), _grads((ref * weight).sum(), values, W_dec)):
        torch.testing.assert_close(g_ours, g_ref, **TOL)


def test_sparse_decode_with_empty_rows():
    """BatchTopK gives some tokens no latent at all: their reconstruction is 0."""
    rows, cols = torch.tensor([0, 0, 2]), torch.tensor([1, 3, 0])
    W_dec = torch.arange(12.0).view(4, 3)
    out = sparse_decode(SparseLatents(torch.tensor([1.0, 2.0, 3.0]), rows, cols, (4, 4)), W_dec)
    torch.testing.assert_close(out, torch.stack([W_dec[1] + 2 * W_dec[3], torch.zeros(3), 3 * W_dec[0], torch.zeros(3)]))


def test_fallback_kernels_match_the_sparse_ones():
    """The chunked index_add / gather paths used where a backend lacks the sparse kernels."""
    B, m, d = 9, 17, 4
    rows, cols = _entries(B, m, 5, duplicates=True)
    g = torch.Generator().manual_seed(3)
    values = torch.randn(len(rows), generator=g, dtype=torch.float64)
    dense_in = torch.randn(B, d, generator=g, dtype=torch.float64)
    W = torch.randn(m, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ops._sparse_t_mm_chunked(rows, cols, values, (B, m), dense_in, chunk=4),
                               ops._sparse_t_mm(rows, cols, values, (B, m), dense_in), **TOL)
    torch.testing.assert_close(ops._sampled_dots_chunked(rows, cols, dense_in, W, chunk=4),
                               ops._sampled_dots(rows, cols, dense_in, W), **TOL)
    torch.testing.assert_close(ops._sampled_dots(rows, cols, dense_in, W), (dense_in @ W.t())[rows, cols], **TOL)


def test_batch_firing_dense_and_sparse_agree():
    rows, cols = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 3, 3, 0, 2])
    values = torch.tensor([1.0, 0.0, 2.0, 0.5, 0.0])  # zeros: selected but not firing
    sparse = SparseLatents(values, rows, cols, (3, 5))
    dense = as_dense(sparse)
    torch.testing.assert_close(dense, torch.tensor([[0, 1.0, 0, 0, 0], [0, 0, 0, 2.0, 0], [0.5, 0, 0, 0, 0]]))
    for f in (sparse, dense):
        fired, l0 = batch_firing(f)
        assert fired.tolist() == [True, True, False, True, False]
        assert l0.item() == pytest.approx(1.0)  # 3 firing latents over 3 tokens
