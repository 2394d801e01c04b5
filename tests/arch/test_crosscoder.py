"""Crosscoder (Lindsey et al. 2024): the equations by hand, the per-layer scale folded exactly on save, and a
two-layer synthetic dictionary with shared and single-layer features recovered."""
import pytest
import torch
from torch.nn.functional import normalize

from saefw.arch.base import compose_loss
from saefw.errors import SaefwError
from saefw.io.saved import load_sae, read_config, save_sae
from saefw.registry import build, discover


def _cc(d_in=4, d_sae=3, n_layers=2, **cfg):
    discover()
    return build("arch", {"name": "crosscoder", **cfg}, d_in=d_in, d_sae=d_sae, n_layers=n_layers)


def _tiny():
    """Two layers of width 2: rows [x^1 (2), x^2 (2)]."""
    sae = _cc()
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.5, 0.0, 0.0], [3.0, 4.0, 0.6, 0.8]]))
        sae.b_dec.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0]))
    return sae


def test_encode_decode_and_penalty_by_hand():
    sae = _tiny()
    x = torch.tensor([[2.0, 3.0, 1.0, 1.0]])
    # x − b_dec = [1, 2 | 1, 0]; layer 1: [1, 4, −1 + 2] = [1, 4, 1]; layer 2: [1, 0, 0]; + b_enc → [2, 3, 1.5]
    f = sae.encode(x)
    torch.testing.assert_close(f, torch.tensor([[2.0, 3.0, 1.5]]))
    # x̂^1 = 2·[1,0] + 3·[0,0.5] + 1.5·[3,4] + [1,1] = [7.5, 8.5]; x̂^2 = 2·[0,2] + 1.5·[0.6,0.8] + [0,1] = [0.9, 6.2]
    torch.testing.assert_close(sae.decode(f), torch.tensor([[7.5, 8.5, 0.9, 6.2]]))
    penalty = build("penalty", {"name": "l1_decoder_norm"})
    out = sae.loss(x, penalty, 2.0)
    mse = (7.5 - 2) ** 2 + (8.5 - 3) ** 2 + (0.9 - 1) ** 2 + (6.2 - 1) ** 2
    # Σ_i f_i Σ_l ‖W_dec,i^l‖: latent 0: 1 + 2; latent 1: 0.5 + 0; latent 2: 5 + 1 (not ‖W_dec,i‖ = √26 for it)
    sparsity = 2 * 3 + 3 * 0.5 + 1.5 * 6
    assert out.terms["mse_loss"].item() == pytest.approx(mse)
    assert out.terms["sparsity_loss"].item() == pytest.approx(sparsity)
    assert out.loss.item() == pytest.approx(mse + 2.0 * sparsity)
    tanh = build("penalty", {"name": "tanh", "sharpness": 0.5})
    expected = sum(torch.tanh(torch.tensor(0.5 * a * n)).item() for a, n in ((2, 3), (3, 0.5), (1.5, 6)))
    assert tanh(sae.train_forward(x).sparsity).item() == pytest.approx(expected)
    torch.testing.assert_close(sae.layer_norms(), torch.tensor([[1.0, 2.0], [0.5, 0.0], [5.0, 1.0]]))


def test_per_layer_scales_are_set_from_data_and_transparent():
    sae = _tiny()
    f0 = sae.encode(torch.tensor([[2.0, 3.0, 1.0, 1.0]]))
    x = torch.cat([torch.randn(500, 2), 10 * torch.randn(500, 2)], -1)
    sae.initialize_from_data(x)
    assert sae.input_scale.item() == 1.0
    scaled = sae.scale_rows(x).reshape(500, 2, 2).norm(dim=-1).mean(0)
    torch.testing.assert_close(scaled, torch.full((2,), 2 ** 0.5))  # E‖x^l‖ = √d at each layer
    assert sae.layer_scales[0] > 5 * sae.layer_scales[1]
    # encode/decode take raw rows: scaling the second layer's raw rows by its scale only changes the scaled space
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor([1.0, 1.0, 0.0, 1.0]))
        sae.layer_scales.copy_(torch.tensor([1.0, 0.5]))
    f = sae.encode(torch.tensor([[2.0, 3.0, 2.0, 2.0]]))
    torch.testing.assert_close(f, f0)
    torch.testing.assert_close(sae.decode(f), torch.tensor([[7.5, 8.5, 1.8, 12.4]]))


