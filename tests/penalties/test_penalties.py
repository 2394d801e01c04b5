"""Every sparsity penalty against a hand-computed sum."""
import dataclasses
import math

import pytest
import torch

from saefw.arch.base import SparsityInput
from saefw.errors import SaefwError
from saefw.registry import build, discover, make_config

# two tokens, three latents; decoder row norms ‖W_dec,i‖ = [1, 2, 0.5]
ACTS = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.0, 0.0]])
W_DEC = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.3, 0.4]])


def _penalty(name, **cfg):
    discover()
    return build("penalty", {"name": name, **cfg})


def test_l1_and_l1_decoder_norm_by_hand():
    s = SparsityInput(acts=ACTS, W_dec=W_DEC)
    assert _penalty("l1")(s).item() == pytest.approx((1 + 2 + 0.5) / 2)
    # Σ f_i‖W_dec,i‖: token 1 = 1·1 + 2·0.5 = 2, token 2 = 0.5·1 = 0.5
    assert _penalty("l1_decoder_norm")(s).item() == pytest.approx((2 + 0.5) / 2)
    assert _penalty("l1").requires_unit_norm_decoder and not _penalty("l1_decoder_norm").requires_unit_norm_decoder


def test_tanh_by_hand():
    p = _penalty("tanh", sharpness=2.0)
    # token 1: tanh(2·1·1) + tanh(2·2·0.5) = 2·tanh(2); token 2: tanh(2·0.5·1) = tanh(1)
    expected = (2 * math.tanh(2.0) + math.tanh(1.0)) / 2
    assert p(SparsityInput(acts=ACTS, W_dec=W_DEC)).item() == pytest.approx(expected)
    assert _penalty("tanh").cfg.sharpness == 1.0 and _penalty("tanh").cfg.coefficient == 5.0  # inherits λ etc.


def test_tanh_saturates_and_is_l1_like_near_zero():
    p = _penalty("tanh", sharpness=1.0)
    w = torch.eye(2)
    assert p(SparsityInput(acts=torch.tensor([[1e3, 1e3]]), W_dec=w)).item() == pytest.approx(2.0)
    assert p(SparsityInput(acts=torch.tensor([[1e-4, 2e-4]]), W_dec=w)).item() == pytest.approx(3e-4, rel=1e-6)


def test_l0_is_the_mean_of_the_supplied_l0_and_passes_its_gradient():
    l0 = torch.tensor([3.0, 1.0], requires_grad=True)
    out = _penalty("l0")(SparsityInput(acts=ACTS, W_dec=W_DEC, l0=l0))
    assert out.item() == pytest.approx(2.0)
    out.backward()
    torch.testing.assert_close(l0.grad, torch.tensor([0.5, 0.5]))


def test_l0_without_thresholds_is_a_clear_error():
    with pytest.raises(SaefwError, match="jumprelu"):
        _penalty("l0")(SparsityInput(acts=ACTS, W_dec=W_DEC))


def test_none_is_a_zero_scalar_on_the_acts_dtype_and_has_no_options():
    out = _penalty("none")(SparsityInput(acts=ACTS.double(), W_dec=W_DEC.double()))
    assert out.shape == () and out.dtype == torch.float64 and out.item() == 0.0
    assert dataclasses.fields(make_config("penalty", "none")) == ()
    with pytest.raises(SaefwError, match="no option coefficient"):
        make_config("penalty", "none", {"coefficient": 1.0})


def test_controller_takes_lambda_zero_for_the_none_penalty():
    from saefw.training.sparsity import SparsityConfig, SparsityController

    controller = SparsityController(SparsityConfig(), 0.0, target_l0=8, total_steps=10, active=False)
    controller.update(torch.tensor(100.0), step=5)
    assert controller.coefficient(5) == 0.0 and not controller.adapting
