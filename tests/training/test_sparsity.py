"""The sparsity controller: λ's schedule on its own, then the default target-L0 control end to end."""
import json
import math

import pytest
import torch
from helpers import run_cli

from saefw.training.sparsity import SparsityConfig, SparsityController


def test_warmup_anneal_adaptation_and_freeze_by_hand():
    cfg = SparsityConfig(adapt_rate=0.1, ema=1.0, anneal_fraction=0.5, freeze_fraction=0.2, warmup_fraction=0.1)
    c = SparsityController(cfg, initial=2.0, target_l0=10, total_steps=100)
    assert c.coefficient(0) == pytest.approx(2.0 * 1 / 10)  # linear ramp over the first 10 steps
    assert c.coefficient(9) == pytest.approx(2.0)
    c.update(torch.tensor(500.0), step=0)  # the anneal starts at the highest L0 seen: no error, no change
    c.update(torch.tensor(1000.0), step=0)
    assert c.l0_start.item() == 1000.0 and c.coefficient(50) == pytest.approx(2.0)
    # L0*_t descends geometrically from 1000 to 10 over the first 50 steps: 100 at step 25
    assert c.target_at(25) == pytest.approx(100.0) and c.target_at(50) == 10 and c.target_at(99) == 10
    c.update(torch.tensor(100 * math.e ** 0.5), step=25)  # L0 = L0*·e^0.5 -> log λ += 0.1 · 0.5
    assert c.coefficient(50) == pytest.approx(2.0 * math.exp(0.05))
    c.update(torch.tensor(1e6), step=60)  # the error is clipped at ±1
    assert c.coefficient(50) == pytest.approx(2.0 * math.exp(0.15))
    c.update(torch.tensor(10 * math.exp(-0.5)), step=61)  # too sparse: backs off at twice the rate
    assert c.coefficient(50) == pytest.approx(2.0 * math.exp(0.15 - 0.1))
    c.update(torch.tensor(1.0), step=85)  # the last 20 %: λ is held
    assert c.coefficient(99) == pytest.approx(2.0 * math.exp(0.05))
    fixed = SparsityController(cfg, initial=3.0, target_l0=None, total_steps=100)
    fixed.update(torch.tensor(1e6), step=50)
    assert fixed.coefficient(50) == pytest.approx(3.0) and not fixed.adapting


@pytest.mark.parametrize("arch", ["l1", "jumprelu"])
def test_default_control_lands_near_the_target_at_two_scales_100x_apart(tmp_path, arch):
    """Activations 100× larger (magnitude_mean 1 → 100) reach the same L0: the target, not λ, is the knob."""
    l0s = []
    for scale in (1.0, 100.0):
        out = tmp_path / f"{arch}-{scale}"
        r = run_cli("+experiment=synthetic", f"arch={arch}", "target_l0=12", "total_tokens=300000",
                    f"source.magnitude_mean={scale}", f"source.magnitude_std={0.2 * scale}",
                    "evaluators=[l0]", "wandb.mode=disabled", "trainer.enable_progress_bar=false",
                    f"hydra.run.dir={out}", cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        l0s.append(json.loads((out / "metrics.json").read_text())["l0"])
    for l0 in l0s:
        assert 12 * 0.75 <= l0 <= 12 * 1.25, l0s


class _ReferenceController:
    """The controller's update as first written (host-side Python branches), to check the device-side one."""

    def __init__(self, cfg, initial, target, total):
        self.cfg, self.target, self.total = cfg, target, total
        self.log_c, self.ema, self.start = math.log(initial), math.nan, math.nan

    def target_at(self, step):
        anneal = self.cfg.anneal_fraction * self.total
        if math.isnan(self.start) or self.start <= self.target or step >= anneal:
            return self.target
        return self.target * (self.start / self.target) ** (1 - step / anneal)

    def update(self, l0, step):
        l0 = max(l0, 1e-3)
        self.ema = l0 if math.isnan(self.ema) else self.ema + self.cfg.ema * (l0 - self.ema)
        if step < self.cfg.anneal_fraction * self.total and not (self.ema <= self.start):
            self.start = self.ema
        if step >= (1 - self.cfg.freeze_fraction) * self.total:
            return
        err = max(-1.0, min(1.0, math.log(self.ema / self.target_at(step))))
        self.log_c += self.cfg.adapt_rate * (2.0 if err < 0 else 1.0) * err


def test_device_side_update_equals_the_host_side_reference():
    """The update runs as torch.where's on the device (no host sync); it follows the Python-branch original."""
    cfg = SparsityConfig(adapt_rate=0.05, ema=0.3, anneal_fraction=0.5, freeze_fraction=0.2, warmup_fraction=0.1)
    c = SparsityController(cfg, initial=2.0, target_l0=20, total_steps=200)
    ref = _ReferenceController(cfg, 2.0, 20, 200)
    g = torch.Generator().manual_seed(0)
    l0s = torch.cat([torch.linspace(50, 400, 30), 400 * torch.rand(170, generator=g), torch.tensor([0.0])])
    for step, l0 in enumerate(l0s.tolist()):
        c.update(torch.tensor(l0), step)
        ref.update(l0, step)
        assert c.log_coefficient.item() == pytest.approx(ref.log_c, rel=1e-5, abs=1e-6), step
        assert c.target_at(step) == pytest.approx(ref.target_at(step), rel=1e-5)
        assert c.coefficient_tensor(step).item() == pytest.approx(c.coefficient(step), rel=1e-6)
