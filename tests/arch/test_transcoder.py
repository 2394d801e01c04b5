"""Transcoder (Dunefsky et al. 2024) with TopK and JumpReLU activations: encode/decode and the training forward by
hand with d_in ≠ d_out and both scales ≠ 1, the scales set from data, the save/load round trip folding them, and a
synthetic sparse map from one site to another recovered."""
import pytest
import torch
from helpers import random_transcoder, train_topk_in_process
from torch.nn.functional import normalize

from saefw.arch.base import compose_loss, geometric_median
from saefw.errors import SaefwError
from saefw.io.saved import load_sae, read_config, save_sae
from saefw.registry import build, discover
from saefw.training.run import check_combination

ALPHA = 1 / 32
# Two tokens, scaled inputs (input_scale = 2) x_s = [2, 3] and [−2, 0.2], i.e. raw x = [1, 1.5] and [−1, 0.1].
# z = x_s W_enc + b_enc with W_enc = [[1, 0, −1], [0, 2, 1]], b_enc = [0, −1, 0.5]:
#   token 0: [2, 6, −2 + 3] + b_enc = [2, 5, 1.5];  token 1: [−2, 0.4, 2 + 0.2] + b_enc = [−2, −0.6, 2.7]
X_RAW = torch.tensor([[1.0, 1.5], [-1.0, 0.1]])
# scaled targets (target_scale = 4), raw = / 4
Y_SCALED = torch.tensor([[2.0, 2.5, 5.0], [3.7, 3.7, 1.7]])


def _tc(activation="topk", d_in=2, d_sae=3, d_out=3, **cfg):
    discover()
    cfg = {"k": 2, **cfg} if activation == "topk" else cfg
    return build("arch", {"name": "transcoder", "activation": activation, **cfg}, d_in=d_in, d_sae=d_sae,
                 d_out=d_out)


def _tiny(activation="topk", theta=(1.5, 5.0, 1.0)):
    sae = _tc(activation)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0, -1.0]))
        if activation == "jumprelu":
            sae.log_threshold.copy_(torch.tensor(theta).log())  # exp(log θ) == θ exactly for these values
        sae.input_scale.fill_(2.0)
        sae.target_scale.fill_(4.0)
    return sae


def test_topk_encode_decode_by_hand():
    sae = _tiny("topk")
    assert (sae.d_in, sae.d_sae, sae.d_out, sae.k) == (2, 3, 3, 2)
    f = sae.encode(X_RAW)
    # token 0: top-2 of [2, 5, 1.5] → latents 1, 0; token 1: top-2 of [−2, −0.6, 2.7] → latents 2, 1, and ReLU
    # after the selection drops −0.6 (latent 0 at −2 is never picked)
    torch.testing.assert_close(f, torch.tensor([[2.0, 5.0, 0.0], [0.0, 0.0, 2.7]]))
    # ŷ_s = f W_dec + b_dec: token 0: 2·[1, 0, 2] + 5·[0, .5, 0] + [1, 0, −1] = [3, 2.5, 3];
    #   token 1: 2.7·[1, 1, 1] + [1, 0, −1] = [3.7, 2.7, 1.7];  raw = ŷ_s / target_scale (4)
    expected = torch.tensor([[0.75, 0.625, 0.75], [0.925, 0.675, 0.425]])
    torch.testing.assert_close(sae.decode(f), expected)
    y_hat, f2 = sae(X_RAW)
    torch.testing.assert_close(f2, f)
    torch.testing.assert_close(y_hat, expected)
    # the encoder reads x_s W_enc + b_enc: b_dec (output space) is never subtracted from the input
    torch.testing.assert_close(sae.pre_acts(X_RAW * 2), torch.tensor([[2.0, 5.0, 1.5], [-2.0, -0.6, 2.7]]))


