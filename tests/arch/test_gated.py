"""GatedSAE against hand computations: the gate/magnitude split, r_mag weight sharing, the frozen-decoder
auxiliary loss and its gradients, and the save/load roundtrip with the input scale folded in."""
import json
import math

import pytest
import torch
from helpers import set_params, zero_penalty

from saefw.arch.gated import GatedConfig, GatedSAE
from saefw.io.saved import load_sae, save_sae


def _literal_sae():
    """d_in=2, d_sae=4; each latent exercises one case of f = 1[π>0]·ReLU(mag)."""
    sae = GatedSAE(GatedConfig(), d_in=2, d_sae=4)
    set_params(sae,
         W_enc=[[1.0, -1.0, 2.0, 0.5],
                [0.0, 1.0, 1.0, 1.0]],
         b_gate=[0.0, 0.5, -3.0, 0.0],
         r_mag=[0.0, math.log(2.0), math.log(3.0), math.log(2.0)],
         b_mag=[-0.5, 3.0, -20.0, 1.0],
         W_dec=[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.2, -0.4]],
         b_dec=[1.0, 0.0])
    return sae


def test_encode_decode_literal():
    sae = _literal_sae()
    x = torch.tensor([[3.0, 1.0], [1.0, 0.0]])
    # token 0: x − b_dec = [2, 1]
    #   latent 0: π = 2 > 0,   mag = 2 − 0.5 = 1.5            -> 1.5
    #   latent 1: π = −2 + 1 + 0.5 = −0.5 (closed), mag = 2·(−1) + 3 = 1 -> 0
    #   latent 2: π = 5 − 3 = 2 > 0, mag = 3·5 − 20 = −5      -> 0
    #   latent 3: π = 1 + 1 = 2 > 0, mag = 2·2 + 1 = 5        -> 5
    # token 1: x − b_dec = 0, so π = b_gate, only latent 1 opens (0 is not > 0), mag = b_mag = 3
    expected_f = torch.tensor([[1.5, 0.0, 0.0, 5.0], [0.0, 3.0, 0.0, 0.0]])
    f = sae.encode(x)
    torch.testing.assert_close(f, expected_f)
    # x̂ = 1.5·[1, 0] + 5·[0.2, −0.4] + [1, 0] = [3.5, −2];   3·[0, 1] + [1, 0] = [1, 3]
    torch.testing.assert_close(sae.decode(f), torch.tensor([[3.5, -2.0], [1.0, 3.0]]))


def test_input_scale_applies_to_raw_inputs():
    sae = _literal_sae()
    sae.input_scale.fill_(2.0)
    # raw [1.5, 0.5] scales to [3, 1], the first token above; decode divides the scaled x̂ by 2
    f = sae.encode(torch.tensor([[1.5, 0.5]]))
    torch.testing.assert_close(f, torch.tensor([[1.5, 0.0, 0.0, 5.0]]))
    torch.testing.assert_close(sae.decode(f), torch.tensor([[1.75, -1.0]]))


