"""TopKSAE against hand computations: the top-k selection with ReLU after it, AuxK on hand-marked dead latents,
k validation, and the save/load roundtrip with the input scale folded in."""
import json

import pytest
import torch
from helpers import set_params, zero_penalty

from saefw.arch.topk import TopKConfig, TopKSAE
from saefw.errors import SaefwError
from saefw.io.saved import load_sae, save_sae

ALPHA = 1 / 32


# decoder rows for d_in = 4, d_sae = 8 (not unit norm: the loss itself does not depend on that)
W_DEC = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0],
         [0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 0.0, 0.5]]


def _mirror_sae(k, k_aux=None, dtype=torch.float32):
    """W_enc = [I, −I], biases 0, so z = [x, −x]."""
    sae = TopKSAE(TopKConfig(k=k, k_aux=k_aux), d_in=4, d_sae=8).to(dtype)
    eye = torch.eye(4)
    set_params(sae, W_enc=torch.cat([eye, -eye], 1), W_dec=W_DEC, b_enc=torch.zeros(8), b_dec=torch.zeros(4))
    return sae


def test_keeps_k_largest_then_relu():
    x = torch.tensor([[0.5, -2.0, 3.0, 1.0]])  # z = [0.5, −2, 3, 1, −0.5, 2, −3, −1]
    f3 = _mirror_sae(k=3).encode(x)
    torch.testing.assert_close(f3, torch.tensor([[0.0, 0.0, 3.0, 1.0, 0.0, 2.0, 0.0, 0.0]]))
    # k = 5 selects 3, 2, 1, 0.5 and −0.5; ReLU after selection drops −0.5, leaving 4 latents (not 5)
    sae5 = _mirror_sae(k=5)
    f5 = sae5.encode(x)
    torch.testing.assert_close(f5, torch.tensor([[0.5, 0.0, 3.0, 1.0, 0.0, 2.0, 0.0, 0.0]]))
    # x̂ = 0.5·e0 + 3·e2 + 1·e3 + 2·[0, .5, .5, 0]
    torch.testing.assert_close(sae5.decode(f5), torch.tensor([[0.5, 1.0, 4.0, 1.0]]))


def test_exactly_k_nonnegative_latents():
    torch.manual_seed(0)
    sae = TopKSAE(TopKConfig(k=4), d_in=6, d_sae=16)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every z positive: exactly k survive
    x = torch.randn(32, 6)
    f = sae.encode(x)
    z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    assert ((f > 0).sum(-1) == 4).all()
    assert (f >= 0).all()
    kept = torch.zeros_like(z, dtype=torch.bool).scatter(-1, z.topk(4, dim=-1).indices, True)
    assert torch.equal(f > 0, kept)
    torch.testing.assert_close(f[kept], z[kept])
    # any leading shape (evaluators pass [batch, ctx, d_in])
    assert ((sae.encode(x.view(4, 8, 6)) > 0).sum(-1) == 4).all()