def test_jumprelu_encode_decode_by_hand_strict_threshold():
    sae = _tiny("jumprelu", theta=(1.5, 5.0, 1.0))
    assert not sae.unit_norm_decoder
    f = sae.encode(X_RAW)
    # token 0: z = [2, 5, 1.5] vs θ = [1.5, 5, 1]: z_1 == θ_1 is off (strict z > θ) → [2, 0, 1.5]
    # token 1: z = [−2, −0.6, 2.7] → [0, 0, 2.7]
    torch.testing.assert_close(f, torch.tensor([[2.0, 0.0, 1.5], [0.0, 0.0, 2.7]]))
    # token 0: 2·[1, 0, 2] + 1.5·[1, 1, 1] + [1, 0, −1] = [4.5, 1.5, 4.5], / 4
    expected = torch.tensor([[1.125, 0.375, 1.125], [0.925, 0.675, 0.425]])
    torch.testing.assert_close(sae.decode(f), expected)
    torch.testing.assert_close(sae(X_RAW)[0], expected)
    sae.log_threshold.data[1] = torch.tensor(4.5).log()  # now z_1 = 5 > 4.5 fires
    torch.testing.assert_close(sae.encode(X_RAW)[0], torch.tensor([2.0, 5.0, 1.5]))


def _rows():
    return torch.cat([X_RAW, Y_SCALED / 4], -1)  # raw rows [x (2), y (3)]


def test_topk_train_forward_mse_and_auxk_on_the_target():
    sae = _tiny("topk")
    rows = sae.scale_rows(_rows())
    torch.testing.assert_close(rows, torch.cat([X_RAW * 2, Y_SCALED], -1))
    out = sae.train_forward(rows)
    torch.testing.assert_close(out.f, torch.tensor([[2.0, 5.0, 0.0], [0.0, 0.0, 2.7]]))
    # ŷ_s = [3, 2.5, 3] and [3.7, 2.7, 1.7]; e = y − ŷ = [−1, 0, 2] (‖e‖² = 5) and [0, 1, 0] (1) → mean 3
    assert out.mse.item() == pytest.approx(3.0, rel=1e-6)
    assert out.aux["aux_loss"].item() == 0.0  # no dead mask: no AuxK
    torch.testing.assert_close(out.sparsity.acts, out.f)
    assert out.sparsity.W_dec is sae.W_dec and out.sparsity.l0 is None
    # latent 2 marked dead, k_aux = d_out // 2 = 1: ê = ReLU(z_2) W_dec,2 = 1.5·[1, 1, 1] and 2.7·[1, 1, 1]
    # ‖e − ê‖² = ‖[−2.5, −1.5, .5]‖² = 8.75 and ‖[−2.7, −1.7, −2.7]‖² = 17.47 → mean 13.11
    # ‖e − ē‖² = 1.5 for both (ē = [−.5, .5, 1]); V_y = ‖y_0 − y_1‖²/4 = (2.89 + 1.44 + 10.89)/4 = 3.805
    assert sae.k_aux == 1
    dead = torch.tensor([False, False, True])
    out = sae.train_forward(rows, dead_mask=dead)
    assert out.aux["aux_loss"].item() == pytest.approx(ALPHA * 3.805 * 13.11 / 1.5, rel=1e-5)
    none = build("penalty", {"name": "none"})
    loss = compose_loss(out, none, 0.0)
    assert loss.loss.item() == pytest.approx(3.0 + ALPHA * 3.805 * 13.11 / 1.5, rel=1e-5)


def test_jumprelu_train_forward_mse_and_l0():
    sae = _tiny("jumprelu", theta=(1.5, 5.0, 1.0))
    out = sae.train_forward(sae.scale_rows(_rows()))
    torch.testing.assert_close(out.f, torch.tensor([[2.0, 0.0, 1.5], [0.0, 0.0, 2.7]]))
    # ŷ_s = [4.5, 1.5, 4.5] and [3.7, 2.7, 1.7]; ‖y − ŷ‖² = 6.25 + 1 + .25 = 7.5 and 1 → mean 4.25
    assert out.mse.item() == pytest.approx(4.25, rel=1e-6)
    # L0: #(z > θ) = 2 (latents 0, 2; latent 1 sits exactly on θ) and 1
    torch.testing.assert_close(out.sparsity.l0, torch.tensor([2.0, 1.0]))
    assert out.aux == {}
    l0 = build("penalty", {"name": "l0"})
    assert compose_loss(out, l0, 2.0).loss.item() == pytest.approx(4.25 + 2.0 * 1.5, rel=1e-6)


