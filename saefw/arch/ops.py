"""Autograd functions shared by the architectures: the encoder with a cheap ∇b_dec, and the sparse path of the
top-k archs (their latents as (row, col, value) entries, decoded and differentiated without any B × d_sae matrix).

Each computes exactly what the plain ``torch`` expression in its docstring computes (the forward bit for bit, the
gradients up to the order of floating-point sums); ``tests/arch/test_ops.py`` checks both against autograd on
that expression.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.amp import custom_bwd, custom_fwd


class _Encoder(torch.autograd.Function):
    """z = (x − b_dec) W_enc + b_enc, optionally ReLU(z).

    Autograd would compute ∇b_dec = −Σ_b ∇z_b W_encᵀ as a full [B, d_sae] × [d_sae, d_in] matmul and then sum
    it over the batch; summing first, ∇b_dec = −W_enc (Σ_b ∇z_b), costs a matrix-vector product. That removes one
    of the six B·d_in·d_sae matmuls of a dense training step. With ``relu`` the ReLU runs in place on z and its
    backward is fused here too (no second [B, d_sae] tensor)."""

    @staticmethod
    @custom_fwd(device_type="cuda")
    def forward(ctx, x, W_enc, b_enc, b_dec, relu):
        centred = x - b_dec
        z = centred @ W_enc if b_enc is None else torch.addmm(b_enc, centred, W_enc)
        if relu:
            z = z.relu_()
        ctx.relu, ctx.has_b_enc = relu, b_enc is not None
        ctx.save_for_backward(centred, W_enc, z if relu else None)
        return z

    @staticmethod
    @custom_bwd(device_type="cuda")
    def backward(ctx, gz):
        centred, W_enc, f = ctx.saved_tensors
        if ctx.relu:
            gz = torch.ops.aten.threshold_backward(gz, f, 0)
        need_x, need_w, need_b, need_bdec = ctx.needs_input_grad[:4]
        gx = gz @ W_enc.t() if need_x else None
        gw = centred.t() @ gz if need_w else None
        gsum = gz.sum(0) if (need_b or need_bdec) else None
        gb_dec = -(W_enc @ gsum) if need_bdec else None
        return gx, gw, gsum if need_b else None, gb_dec, None


def encoder_pre_acts(x: Tensor, W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor, relu: bool = False) -> Tensor:
    """(x − b_dec) W_enc + b_enc (no bias when ``b_enc`` is None), ReLU'd when ``relu``; see :class:`_Encoder`.
    ``x`` [..., d_in] may have any leading shape."""
    if x.dim() == 2:
        return _Encoder.apply(x, W_enc, b_enc, b_dec, relu)
    z = _Encoder.apply(x.reshape(-1, x.shape[-1]), W_enc, b_enc, b_dec, relu)
    return z.reshape(*x.shape[:-1], z.shape[-1])


@dataclass
class SparseLatents:
    """A [B, d_sae] latent matrix kept as its candidate entries: ``values[n]`` at (``rows[n]``, ``cols[n]``), entries
    grouped by row (``rows`` non-decreasing), every other entry 0. A value may be 0 (a selected latent whose
    pre-activation was negative); a (row, col) appears at most once.

    The top-k archs hand these out in training, so that nothing of size B × d_sae is built after the encoder."""

    values: Tensor  # [N]
    rows: Tensor  # [N] long
    cols: Tensor  # [N] long
    shape: tuple[int, int]

    def dense(self) -> Tensor:
        out = self.values.new_zeros(self.shape)
        return out.index_put_((self.rows, self.cols), self.values)

    def firing(self) -> tuple[Tensor, Tensor]:
        """(fired [d_sae] bool: latents > 0 on some token, l0: mean count of latents > 0 per token)."""
        on = self.values.detach() > 0
        counts = torch.zeros(self.shape[1], device=on.device, dtype=torch.long).index_add_(0, self.cols, on.long())
        return counts > 0, on.sum().float() / self.shape[0]


def as_dense(f: Tensor | SparseLatents) -> Tensor:
    """The [B, d_sae] tensor of latents given dense or as :class:`SparseLatents`."""
    return f.dense() if isinstance(f, SparseLatents) else f


def batch_firing(f: Tensor | SparseLatents) -> tuple[Tensor, Tensor]:
    """(fired [d_sae] bool, l0 = mean #{i : f_i > 0} per token) of a batch of latents, dense or sparse, without a
    host synchronisation. Dense: fired = max over tokens > 0 and a count of the positive entries (two cheap passes;
    a per-latent count would cast a B × d_sae bool matrix to integers, 3x slower)."""
    if isinstance(f, SparseLatents):
        return f.firing()
    f = f.detach()
    return f.amax(0) > 0, torch.count_nonzero(f > 0).float() / f.shape[0]


def row_entries(indices: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the entries picked by per-row ``indices`` [B, k]."""
    B, k = indices.shape
    return torch.arange(B, device=indices.device).repeat_interleave(k), indices.reshape(-1)


def _coo_t(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """The transpose [d_sae, B] of the sparse [B, d_sae] matrix with these entries, as a COO tensor (duplicates
    are summed by the sparse matmul)."""
    return torch.sparse_coo_tensor(torch.stack([cols, rows]), values, (shape[1], shape[0]), check_invariants=False)


def _sparse_t_mm(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int], dense: Tensor) -> Tensor:
    """Sᵀ·dense [d_sae, n] for the sparse S [B, d_sae]: a sparse matmul where the backend has one, else index_add
    in chunks (so no [N, n] product is held at once)."""
    try:
        return torch.sparse.mm(_coo_t(rows, cols, values, shape), dense)
    except (RuntimeError, NotImplementedError):
        return _sparse_t_mm_chunked(rows, cols, values, shape, dense)


def _sparse_t_mm_chunked(rows, cols, values, shape, dense, chunk: int = 8192) -> Tensor:
    out = dense.new_zeros(shape[1], dense.shape[1])
    for s in range(0, len(rows), chunk):
        r, c, v = rows[s:s + chunk], cols[s:s + chunk], values[s:s + chunk]
        out.index_add_(0, c, dense.index_select(0, r) * v[:, None])
    return out


def _sampled_dots(rows: Tensor, cols: Tensor, A: Tensor, B_: Tensor) -> Tensor:
    """[A[rows[n]] · B_[cols[n]] for every entry n]: the entries of A B_ᵀ at the sparsity pattern only."""
    n_rows = A.shape[0]
    try:
        counts = torch.bincount(rows, minlength=n_rows)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(crow, cols, A.new_zeros(len(cols)), (n_rows, B_.shape[0]))
            return torch.sparse.sampled_addmm(pattern, A, B_.t(), beta=0.0).values()
    except (RuntimeError, NotImplementedError):
        return _sampled_dots_chunked(rows, cols, A, B_)


def _sampled_dots_chunked(rows, cols, A, B_, chunk: int = 8192) -> Tensor:
    out = A.new_empty(len(rows))
    for s in range(0, len(rows), chunk):
        out[s:s + chunk] = (A.index_select(0, rows[s:s + chunk]) * B_.index_select(0, cols[s:s + chunk])).sum(-1)
    return out


class _GatheredPreActs(torch.autograd.Function):
    """z[rows, cols] for z = (x − b_dec) W_enc + b_enc already computed (without a graph), differentiable in
    W_enc, b_enc and b_dec. Only the gathered entries receive gradient, so the backward costs O(N·d_in) instead
    of the dense encoder's B·d_in·d_sae:  ∇W_enc = (x − b_dec)ᵀ S,  ∇b_enc = Σ_b S_b,  ∇b_dec = −W_enc Σ_b S_b,
    where S [B, d_sae] holds the incoming gradients at the entries."""

    @staticmethod
    @custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, z, centred, W_enc, b_enc, b_dec, rows, cols):
        ctx.save_for_backward(centred, W_enc, rows, cols)
        ctx.shape = z.shape
        return z[rows, cols]

    @staticmethod
    @custom_bwd(device_type="cuda")
    def backward(ctx, g):
        centred, W_enc, rows, cols = ctx.saved_tensors
        gw = gb = gb_dec = None
        if ctx.needs_input_grad[2]:
            gw = _sparse_t_mm(rows, cols, g, ctx.shape, centred).t()
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            gsum = g.new_zeros(ctx.shape[1]).index_add_(0, cols, g)
            gb = gsum if ctx.needs_input_grad[3] else None
            gb_dec = -(W_enc @ gsum) if ctx.needs_input_grad[4] else None
        return None, None, gw, gb, gb_dec, None, None


