"""An arch defined outside saefw carries its own SAELens mapping: one class, registered with the decorator, with
its own export and import hooks, round-trips through the SAELens directory format with no edit of saefw/ (and
loads in SAELens, computing the same latents and reconstructions, when sae-lens is installed)."""
import json
import math
from dataclasses import dataclass, field

import pytest
import torch
from helpers import assert_same_function
from safetensors.torch import load_file
from torch import nn

from saefw.arch.base import SAE, SparsityInput, TrainOutput
from saefw.io.saelens_format import fold_b_dec_input
from saefw.io.saved import load_sae, save_sae
from saefw.registry import build, discover, register

D_IN, D_SAE = 8, 24


@dataclass
class ScaledReLUConfig:
    init_scale: float = field(default=2.0, metadata={"help": "every latent's output scale at init"})


@register("arch", "test_scaled_relu", ScaledReLUConfig)
class ScaledReLUSAE(SAE):
    """f = s ⊙ ReLU((x − b_dec) W_enc + b_enc) with a learned per-latent scale s = exp(log_scale) > 0;
    x̂ = f W_dec + b_dec. Since s·ReLU(z) = ReLU(s·z), this is SAELens's ``standard`` with s folded into W_enc and
    b_enc: the export hook folds it, the import hook reads a standard SAE back with s = 1."""

    saelens_architecture = "standard"
    saelens_reads = ("standard",)
    saelens_priority = -1  # SAELens's own standard directories stay l1's; only this arch's own come here first

    def __init__(self, cfg: ScaledReLUConfig, d_in: int, d_sae: int):
        super().__init__(cfg, d_in, d_sae)
        self.init_tied_weights(1.0)
        self.log_scale = nn.Parameter(torch.full((d_sae,), math.log(cfg.init_scale)))

    def _encode(self, x):
        return torch.relu(self.pre_acts(x)) * self.log_scale.exp()

    def train_forward(self, x, dead_mask=None):
        f = self._encode(x)
        return TrainOutput(f, (self._decode(f) - x).pow(2).sum(-1).mean(), SparsityInput(acts=f, W_dec=self.W_dec))

    def saelens_metadata(self):
        return {"scale_folded_into_encoder": True}

    def saelens_state(self, state):
        s = state.pop("log_scale").exp()
        return {**state, "W_enc": state["W_enc"] * s, "b_enc": state["b_enc"] * s}

    @classmethod
    def from_saelens(cls, architecture, cfg, t, where):
        fold_b_dec_input(cfg, t)
        t["log_scale"] = torch.zeros(cfg["d_sae"])
        return {"init_scale": 1.0}


def random_scaled(seed: int = 0) -> ScaledReLUSAE:
    discover()
    torch.manual_seed(seed)
    sae = build("arch", {"name": "test_scaled_relu"}, d_in=D_IN, d_sae=D_SAE)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name in ("b_enc", "log_scale") else 1.0))
    sae.input_scale.fill_(1.7)
    return sae.eval()


def test_plugin_arch_round_trips_through_the_saelens_format(tmp_path):
    sae = random_scaled()
    save_sae(sae, tmp_path, {"model_name": "m", "hook_name": "blocks.2.hook_resid_post"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["metadata"]["scale_folded_into_encoder"] is True
    assert cfg["metadata"]["saefw"]["architecture"] == "test_scaled_relu"
    assert set(load_file(str(tmp_path / "sae_weights.safetensors"))) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    back = load_sae(tmp_path)
    assert isinstance(back, ScaledReLUSAE) and torch.equal(back.log_scale.detach(), torch.zeros(D_SAE))
    x = torch.randn(200, D_IN) * 3
    f = assert_same_function(sae, back, x)
    assert 0 < (f > 0).float().mean() < 1  # latents both on and off: the comparison means something


def test_plugin_arch_directory_loads_in_saelens_and_agrees(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = random_scaled(1)
    save_sae(sae, tmp_path, {"model_name": "m", "hook_name": "blocks.2.hook_resid_post"})
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert isinstance(theirs, sae_lens.StandardSAE)
    x = torch.randn(200, D_IN) * 3
    assert_same_function(sae, theirs, x)
    assert_same_function(load_sae(tmp_path), theirs, x)