def test_split_rows_and_bad_config_are_refused():
    sae = _tc()
    x, y = sae.split_rows(torch.arange(10.0).reshape(2, 5))
    assert torch.equal(x, torch.tensor([[0.0, 1.0], [5.0, 6.0]])) and y.shape == (2, 3)
    with pytest.raises(SaefwError, match=r"d_in \+ d_out = 2 \+ 3 columns.*got 4"):
        sae.split_rows(torch.zeros(2, 4))
    with pytest.raises(SaefwError, match=r"got 2$"):
        sae.scale_rows(torch.zeros(1, 2))  # an input-only row (d_in wide) is not a row
    with pytest.raises(SaefwError, match=r"activation='relu' is invalid for transcoder: choose one of topk, jumprelu"):
        _tc("relu")
    for bad in (0, True):
        with pytest.raises(SaefwError, match=rf"d_out={bad!r} is invalid for transcoder: it must be a positive"):
            _tc(d_out=bad)
    with pytest.raises(SaefwError, match=r"arch.k=None is invalid"):
        _tc(k=None)


def test_initialize_from_data_sets_both_scales_and_b_dec():
    torch.manual_seed(0)
    sae = _tc(d_in=4, d_sae=8, d_out=6)
    x = 5.0 * torch.randn(400, 4)
    y = 0.1 * torch.randn(400, 6) + torch.tensor([0.3, 0.0, -0.2, 0.0, 0.0, 0.1])
    sae.initialize_from_data(torch.cat([x, y], -1))
    assert (x * sae.input_scale).norm(dim=-1).mean().item() == pytest.approx(4 ** 0.5, rel=1e-5)
    assert (y * sae.target_scale).norm(dim=-1).mean().item() == pytest.approx(6 ** 0.5, rel=1e-5)
    assert sae.target_scale.item() > 20 * sae.input_scale.item()  # two independent scales
    torch.testing.assert_close(sae.b_dec.detach(), geometric_median(y * sae.target_scale))
    bad = torch.cat([x, y], -1)
    bad[3, 7] = float("nan")
    with pytest.raises(SaefwError, match=r"NaN/inf \(1 values in the first 400 tokens\)"):
        sae.initialize_from_data(bad)


