"""JumpReLU SAE: forward and straight-through gradients against hand computations, save/load roundtrip."""
import math

import pytest
import torch
from safetensors.torch import load_file

from saefw.arch.jumprelu import jumprelu, step
from saefw.io.saved import load_sae, save_sae
from saefw.registry import build, discover


def _tiny(theta=(0.9, 3.1, 2.0)):
    discover()
    sae = build("arch", {"name": "jumprelu"}, d_in=2, d_sae=3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5], [3.0, 4.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 1.0]))
        sae.log_threshold.copy_(torch.tensor(theta).log())
    return sae


def test_forward_by_hand():
    sae = _tiny(theta=(0.5, 3.5, 1.4))
    x = torch.tensor([[2.0, 3.0]])
    # z = (x − b_dec) W_enc + b_enc = [1, 3, 1.5]; θ = [0.5, 3.5, 1.4] → f = [1, 0, 1.5]
    torch.testing.assert_close(sae.encode(x), torch.tensor([[1.0, 0.0, 1.5]]))
    # x̂ = 1·[1, 0] + 1.5·[3, 4] + [1, 1] = [6.5, 7]
    torch.testing.assert_close(sae.decode(sae.encode(x)), torch.tensor([[6.5, 7.0]]))
    sae.log_threshold.data[2] = math.log(1.5)  # z = θ exactly: H is a strict step, the latent is off
    torch.testing.assert_close(sae.encode(x), torch.tensor([[1.0, 0.0, 0.0]]))
    sae.input_scale.fill_(2.0)  # encode sees 2x: x = [1, 1.5] is the same scaled point
    torch.testing.assert_close(sae.encode(torch.tensor([[1.0, 1.5]])), torch.tensor([[1.0, 0.0, 0.0]]))


# ε = 0.5 (window |z − θ| ≤ 0.25); θ = [1.5, 2, 3]
Z = torch.tensor([[1.6, 2.5, 2.9], [1.0, 1.9, 3.1]])
THETA = torch.tensor([1.5, 2.0, 3.0])
G = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
# (z − θ)/ε = [[0.2, 1.0, −0.2], [−1.0, −0.2, 0.2]] → K = [[1, 0, 1], [0, 1, 1]]


def test_jumprelu_ste_by_hand():
    z, theta = Z.clone().requires_grad_(), THETA.clone().requires_grad_()
    y = jumprelu(z, theta, 0.5)
    torch.testing.assert_close(y.detach(), torch.tensor([[1.6, 2.5, 0.0], [0.0, 0.0, 3.1]]))
    y.backward(G)
    # ∂/∂θ_j = Σ_b g_bj·(−θ_j/ε)·K: col 0: 1·(−3); col 1: 5·(−4); col 2: (3 + 6)·(−6); outside the window: 0
    torch.testing.assert_close(theta.grad, torch.tensor([-3.0, -20.0, -54.0]))
    # z: the ordinary gradient g·H(z − θ)
    torch.testing.assert_close(z.grad, torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 6.0]]))


def test_step_ste_by_hand_and_no_gradient_to_z():
    z, theta = Z.clone().requires_grad_(), THETA.clone().requires_grad_()
    y = step(z, theta, 0.5)
    torch.testing.assert_close(y.detach(), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    y.backward(G)
    # ∂/∂θ_j = Σ_b g_bj·(−1/ε)·K: col 0: −2·1; col 1: −2·5; col 2: −2·(3 + 6)
    torch.testing.assert_close(theta.grad, torch.tensor([-2.0, -10.0, -18.0]))
    assert z.grad is None


def test_l0_penalty_moves_only_thresholds_through_the_module():
    """The λ·L0 term changes ∇log θ by λ·θ·(−1/ε)K((z − θ)/ε) and leaves every encoder gradient alone."""
    discover()
    penalty = build("penalty", {"name": "l0"})
    x = torch.tensor([[2.0, 3.0]])  # z = [1, 3, 1.5]
    grads = {}
    for lam in (0.0, 3.0):
        sae = _tiny(theta=(0.9, 3.1, 2.0))
        sae.bandwidth = 0.5  # (z − θ)/ε = [0.2, −0.2, −1] → K = [1, 1, 0]
        out = sae.loss(x, penalty, lam)
        assert out.terms["sparsity_loss"].item() == 1.0  # only latent 0 is above its threshold
        assert out.loss.item() == pytest.approx(out.terms["mse_loss"].item() + lam)
        out.loss.backward()
        grads[lam] = {n: p.grad.clone() for n, p in sae.named_parameters()}
    for name in ("W_enc", "b_enc", "b_dec", "W_dec"):
        torch.testing.assert_close(grads[3.0][name], grads[0.0][name])
    # ∂P/∂θ = [−2, −2, 0]; chain rule through θ = exp(log θ) multiplies by θ = [0.9, 3.1, 2]
    torch.testing.assert_close(grads[3.0]["log_threshold"] - grads[0.0]["log_threshold"],
                               3.0 * torch.tensor([-1.8, -6.2, 0.0]))


def test_defaults_scale_paper_units_by_sqrt_d_and_theta_stays_fp32():
    discover()
    sae = build("arch", {"name": "jumprelu"}, d_in=16, d_sae=8)
    assert sae.bandwidth == pytest.approx(0.04)  # 0.01·√16
    torch.testing.assert_close(sae.threshold.detach(), torch.full((8,), 0.04))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.full((8,), 0.1))
    sae = sae.to(torch.bfloat16)
    assert sae.W_enc.dtype == torch.bfloat16 and sae.log_threshold.dtype == torch.float32


def test_threshold_has_its_own_learning_rate():
    discover()
    sae = build("arch", {"name": "jumprelu", "threshold_lr_scale": 20.0}, d_in=4, d_sae=8)
    groups = sae.param_groups(1e-3)
    assert [len(g["params"]) for g in groups] == [4, 1]
    assert groups[1]["params"][0] is sae.log_threshold and groups[1]["lr"] == pytest.approx(2e-2)
    assert groups[0]["lr"] == 1e-3


def test_save_load_roundtrip_with_input_scale(tmp_path):
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "jumprelu"}, d_in=6, d_sae=10)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
        sae.log_threshold.copy_(torch.rand(10).mul(0.3).add(0.01).log())
    sae.input_scale.fill_(2.5)
    save_sae(sae, tmp_path)
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert set(tensors) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    torch.testing.assert_close(tensors["threshold"], sae.threshold.detach())
    loaded = load_sae(tmp_path)
    x = torch.randn(64, 6) / 2.5
    f = sae.encode(x)
    assert 0 < (f > 0).sum() < f.numel()  # some latents on, some off: the thresholds matter
    torch.testing.assert_close(loaded.encode(x), f)
    torch.testing.assert_close(loaded.decode(f), sae.decode(f))
