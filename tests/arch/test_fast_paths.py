"""Every fast training path against the reference it replaces, on tiny dimensions in float64: the same losses,
latents, gradients and state updates.

* topk / batchtopk: the sparse path (no B × d_sae matrix after the encoder) against ``dense_train_forward``, with
  and without dead latents, with AuxK's CPU selection and its synchronisation-free (accelerator) selection;
* gated: one shared encoder matmul against the two-matmul formulation;
* l1: the fused encoder + ReLU against ReLU((x − b_dec) W_enc + b_enc);
* l1_decoder_norm: the penalty summed over tokens first against Σ_i f_i‖W_dec,i‖ per token."""
import copy

import pytest
import torch

import saefw.arch.base as base
from saefw.arch.base import compose_loss
from saefw.arch.ops import SparseLatents, as_dense
from saefw.registry import build, discover

TOL = {"atol": 1e-10, "rtol": 1e-10}


def _zero(s):
    return s.W_dec.new_zeros(())


def _sae(name, d_in=8, d_sae=96, k=4, k_aux=6, seed=0):
    discover()
    torch.manual_seed(seed)
    cfg = {"name": name}
    if name in ("topk", "batchtopk"):
        cfg.update(k=k, k_aux=k_aux)
    sae = build("arch", cfg, d_in=d_in, d_sae=d_sae).double().train()
    with torch.no_grad():  # away from the tied init, so every parameter matters
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return sae


def _param_grads(sae, loss):
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else None for n, p in sae.named_parameters()}


def _compare(fast_out, ref_out, fast, ref):
    torch.testing.assert_close(as_dense(fast_out.f), as_dense(ref_out.f), **TOL)
    for name in ref_out.terms:
        torch.testing.assert_close(fast_out.terms[name], ref_out.terms[name], **TOL)
    torch.testing.assert_close(fast_out.loss, ref_out.loss, **TOL)
    g_fast, g_ref = _param_grads(fast, fast_out.loss), _param_grads(ref, ref_out.loss)
    for name, g in g_ref.items():
        if g is None:
            assert g_fast[name] is None or not g_fast[name].any(), name
        else:
            torch.testing.assert_close(g_fast[name], g, **TOL, msg=name)


def _dead(d_sae, n, seed=5):
    mask = torch.zeros(d_sae, dtype=torch.bool)
    mask[torch.randperm(d_sae, generator=torch.Generator().manual_seed(seed))[:n]] = True
    return mask


@pytest.mark.parametrize("name", ["topk", "batchtopk"])
@pytest.mark.parametrize("n_dead", [None, 0, 3, 40])  # none given, none dead, fewer than k_aux, many
@pytest.mark.parametrize("masked", [False, True])  # AuxK's CPU selection / the accelerator's sync-free one
def test_sparse_path_equals_dense_path(name, n_dead, masked, monkeypatch):
    fast = _sae(name)
    ref = copy.deepcopy(fast)
    x = torch.randn(16, 8, dtype=torch.float64) * 2
    dead = None if n_dead is None else _dead(96, n_dead)
    real = base.auxk_entries
    monkeypatch.setattr("saefw.arch.topk.auxk_entries", lambda z, d, k: real(z, d, k, masked=masked))
    monkeypatch.setattr("saefw.arch.base.auxk_entries", lambda z, d, k: real(z, d, k, masked=masked))
    assert fast.uses_sparse_path(x)
    fast_out = fast.loss(x, _zero, 0.0, dead_mask=dead)
    assert isinstance(fast_out.f, SparseLatents)
    ref_out = compose_loss(ref.dense_train_forward(x, dead), _zero, 0.0)
    if n_dead:
        assert fast_out.terms["aux_loss"].item() > 0
    _compare(fast_out, ref_out, fast, ref)
    if name == "batchtopk":  # the threshold estimate moved identically
        torch.testing.assert_close(fast.threshold, ref.threshold, **TOL)
        assert fast.threshold_updates == ref.threshold_updates == 1


def test_sparse_path_only_where_it_is_the_same_computation():
    sae = _sae("topk")
    x = torch.randn(4, 8, dtype=torch.float64)
    assert sae.uses_sparse_path(x)
    assert not sae.uses_sparse_path(x.clone().requires_grad_())  # x's own gradient needs the dense encoder
    assert not _sae("topk", d_sae=24, k=4).uses_sparse_path(x)  # dense enough for dense matmuls to win

    class CustomSelection(type(sae)):
        def train_acts(self, z):  # a plugin that changes the selection but not `select`
            return super().train_acts(z)

    custom = CustomSelection(sae.cfg, 8, 96)
    assert not custom.uses_sparse_path(x)