def test_auxk_uses_only_dead_latents():
    sae = _mirror_sae(k=2, k_aux=2, dtype=torch.float64)
    # token 0: z = [3, 2, .5, −1, −3, −2, −.5, 1];  token 1: z = [2, 4, −.2, .3, −2, −4, .2, −.3]
    # top-2 fires latents 0 and 1 on both tokens.
    x = torch.tensor([[3.0, 2.0, 0.5, -1.0], [2.0, 4.0, -0.2, 0.3]], dtype=torch.float64)
    dead = torch.tensor([False, False, False, True, True, False, True, True])
    out = sae.loss(x, zero_penalty, 0.0, dead_mask=dead)
    # x̂ = [3, 2, 0, 0] and [2, 4, 0, 0];  e = x − x̂ = [0, 0, .5, −1] and [0, 0, −.2, .3]
    # dead z (latents 3, 4, 6, 7): token 0 [−1, −3, −.5, 1] -> top-2 {7: 1, 6: −.5} -> ê = 1·W7 = [.5, 0, 0, .5]
    #   (alive latent 2 has z = .5 > −.5 but is not eligible);  token 1 [.3, −2, .2, −.3] -> {3: .3, 6: .2}
    #   -> ê = .3·W3 + .2·W6 = [0, 0, .1, .4]
    # ‖e − ê‖² = .25 + .25 + 2.25 = 2.75 and .09 + .01 = .1 -> mean 1.425
    # ‖e − ē‖² = ‖e0 − e1‖²/4 = (.49 + 1.69)/4 = .545 for both tokens
    # V_x = ‖x − x̄‖² = ‖x0 − x1‖²/4 = (1 + 4 + .49 + 1.69)/4 = 1.795 for both tokens
    aux = 1.795 * 1.425 / 0.545
    mse = (1.25 + 0.13) / 2
    assert out.terms["aux_loss"].item() == pytest.approx(ALPHA * aux, rel=1e-9)  # logged as added to the loss
    assert out.terms["mse_loss"].item() == pytest.approx(mse, rel=1e-9)
    assert out.loss.item() == pytest.approx(mse + ALPHA * aux, rel=1e-9)

    out.loss.backward()
    g = sae.W_dec.grad
    # rows 0, 1: the main reconstruction; rows 3, 6, 7: AuxK; rows 2, 4, 5: nothing
    for row in (0, 1, 3, 6, 7):
        assert g[row].abs().sum() > 0, row
    for row in (2, 4, 5):
        assert not g[row].any(), row
    # only token 0 uses W7, with weight 1: ∂(α·num/den)/∂W7 = α/den · (ê0 − e0)
    torch.testing.assert_close(g[7], ALPHA * 1.795 / 0.545 * torch.tensor([0.5, 0.0, -0.5, 1.5], dtype=torch.float64))
    # the encoder columns of dead latents learn from AuxK too; those of ineligible latents do not
    for col in (3, 6, 7):
        assert sae.W_enc.grad[:, col].abs().sum() > 0, col
    for col in (2, 4, 5):
        assert not sae.W_enc.grad[:, col].any(), col


def test_auxk_zero_without_dead_latents():
    sae = _mirror_sae(k=2, dtype=torch.float64)
    x = torch.tensor([[3.0, 2.0, 0.5, -1.0], [2.0, 4.0, -0.2, 0.3]], dtype=torch.float64)
    for dead in (None, torch.zeros(8, dtype=torch.bool)):
        out = sae.loss(x, zero_penalty, 0.0, dead_mask=dead)
        assert out.terms["aux_loss"].item() == 0.0
        assert out.loss.item() == pytest.approx((1.25 + 0.13) / 2, rel=1e-9)


def test_k_aux_default_and_validation():
    assert TopKSAE(TopKConfig(k=2), d_in=6, d_sae=8).k_aux == 3
    assert TopKSAE(TopKConfig(k=8, k_aux=5), d_in=6, d_sae=8).k_aux == 5
    for bad in (0, -1, 9):
        with pytest.raises(SaefwError, match=rf"k={bad}\b.*d_sae=8"):
            TopKSAE(TopKConfig(k=bad), d_in=6, d_sae=8)
    with pytest.raises(SaefwError, match="k_aux=0"):
        TopKSAE(TopKConfig(k=2, k_aux=0), d_in=6, d_sae=8)


def test_init_and_class_attributes():
    torch.manual_seed(1)
    sae = TopKSAE(TopKConfig(k=3), d_in=6, d_sae=12)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(12))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    assert TopKSAE.unit_norm_decoder and TopKSAE.default_penalty == "none"
    assert TopKSAE.allowed_penalties == ("none",)


def test_save_load_roundtrip_with_input_scale(tmp_path):
    torch.manual_seed(2)
    d_in, d_sae = 6, 12
    sae = TopKSAE(TopKConfig(k=3), d_in, d_sae)
    set_params(sae, W_enc=torch.randn(d_in, d_sae), b_enc=torch.randn(d_sae) * 0.5, b_dec=torch.randn(d_in))
    sae.input_scale.fill_(2.5)
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 3 and cfg["metadata"]["saefw"]["arch_config"]["k"] == 3
    loaded = load_sae(tmp_path)
    assert isinstance(loaded, TopKSAE) and loaded.k == 3
    assert loaded.input_scale.item() == 1.0
    x = torch.randn(20, d_in) * 3
    f, f2 = sae.encode(x), loaded.encode(x)
    assert torch.equal(f > 0, f2 > 0)
    torch.testing.assert_close(f2, f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded.decode(f), sae.decode(f), atol=1e-5, rtol=1e-5)