def test_init_per_activation():
    torch.manual_seed(0)
    topk, jr = _tc(d_in=16, d_sae=8, d_out=9), _tc("jumprelu", d_in=16, d_sae=8, d_out=9)
    assert topk.W_enc.shape == (16, 8) and topk.W_dec.shape == (8, 9) and topk.b_dec.shape == (9,)
    torch.testing.assert_close(topk.W_dec.norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(jr.W_dec.norm(dim=-1), torch.full((8,), 0.1))
    torch.testing.assert_close(jr.W_enc.norm(dim=0), torch.full((8,), 0.1))
    torch.testing.assert_close(jr.threshold.detach(), torch.full((8,), 0.04))  # 0.01·√16
    assert jr.bandwidth == pytest.approx(0.04)
    assert topk.k_aux == 4  # d_out // 2
    assert topk.shape_config() == {"d_out": 9} and type(topk).shape_kwargs({"d_out": "9"}) == {"d_out": 9}
    groups = jr.param_groups(1e-3)
    assert groups[1]["params"] == [jr.log_threshold] and groups[1]["lr"] == pytest.approx(2e-2)
    assert len(topk.param_groups(1e-3)) == 1
    jr = jr.to(torch.bfloat16)  # θ stays fp32, as jumprelu's
    assert jr.W_enc.dtype == torch.bfloat16 and jr.log_threshold.dtype == torch.float32



@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_save_load_round_trip_folds_both_scales(tmp_path, activation):
    sae = random_transcoder("transcoder", activation)
    save_sae(sae, tmp_path, {"model_name": "m", "hook_name": "blocks.2.ln2.hook_normalized",
                             "hook_name_out": "blocks.2.hook_mlp_out"})
    cfg = read_config(tmp_path)
    assert cfg["architecture"] == f"{activation}_transcoder"
    assert (cfg["d_in"], cfg["d_sae"], cfg["d_out"], cfg["apply_b_dec_to_input"]) == (6, 10, 4, False)
    assert cfg.get("k") == (3 if activation == "topk" else None)
    assert cfg["metadata"]["hook_name_out"] == "blocks.2.hook_mlp_out"
    assert cfg["metadata"]["saefw"]["architecture"] == "transcoder"
    loaded = load_sae(tmp_path)
    assert type(loaded) is type(sae) and loaded.activation == activation and loaded.d_out == 4
    assert loaded.input_scale.item() == 1.0 and loaded.target_scale.item() == 1.0  # folded into the weights
    x = torch.randn(64, 6) * 2
    with torch.no_grad():
        f = sae.encode(x)
        assert 0 < (f > 0).float().mean() < 1
        torch.testing.assert_close(loaded.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.decode(f), sae.decode(f), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(x)[0], sae(x)[0], atol=1e-5, rtol=1e-5)
    # the scales are exactly where fold_input_scale puts them
    torch.testing.assert_close(loaded.W_enc, sae.W_enc * 1.7)
    torch.testing.assert_close(loaded.b_dec, sae.b_dec / 0.6)


def test_recovers_a_sparse_map_between_two_sites():
    """8 true features with sparse codes c: x = c D_in + noise (16 wide), y = c D_out (12 wide); a TopK transcoder
    of 32 latents finds D_out's directions in its decoder rows and reconstructs y."""
    torch.manual_seed(0)
    d_in, d_out, n = 16, 12, 8
    D_in, D_out = normalize(torch.randn(n, d_in), dim=-1), 2.0 * normalize(torch.randn(n, d_out), dim=-1)
    g = torch.Generator().manual_seed(1)

    def sample(batch):
        c = (torch.rand(batch, n, generator=g) < 0.15) * (0.5 + torch.rand(batch, n, generator=g))
        return torch.cat([c @ D_in + 0.01 * torch.randn(batch, d_in, generator=g), c @ D_out], -1)

    sae = _tc(d_in=d_in, d_sae=32, d_out=d_out, k=3)
    sae.initialize_from_data(sample(2048))
    train_topk_in_process(sae, sample, 250)
    mmcs = (normalize(D_out, dim=-1) @ sae.decoder_directions.T).max(1).values
    assert mmcs.mean().item() >= 0.9, mmcs
    x, y = sae.split_rows(sample(2048))
    with torch.no_grad():
        y_hat, f = sae(x)
    assert ((f > 0).sum(-1) <= 3).all()
    assert ((y_hat - y).norm() / y.norm()).item() < 0.2


def test_the_penalty_must_fit_the_activation():
    discover()
    check_combination("transcoder", "none", {"activation": "topk"})
    check_combination("skip_transcoder", "l0", {"activation": "jumprelu"})
    with pytest.raises(SaefwError, match=r"arch=transcoder arch.activation=jumprelu does not take penalty=none; "
                                         r"valid penalties for it: l0$"):
        check_combination("transcoder", "none", {"activation": "jumprelu"})
    with pytest.raises(SaefwError, match=r"arch=skip_transcoder arch.activation=topk does not take penalty=l0; "
                                         r"valid penalties for it: none$"):
        check_combination("skip_transcoder", "l0", {"activation": "topk"})