def test_batchtopk_sparse_selection_is_batch_wide():
    sae = _sae("batchtopk", k=2)
    x = torch.randn(8, 8, dtype=torch.float64)
    f = sae.loss(x, _zero, 0.0).f
    dense = as_dense(f)
    assert (dense > 0).sum() <= 2 * 8 and len(f.values) == 16
    assert torch.all(f.rows[1:] >= f.rows[:-1])  # grouped by row, as the sparse decode needs
    z = torch.relu(sae.pre_acts(x)).detach()
    kept = torch.zeros_like(z, dtype=torch.bool).view(-1)
    kept[z.view(-1).topk(16).indices] = True
    assert torch.equal(dense > 0, kept.view_as(z) & (z > 0))


def _gated_reference(sae, x):
    """The gated loss as it was written before the shared matmul: two encoder matmuls."""
    centred = x - sae.b_dec
    pi_gate = centred @ sae.W_enc + sae.b_gate
    pi_mag = centred @ (sae.W_enc * torch.exp(sae.r_mag)) + sae.b_mag
    f = (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)
    mse = (f @ sae.W_dec + sae.b_dec - x).pow(2).sum(-1).mean()
    gate_acts = torch.relu(pi_gate)
    W_dec = sae.W_dec.detach()
    aux = (gate_acts @ W_dec + sae.b_dec.detach() - x).pow(2).sum(-1).mean()
    sparsity = (gate_acts * W_dec.norm(dim=-1)).sum(-1).mean()
    return f, mse + 0.7 * sparsity + aux


def test_gated_shared_matmul_equals_two_matmuls():
    fast = _sae("gated")
    ref = copy.deepcopy(fast)
    x = torch.randn(16, 8, dtype=torch.float64)
    out = fast.loss(x, build("penalty", {"name": "l1_decoder_norm"}), 0.7)
    f_ref, loss_ref = _gated_reference(ref, x)
    torch.testing.assert_close(out.f, f_ref, **TOL)
    torch.testing.assert_close(fast.encode(x), f_ref, **TOL)
    torch.testing.assert_close(out.loss, loss_ref, **TOL)
    g_fast, g_ref = _param_grads(fast, out.loss), _param_grads(ref, loss_ref)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_fast[name], g, **TOL, msg=name)


@pytest.mark.parametrize("penalty", ["l1_decoder_norm", "l1", "tanh"])
def test_l1_fused_encoder_and_penalty_equal_the_plain_expressions(penalty):
    fast = _sae("l1")
    ref = copy.deepcopy(fast)
    x = torch.randn(16, 8, dtype=torch.float64)
    pen = build("penalty", {"name": penalty})
    out = fast.loss(x, pen, 0.3)
    f = torch.relu((x - ref.b_dec) @ ref.W_enc + ref.b_enc)
    norms = ref.W_dec.norm(dim=-1)
    p_ref = {"l1_decoder_norm": (f * norms).sum(-1).mean(), "l1": f.sum(-1).mean(),
             "tanh": torch.tanh(f * norms).sum(-1).mean()}[penalty]
    loss_ref = (f @ ref.W_dec + ref.b_dec - x).pow(2).sum(-1).mean() + 0.3 * p_ref
    torch.testing.assert_close(out.f, f, **TOL)
    torch.testing.assert_close(out.terms["sparsity_loss"], p_ref.detach(), **TOL)
    g_fast, g_ref = _param_grads(fast, out.loss), _param_grads(ref, loss_ref)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_fast[name], g, **TOL, msg=name)


@pytest.mark.parametrize("name", ["jumprelu", "topk"])
def test_other_archs_encoder_gradients(name):
    """jumprelu (and topk's dense path) read the shared encoder: its ∇b_dec shortcut changes nothing."""
    sae = _sae(name, d_sae=24)
    x = torch.randn(16, 8, dtype=torch.float64)
    z = sae.pre_acts(x)
    z_ref = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    w = torch.randn_like(z)
    for g, g_ref in zip(torch.autograd.grad((z * w).sum(), [sae.W_enc, sae.b_enc, sae.b_dec]),
                        torch.autograd.grad((z_ref * w).sum(), [sae.W_enc, sae.b_enc, sae.b_dec])):
        torch.testing.assert_close(g, g_ref, **TOL)