def test_r_mag_shares_gate_weights():
    torch.manual_seed(0)
    d_in, d_sae = 5, 8
    sae = GatedSAE(GatedConfig(), d_in, d_sae).double()
    assert set(sae.state_dict()) == {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec", "input_scale"}
    assert sae.r_mag.shape == (d_sae,)
    W_enc = torch.randn(d_in, d_sae, dtype=torch.float64)
    r_mag = torch.randn(d_sae, dtype=torch.float64) * 0.5
    b_mag = torch.randn(d_sae, dtype=torch.float64) * 0.1
    b_dec = torch.randn(d_in, dtype=torch.float64) * 0.1
    set_params(sae, W_enc=W_enc, r_mag=r_mag, b_mag=b_mag, b_dec=b_dec, b_gate=torch.full((d_sae,), 100.0))
    x = torch.randn(3, d_in, dtype=torch.float64)
    f = sae.encode(x)
    for b in range(3):
        for j in range(d_sae):
            mag = sum((x[b, i] - b_dec[i]) * math.exp(r_mag[j]) * W_enc[i, j] for i in range(d_in)) + b_mag[j]
            assert f[b, j].item() == pytest.approx(max(mag.item(), 0.0), abs=1e-10)
    # mag_j = e^{r_j}·u_j + b_j, so ∂mag_j/∂r_j = mag_j − b_j: r_mag is a per-latent scale of W_enc's column
    f.sum().backward()
    active = (f > 0).double()
    torch.testing.assert_close(sae.r_mag.grad, ((f - b_mag) * active).sum(0))


def test_loss_terms_and_aux_gradients():
    torch.manual_seed(1)
    d_in, d_sae, B = 4, 8, 6
    sae = GatedSAE(GatedConfig(), d_in, d_sae).double()
    set_params(sae, W_enc=torch.randn(d_in, d_sae), W_dec=torch.randn(d_sae, d_in) * 0.5,
         b_gate=torch.randn(d_sae) * 0.3, r_mag=torch.randn(d_sae) * 0.3, b_mag=torch.randn(d_sae) * 0.3,
         b_dec=torch.randn(d_in) * 0.3)
    x = torch.randn(B, d_in, dtype=torch.float64)
    W_enc, W_dec, b_dec, b_gate = (t.detach().clone() for t in (sae.W_enc, sae.W_dec, sae.b_dec, sae.b_gate))

    # hand computation of every term
    pi = (x - b_dec) @ W_enc + b_gate
    gate_acts = pi.clamp_min(0)
    mag = (x - b_dec) @ (W_enc * sae.r_mag.detach().exp()) + sae.b_mag.detach()
    f = (pi > 0).double() * mag.clamp_min(0)
    mse = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean()
    x_hat_frozen = gate_acts @ W_dec + b_dec
    aux = ((x_hat_frozen - x) ** 2).sum(-1).mean()
    l1_dec = (gate_acts * W_dec.norm(dim=-1)).sum(-1).mean()

    seen = {}

    def l1_decoder_norm(s):
        seen["acts"] = s.acts.detach().clone()
        return (s.acts * s.W_dec.norm(dim=-1)).sum(-1).mean()

    out = sae.loss(x, l1_decoder_norm, 0.7)
    torch.testing.assert_close(seen["acts"], gate_acts)  # the penalty sees ReLU(π), not f
    torch.testing.assert_close(out.f, f)
    torch.testing.assert_close(out.terms["mse_loss"], mse)
    torch.testing.assert_close(out.terms["aux_loss"], aux)
    torch.testing.assert_close(out.terms["sparsity_loss"], l1_dec)
    torch.testing.assert_close(out.loss, mse + 0.7 * l1_dec + aux)
    assert all(not v.requires_grad for v in out.terms.values())

    # isolate the aux term's gradient: loss (λ = 0) minus the same MSE rebuilt from the live parameters
    out = sae.loss(x, zero_penalty, 0.0)
    pi_live = (x - sae.b_dec) @ sae.W_enc + sae.b_gate
    f_live = (pi_live > 0).double() * ((x - sae.b_dec) @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag).clamp_min(0)
    mse_live = ((f_live @ sae.W_dec + sae.b_dec - x) ** 2).sum(-1).mean()
    aux_graph = out.loss - mse_live
    params = dict(sae.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(aux_graph, list(params.values()), allow_unused=True)))
    grads = {k: torch.zeros_like(params[k]) if g is None else g for k, g in grads.items()}

    # ∂aux/∂π = 1[π > 0] ⊙ (2/B)(x̂_frozen − x) W_decᵀ
    g_pi = (pi > 0).double() * ((2.0 / B) * (x_hat_frozen - x) @ W_dec.t())
    torch.testing.assert_close(grads["W_dec"], torch.zeros_like(W_dec), atol=1e-12, rtol=0)
    torch.testing.assert_close(grads["W_enc"], (x - b_dec).t() @ g_pi)
    torch.testing.assert_close(grads["b_gate"], g_pi.sum(0))
    assert grads["W_enc"].abs().sum() > 0 and grads["b_gate"].abs().sum() > 0
    # the frozen decoder copy passes nothing to b_dec: b_dec only gets the gate's input-centring term
    # −W_enc ∂aux/∂π (a live b_dec in x̂_frozen would add (2/B)Σ(x̂_frozen − x), which must be absent)
    torch.testing.assert_close(grads["b_dec"], -(W_enc @ g_pi.sum(0)))
    decoder_path = (2.0 / B) * (x_hat_frozen - x).sum(0)
    assert (grads["b_dec"] + W_enc @ g_pi.sum(0) - decoder_path).abs().max() > 1e-3
    # the magnitude path is not in the aux term at all
    torch.testing.assert_close(grads["r_mag"], torch.zeros(d_sae, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(grads["b_mag"], torch.zeros(d_sae, dtype=torch.float64), atol=1e-12, rtol=0)


def test_init_follows_l1_convention():
    torch.manual_seed(2)
    sae = GatedSAE(GatedConfig(init_decoder_norm=0.1), d_in=6, d_sae=12)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((12,), 0.1))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    for name in ("r_mag", "b_gate", "b_mag", "b_dec"):
        assert not getattr(sae, name).any(), name
    assert GatedSAE.default_penalty == "l1_decoder_norm"
    assert set(GatedSAE.allowed_penalties) == {"l1", "l1_decoder_norm", "tanh"}


def test_save_load_roundtrip_with_input_scale(tmp_path):
    torch.manual_seed(3)
    d_in, d_sae = 6, 12
    sae = GatedSAE(GatedConfig(), d_in, d_sae)
    set_params(sae, W_enc=torch.randn(d_in, d_sae), W_dec=torch.randn(d_sae, d_in),
         b_gate=torch.randn(d_sae) * 0.5, r_mag=torch.randn(d_sae) * 0.5, b_mag=torch.randn(d_sae) * 0.5,
         b_dec=torch.randn(d_in))
    sae.input_scale.fill_(2.5)
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "gated"
    loaded = load_sae(tmp_path)
    assert isinstance(loaded, GatedSAE)
    assert loaded.input_scale.item() == 1.0
    assert "b_enc" not in loaded.state_dict()
    x = torch.randn(20, d_in) * 3
    f, f2 = sae.encode(x), loaded.encode(x)
    assert (f > 0).any() and (f == 0).any()
    assert torch.equal(f > 0, f2 > 0)
    torch.testing.assert_close(f2, f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded.decode(f), sae.decode(f), atol=1e-5, rtol=1e-5)
