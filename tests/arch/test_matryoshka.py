"""The Matryoshka TopK SAE: its loss and gradient against a hand computation, bad prefixes refused, and the real
CLI training it and saving a SAELens-loadable run whose first latents reconstruct on their own far better than a
plain topk's."""
import json

import pytest
import torch
from helpers import run_cli, set_params

from saefw.errors import SaefwError
from saefw.registry import build, discover, entry


@pytest.fixture(scope="module")
def matryoshka_cls():
    discover()
    cls = entry("arch", "matryoshka").cls
    assert cls.__module__ == "saefw.arch.matryoshka"  # a built-in: no plugins/ folder needed
    return cls


def test_loss_against_a_hand_computation(matryoshka_cls):
    """x = (3, 1), k = 2, prefixes (2, 4): z = (3, 1, 2.5, 1.5) keeps latents 0 and 2, f = (3, 0, 2.5, 0).
    x̂_1 = 3·w_0 = (3, 0): ‖x − x̂_1‖² = 1;  x̂_2 = x̂_1 + 2.5·w_2 = (3.5, 0): ‖x − x̂_2‖² = 0.25 + 1 = 1.25;
    loss = (1 + 1.25) / 2 = 1.125 (no dead latents, so AuxK = 0; penalty none)."""
    sae = build("arch", {"name": "matryoshka", "k": 2, "group_fractions": [0.5, 1.0]}, d_in=2, d_sae=4)
    assert isinstance(sae, matryoshka_cls) and sae.prefixes == [2, 4]
    set_params(sae, W_enc=[[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], b_enc=[0.0, 0.0, -0.5, 0.5],
               b_dec=[0.0, 0.0], W_dec=[[1.0, 0.0], [0.0, 1.0], [0.2, 0.0], [0.0, 0.4]])
    out = sae.loss(torch.tensor([[3.0, 1.0]]), lambda s: s.acts.new_zeros(()), 0.0)
    torch.testing.assert_close(out.f, torch.tensor([[3.0, 0.0, 2.5, 0.0]]))
    assert out.loss.item() == pytest.approx(1.125)
    assert (out.terms["first_prefix_mse"].item(), out.terms["full_mse"].item()) == pytest.approx((1.0, 1.25))
    assert out.terms["mse_loss"].item() == pytest.approx(1.125)  # the mean over prefixes, as in the loss
    out.loss.backward()
    # ∂loss/∂w_i = −(1/G) Σ_{g: i < m_g} 2 f_i (x − x̂_g): latent 0 sits in both prefixes, latent 2 only in the
    # whole dictionary, latent 1 is off
    torch.testing.assert_close(sae.W_dec.grad, torch.tensor([[1.5, -6.0], [0.0, 0.0], [1.25, -2.5], [0.0, 0.0]]))


def test_bad_group_fractions_are_refused(matryoshka_cls):
    for bad in ([0.5, 0.25, 1.0], [0.5], [0.0, 1.0], []):
        with pytest.raises(SaefwError, match="arch.group_fractions=.* is invalid"):
            build("arch", {"name": "matryoshka", "k": 2, "group_fractions": bad}, d_in=2, d_sae=8)


def prefix_ev(sae, x: torch.Tensor, m: int) -> float:
    """Explained variance of the reconstruction from the first m latents alone."""
    with torch.no_grad():
        x_hat = sae.encode(x)[:, :m] @ sae.W_dec[:m] + sae.b_dec
    return (1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def test_cli_trains_and_saves_it(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "arch=topk,matryoshka", "+experiment=synthetic", "total_tokens=30000", "d_sae=256",
                "wandb.mode=disabled", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}",
                "hydra.sweep.subdir=${hydra:runtime.choices.arch}", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((sweep / "matryoshka" / "metrics.json").read_text())
    assert (m["arch"], m["penalty"], m["l0"]) == ("matryoshka", "none", 8.0)  # k = the preset's target_l0
    cfg = json.loads((sweep / "matryoshka" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["k"]) == ("topk", 8)  # inference is topk's, so SAELens reads it as topk
    assert cfg["metadata"]["saefw"]["architecture"] == "matryoshka"
    assert cfg["metadata"]["saefw"]["arch_config"]["group_fractions"] == [0.0625, 0.125, 0.25, 0.5, 1.0]

    from helpers import assert_same_function
    from sae_lens import SAE

    from saefw.io.saved import load_sae
    from saefw.sources.base import RunSpec

    source = build("source", {"name": "synthetic"}, spec=RunSpec(seed=0, train_tokens=0))
    x = torch.cat(list(source.eval_batches(4096)))
    ours, plain = load_sae(sweep / "matryoshka"), load_sae(sweep / "topk")
    assert ours.plugin_name == "matryoshka"
    theirs = SAE.load_from_disk(sweep / "matryoshka")
    from sae_lens.saes.topk_sae import TopKSAE as SAELensTopK

    assert isinstance(theirs, SAELensTopK)
    assert_same_function(ours, theirs, x)
    # the effect: the first 1/16 of the latents (16 of 256) reconstruct on their own (topk at 30 steps: ~0.04)
    first = ours.prefixes[0]
    assert first == 16
    assert prefix_ev(ours, x, first) > prefix_ev(plain, x, first) + 0.1
    assert prefix_ev(ours, x, 256) == pytest.approx(m["explained_variance"], abs=1e-4)
