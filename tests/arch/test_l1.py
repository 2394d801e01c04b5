"""L1 SAE equations against a hand computation."""
import pytest
import torch

from saefw.registry import build, discover


def _tiny():
    discover()
    sae = build("arch", {"name": "l1"}, d_in=2, d_sae=3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5], [3.0, 4.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 1.0]))
    return sae


def test_encode_decode_and_loss_by_hand():
    sae = _tiny()
    x = torch.tensor([[2.0, 3.0]])
    # x − b_dec = [1, 2]; pre = [1, 4 − 1, −1 + 2 + 0.5] = [1, 3, 1.5]; all positive
    f = sae.encode(x)
    torch.testing.assert_close(f, torch.tensor([[1.0, 3.0, 1.5]]))
    # x̂ = 1·[1,0] + 3·[0,0.5] + 1.5·[3,4] + [1,1] = [6.5, 8.5]
    torch.testing.assert_close(sae.decode(f), torch.tensor([[6.5, 8.5]]))
    penalty = build("penalty", {"name": "l1_decoder_norm", "coefficient": 2.0})
    out = sae.loss(x, penalty, 2.0)
    mse = (6.5 - 2) ** 2 + (8.5 - 3) ** 2
    sparsity = 1 * 1 + 3 * 0.5 + 1.5 * 5  # Σ f_i ‖W_dec,i‖
    assert out.terms["mse_loss"].item() == pytest.approx(mse)
    assert out.terms["sparsity_loss"].item() == pytest.approx(sparsity)
    assert out.loss.item() == pytest.approx(mse + 2.0 * sparsity)


def test_relu_zeroes_negative_preacts_and_input_scale_is_transparent():
    sae = _tiny()
    x = torch.tensor([[0.0, 0.0]])  # x − b_dec = [−1, −1] → pre = [−1, −3, 0.5]
    torch.testing.assert_close(sae.encode(x), torch.tensor([[0.0, 0.0, 0.5]]))
    sae.input_scale.fill_(2.0)  # encode sees 2x, decode divides by 2
    f = sae.encode(torch.tensor([[1.0, 1.5]]))
    torch.testing.assert_close(f, torch.tensor([[1.0, 3.0, 1.5]]))
    torch.testing.assert_close(sae.decode(f), torch.tensor([[3.25, 4.25]]))


def test_init_ties_encoder_to_decoder_and_unit_norm_constraint():
    discover()
    sae = build("arch", {"name": "l1", "unit_norm_decoder": True}, d_in=5, d_sae=7)
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(7))
    # the parallel gradient component is removed: a gradient along a row vanishes
    sae.W_dec.grad = sae.W_dec.detach().clone() * 3.0
    sae.remove_gradient_parallel_to_decoder_directions()
    torch.testing.assert_close(sae.W_dec.grad, torch.zeros(7, 5), atol=1e-6, rtol=0)


def test_geometric_median_resists_outliers():
    from saefw.arch.base import geometric_median

    x = torch.cat([torch.zeros(99, 3), torch.full((1, 3), 1000.0)])
    assert geometric_median(x).norm().item() < 1.0
    assert x.mean(0).norm().item() > 10