def gather_pre_acts(z: Tensor, centred: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, rows: Tensor,
                    cols: Tensor) -> Tensor:
    """The pre-activations at (rows, cols), with gradient to the encoder's parameters (see
    :class:`_GatheredPreActs`); ``z`` and ``centred`` = x − b_dec must come from the same parameters."""
    return _GatheredPreActs.apply(z, centred, W_enc, b_enc, b_dec, rows, cols)


class _SparseDecode(torch.autograd.Function):
    """out_b = Σ_{n : rows[n] = b} values[n] · W_dec[cols[n]]   (= S W_dec for the sparse S [B, d_sae]).

    Forward: one ``embedding_bag``; backward: ∇values[n] = ∇out[rows[n]] · W_dec[cols[n]] (a sampled matmul) and
    ∇W_dec = Sᵀ ∇out (a sparse matmul); neither builds a [B, d_sae] or [N, d_in] tensor."""

    @staticmethod
    @custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, values, rows, cols, W_dec, n_rows):
        counts = torch.bincount(rows, minlength=n_rows)
        offsets = counts.cumsum(0) - counts
        ctx.save_for_backward(values, rows, cols, W_dec)
        ctx.shape = (n_rows, W_dec.shape[0])
        return torch.nn.functional.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    @custom_bwd(device_type="cuda")
    def backward(ctx, g):
        values, rows, cols, W_dec = ctx.saved_tensors
        g = g.contiguous()
        gv = _sampled_dots(rows, cols, g, W_dec) if ctx.needs_input_grad[0] else None
        gw = _sparse_t_mm(rows, cols, values, ctx.shape, g) if ctx.needs_input_grad[3] else None
        return gv, None, None, gw, None


def sparse_decode(latents: SparseLatents, W_dec: Tensor) -> Tensor:
    """latents · W_dec [B, d_in] without the dense latent matrix (see :class:`_SparseDecode`); no bias."""
    return _SparseDecode.apply(latents.values, latents.rows, latents.cols, W_dec, latents.shape[0])
