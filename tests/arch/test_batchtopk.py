"""BatchTopK SAE: batch-wide selection, the inference threshold and its fit, save/load roundtrip."""
import pytest
import torch

from saefw.arch.base import auxk_loss
from saefw.arch.ops import as_dense
from saefw.io.saved import load_sae, save_sae
from saefw.registry import build, discover

X = torch.tensor([[5.0, 4.0, 3.0], [0.1, 0.2, 0.3], [1.0, 0.0, -1.0]])


def _identity(k=2):
    """W_enc = W_dec = I, zero biases: z = x, x̂ = f."""
    discover()
    sae = build("arch", {"name": "batchtopk", "k": k}, d_in=3, d_sae=3)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
    return sae


def _penalty():
    discover()
    return build("penalty", {"name": "none"})


def test_training_keeps_k_times_batch_across_the_batch_unevenly():
    sae = _identity(k=2).train()
    f = sae.encode(X)
    # ReLU(z) = [5 4 3 | .1 .2 .3 | 1 0 0]; the k·B = 6 largest: 5, 4, 3, 1, .3, .2
    torch.testing.assert_close(f, torch.tensor([[5.0, 4.0, 3.0], [0.0, 0.2, 0.3], [1.0, 0.0, 0.0]]))
    assert (f > 0).sum().item() == 6
    assert (f > 0).sum(-1).tolist() == [3, 2, 1]


def test_loss_by_hand_and_threshold_running_estimate():
    sae = _identity(k=2).train()
    out = sae.loss(X, _penalty(), 0.0)
    # x̂ = f: errors are the dropped 0.1 (token 2) and the negative −1 (token 3)
    mse = (0.0 + 0.1 ** 2 + 1.0) / 3
    assert out.terms["mse_loss"].item() == pytest.approx(mse)
    assert out.terms["aux_loss"].item() == 0.0 and out.terms["sparsity_loss"].item() == 0.0
    assert out.loss.item() == pytest.approx(mse)
    torch.testing.assert_close(sae.threshold, torch.full((3,), 0.2))  # smallest kept activation
    sae.loss(torch.tensor([[2.0, 1.0, 0.0]]), _penalty(), 0.0)  # keeps 2 and 1 → min 1
    torch.testing.assert_close(sae.threshold, torch.full((3,), 0.6))  # running mean (0.2 + 1)/2


def test_aux_loss_with_dead_latents():
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "batchtopk", "k": 2, "k_aux": 3}, d_in=4, d_sae=8).train()
    x = torch.randn(16, 4)
    dead = torch.tensor([True, False, True, False, True, True, False, False])
    out = sae.loss(x, _penalty(), 0.0, dead_mask=dead)
    z = sae.pre_acts(x)
    x_hat = sae.decode(as_dense(out.f))
    aux = auxk_loss(z, x, x_hat, sae.W_dec, dead, 3)
    assert aux.item() > 0
    assert out.terms["aux_loss"].item() == pytest.approx(sae.cfg.aux_coefficient * aux.item())
    assert out.loss.item() == pytest.approx(out.terms["mse_loss"].item() + aux.item() / 32)


def test_inference_uses_the_threshold():
    sae = _identity(k=2).eval()
    sae.threshold.fill_(0.25)
    torch.testing.assert_close(sae.encode(X), torch.tensor([[5.0, 4.0, 3.0], [0.0, 0.0, 0.3], [1.0, 0.0, 0.0]]))
    # per token, independent of the rest of the batch
    torch.testing.assert_close(sae.encode(X[1:2]), torch.tensor([[0.0, 0.0, 0.3]]))


def test_finalize_for_inference_gives_l0_k_on_its_data():
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "batchtopk", "k": 4}, d_in=8, d_sae=64)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    x = torch.randn(600, 8) * 3
    sae.finalize_for_inference(iter(x.split(128)))  # uneven last batch
    theta = sae.threshold[0].item()
    assert theta > 0 and torch.all(sae.threshold == theta)
    sae.eval()
    l0 = (sae.encode(x) > 0).float().sum(-1).mean().item()
    assert l0 == pytest.approx(4.0)
    # by hand: θ lies between the 2400-th and 2401-th largest positive pre-activation
    z = torch.relu(sae.pre_acts(x)).detach().flatten().sort(descending=True).values
    assert z[2400].item() < theta < z[2399].item()
    held_out = (sae.encode(torch.randn(600, 8) * 3) > 0).float().sum(-1).mean().item()
    assert 2.5 < held_out < 6  # and it generalises to fresh data of the same distribution
    sae.finalize_for_inference(iter([]))  # no data: the estimate stays
    assert sae.threshold[0].item() == theta


def test_save_load_roundtrip_with_input_scale(tmp_path):
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "batchtopk", "k": 3}, d_in=6, d_sae=12)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    sae.input_scale.fill_(2.5)
    x = torch.randn(64, 6)
    sae.finalize_for_inference(iter([x * 2.5]))
    save_sae(sae, tmp_path)
    loaded = load_sae(tmp_path).eval()
    sae.eval()
    torch.testing.assert_close(loaded.threshold, sae.threshold)
    assert loaded.k == 3
    f = sae.encode(x)
    assert (f > 0).float().sum(-1).mean().item() == pytest.approx(3.0)
    torch.testing.assert_close(loaded.encode(x), f)
    torch.testing.assert_close(loaded.decode(f), sae.decode(f))
