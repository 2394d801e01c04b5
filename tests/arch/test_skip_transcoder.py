"""Skip-transcoder (Paulo et al. 2025): the dense skip path x W_skipᵀ by hand (in forward and decode(f, x), not in
decode(f)), zero at init, folded with both scales on save, and a purely linear map learned by the skip path."""
import pytest
import torch
from helpers import random_transcoder, train_topk_in_process
from safetensors.torch import load_file

from saefw.arch.transcoder import TranscoderSAE
from saefw.io.saved import load_sae, read_config, save_sae
from saefw.registry import build, discover


def _stc(activation="topk", d_in=2, d_sae=3, d_out=3, **cfg):
    discover()
    cfg = {"k": 2, **cfg} if activation == "topk" else cfg
    return build("arch", {"name": "skip_transcoder", "activation": activation, **cfg}, d_in=d_in, d_sae=d_sae,
                 d_out=d_out)


def _tiny():
    """The transcoder test's weights (tests/arch/test_transcoder.py) plus W_skip; input_scale 2, target_scale 4."""
    sae = _stc()
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.5, 0.0], [1.0, 1.0, 1.0]]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0, -1.0]))
        sae.W_skip.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [2.0, 1.0]]))  # [d_out, d_in]
        sae.input_scale.fill_(2.0)
        sae.target_scale.fill_(4.0)
    return sae


def test_skip_term_by_hand():
    sae = _tiny()
    x = torch.tensor([[1.0, 1.5]])  # x_s = [2, 3]; z = [2, 5, 1.5]; top-2 → f = [2, 5, 0]
    f = sae.encode(x)
    torch.testing.assert_close(f, torch.tensor([[2.0, 5.0, 0.0]]))
    # dictionary part: 2·[1, 0, 2] + 5·[0, .5, 0] + [1, 0, −1] = [3, 2.5, 3], / 4 = [.75, .625, .75]
    torch.testing.assert_close(sae.decode(f), torch.tensor([[0.75, 0.625, 0.75]]))
    # skip: x_s W_skipᵀ = [2·1 + 3·0, 2·0 + 3·(−1), 2·2 + 3·1] = [2, −3, 7]; total [5, −.5, 10], / 4
    full = torch.tensor([[1.25, -0.125, 2.5]])
    torch.testing.assert_close(sae.decode(f, x), full)
    y_hat, f2 = sae(x)
    torch.testing.assert_close(y_hat, full)
    torch.testing.assert_close(f2, f)
    # training sees the whole output: y_s = [5, .5, 8] → e = [0, −1, 2], ‖e‖² = 5
    out = sae.train_forward(torch.tensor([[2.0, 3.0, 5.0, 0.5, 8.0]]))
    assert out.mse.item() == pytest.approx(5.0, rel=1e-6)
    out.mse.backward()
    # ∂‖ŷ − y‖²/∂W_skip = 2 (ŷ − y)ᵀ x_s = 2·[0, −1, 2]ᵀ [2, 3]
    torch.testing.assert_close(sae.W_skip.grad, torch.tensor([[0.0, 0.0], [-4.0, -6.0], [8.0, 12.0]]))


def test_w_skip_is_a_zero_parameter_at_init():
    torch.manual_seed(0)
    for activation in ("topk", "jumprelu"):
        sae = _stc(activation, d_in=5, d_sae=8, d_out=3)
        assert isinstance(sae, TranscoderSAE)
        assert torch.equal(sae.W_skip.detach(), torch.zeros(3, 5))
        assert any(p is sae.W_skip for g in sae.param_groups(1e-3) for p in g["params"])
        x = torch.randn(4, 5)
        # with W_skip = 0 the whole output is the dictionary's
        torch.testing.assert_close(sae(x)[0], sae.decode(sae.encode(x)))



@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_save_load_round_trip_folds_the_scales_into_w_skip(tmp_path, activation):
    sae = random_transcoder("skip_transcoder", activation)
    save_sae(sae, tmp_path)
    cfg = read_config(tmp_path)
    assert cfg["architecture"] == f"{activation}_skip_transcoder"
    assert (cfg["d_out"], cfg["apply_b_dec_to_input"]) == (4, False)
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_dec", "W_skip"} | (
        {"threshold"} if activation == "jumprelu" else set())
    torch.testing.assert_close(tensors["W_skip"], sae.W_skip.detach() * 1.7 / 0.6)
    loaded = load_sae(tmp_path)
    assert loaded.plugin_name == "skip_transcoder" and loaded.activation == activation
    assert loaded.input_scale.item() == 1.0 and loaded.target_scale.item() == 1.0
    x = torch.randn(64, 6) * 2
    with torch.no_grad():
        y_hat, f = sae(x)
        assert 0 < (f > 0).float().mean() < 1
        skip = y_hat - sae.decode(f)
        assert skip.norm() > 0.2 * y_hat.norm()  # the skip term is a sizeable part of the output
        y2, f2 = loaded(x)
        torch.testing.assert_close(f2, f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y2, y_hat, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.decode(f), sae.decode(f), atol=1e-5, rtol=1e-5)


def _ev(y_hat, y):
    return (1 - (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()


def test_a_linear_map_is_learned_by_the_skip_path():
    """y = x A: the skip path carries it (W_skip → A in raw units); the k = 2 dictionary is left with little."""
    torch.manual_seed(0)
    d_in, d_out = 16, 12
    A = torch.randn(d_in, d_out) / 4
    g = torch.Generator().manual_seed(1)

    def sample(batch):
        x = 3 * torch.randn(batch, d_in, generator=g) + 1
        return torch.cat([x, x @ A], -1)

    sae = _stc(d_in=d_in, d_sae=32, d_out=d_out, k=2)
    sae.initialize_from_data(sample(2048))
    train_topk_in_process(sae, sample, 200)
    x, y = sae.split_rows(sample(2048))
    with torch.no_grad():
        y_hat, f = sae(x)
        skip_only = sae.decode(torch.zeros_like(f), x)  # b_dec + x W_skipᵀ
        dict_only = sae.decode(f)
    assert _ev(y_hat, y) > 0.95
    assert _ev(skip_only, y) > 0.9
    assert _ev(dict_only, y) < 0.3
    w_skip_raw = sae.W_skip.detach().T * sae.input_scale / sae.target_scale  # [d_in, d_out], as A
    assert ((w_skip_raw - A).norm() / A.norm()).item() < 0.3