def test_bad_shape_is_refused():
    with pytest.raises(SaefwError, match="not n_layers=3 layers"):
        _cc(d_in=8, n_layers=3)


def test_init_segments_have_the_configured_norm_and_encoder_is_tied():
    sae = _cc(d_in=12, d_sae=5, n_layers=3, init_decoder_norm=0.2)
    torch.testing.assert_close(sae.layer_norms(), torch.full((5, 3), 0.2))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())
    assert sae.shape_config() == {"n_layers": 3} and type(sae).shape_kwargs({"n_layers": "3"}) == {"n_layers": 3}


def test_save_load_round_trip_folds_the_layer_scales(tmp_path):
    torch.manual_seed(0)
    sae = _cc(d_in=6, d_sae=8, n_layers=3)
    x = torch.randn(64, 6) * torch.tensor([1.0, 1, 5, 5, 0.1, 0.1])
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    sae.initialize_from_data(x)
    sae.input_scale.fill_(1.7)  # a scalar scale is folded too
    f, x_hat = sae.encode(x), sae.decode(sae.encode(x))
    assert (f > 0).any()
    save_sae(sae, tmp_path / "cc")
    cfg = read_config(tmp_path / "cc")
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["n_layers"]) == ("crosscoder", 6, 8, 3)
    assert cfg["metadata"]["saefw"] == {"format": 2, "architecture": "crosscoder",
                                        "arch_config": {"init_decoder_norm": 0.1}}
    loaded = load_sae(tmp_path / "cc")
    assert "layer_scales" in dict(loaded.named_buffers()) and torch.equal(loaded.layer_scales, torch.ones(3))
    torch.testing.assert_close(loaded.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.layer_norms(), sae.layer_norms(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.decoder_directions, sae.decoder_directions, rtol=1e-5, atol=1e-6)


def _mmcs(true: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Per true direction, the max cosine with any latent's decoder segment (and which latent)."""
    return (normalize(true, dim=-1) @ normalize(segments, dim=-1).T).max(1)


def test_recovers_shared_and_single_layer_features_of_two_layers():
    """12 true features over two layers of width 16: 4 in both layers (a direction in each), 4 in layer 1 only, 4
    in layer 2 only (layer 2 three times the norm); x = [c D1, c D2] with sparse codes c."""
    torch.manual_seed(0)
    d, n_sh, n_1, n_2 = 16, 4, 4, 4
    n = n_sh + n_1 + n_2
    D1, D2 = normalize(torch.randn(n, d), dim=-1), 3.0 * normalize(torch.randn(n, d), dim=-1)
    D1[n_sh + n_1:] = 0
    D2[n_sh:n_sh + n_1] = 0
    g = torch.Generator().manual_seed(1)

    def sample(batch):
        c = (torch.rand(batch, n, generator=g) < 0.08) * (0.5 + torch.rand(batch, n, generator=g))
        return torch.cat([c @ D1, c @ D2], -1)

    sae = _cc(d_in=2 * d, d_sae=32, n_layers=2)
    sae.initialize_from_data(sample(4096))
    penalty = build("penalty", {"name": "l1_decoder_norm"})
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(1500):
        out = compose_loss(sae.train_forward(sae.scale_rows(sample(256))), penalty, 0.5)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    W = sae.W_dec.detach() / sae.column_scales()  # raw units
    fractions = sae.layer_norms() / sae.layer_norms().sum(-1, keepdim=True)
    for layer, D, only in ((0, D1, slice(n_sh, n_sh + n_1)), (1, D2, slice(n_sh + n_1, n))):
        present = D.norm(dim=-1) > 0
        best = _mmcs(D[present], W[:, layer * d:(layer + 1) * d])
        assert best.values.mean().item() >= 0.9, f"layer {layer}: mmcs {best.values.mean().item():.3f}"
        # the latent that carries a single-layer feature lives in that layer
        single = _mmcs(D[only], W[:, layer * d:(layer + 1) * d]).indices
        assert (fractions[single, layer] > 0.9).all(), fractions[single]
    f = sae.encode(x := sample(2048))
    assert ((sae.decode(f) - x).norm() / x.norm()).item() < 0.1
