"""The worked plugin in plugins/ (the Matryoshka TopK SAE): its loss against a hand computation, and the real CLI
finding it in a working directory that holds a copy of plugins/, training it, and saving a SAELens-loadable
run whose first latents reconstruct on their own far better than a plain topk's."""
import dataclasses
import json
import re
import shutil
import sys

import pytest
import torch
from helpers import REPO, run_cli, set_params

from saefw.arch.base import SAE
from saefw.errors import SaefwError
from saefw.evals.base import Evaluator
from saefw.penalties.base import Penalty
from saefw.registry import build, discover, entry
from saefw.sources.base import ActivationSource


@pytest.fixture(scope="module")
def matryoshka_cls():
    discover(plugin_dirs=[REPO])  # imports plugins/matryoshka.py as the real module plugins.matryoshka
    cls = entry("arch", "matryoshka").cls
    assert cls.__module__ == "plugins.matryoshka"
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


def test_cli_finds_trains_and_saves_the_copied_plugin(tmp_path):
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")  # a user's working directory with the example
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

    discover(plugin_dirs=[REPO])
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


def test_without_the_plugins_folder_the_arch_is_unknown(tmp_path):
    r = run_cli("arch=matryoshka", "--cfg", "job", cwd=tmp_path)
    assert r.returncode != 0 and "Could not find 'arch/matryoshka'" in r.stderr


def test_help_from_the_repository_root_lists_the_example():
    r = run_cli("--help", cwd=REPO)
    assert r.returncode == 0
    arch_line = next(line for line in r.stdout.splitlines() if line.startswith("arch: "))
    assert "matryoshka" in arch_line and "topk" in arch_line


BASES = (SAE, ActivationSource, Evaluator, Penalty)


def readme_plugin_section() -> str:
    """README.md's "Writing a plugin" section (up to the next heading)."""
    return (REPO / "README.md").read_text().split("\n## Writing a plugin\n", 1)[1].split("\n## ", 1)[0]


def framework_calls(name: str) -> bool:
    """Whether saefw's own code calls a method ``name`` anywhere (``.name(``): the pipeline, not a test, uses it."""
    pattern = re.compile(rf"\.{re.escape(name)}\(")
    return any(pattern.search(p.read_text()) for p in (REPO / "saefw").rglob("*.py"))


def test_readme_plugin_snippet_is_the_real_api(matryoshka_cls):
    """The README's plugin code, executed with the worked example's imports: the config it shows is the example's,
    every method it defines is one the example really overrides, that a base class declares and that the framework
    calls (a ``loss`` the trainer no longer calls fails here), and it computes what the example computes."""
    blocks = re.findall(r"```python\n(.*?)```", readme_plugin_section(), re.S)
    assert blocks, "no python code in README's Writing a plugin section"
    shown = []
    namespace = {**vars(sys.modules[matryoshka_cls.__module__]),
                 "register": lambda family, name, cfg: lambda cls: shown.append((family, name, cfg, cls)) or cls}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert [(family, name) for family, name, _, _ in shown] == [("arch", "matryoshka")]
    _, name, cfg_cls, cls = shown[0]
    real = entry("arch", name)
    assert [f.name for f in dataclasses.fields(cfg_cls)] == [f.name for f in dataclasses.fields(real.config_cls)]
    methods = [m for m, v in vars(cls).items() if callable(v)]
    assert methods, "the README's class defines no method"
    for method in methods:
        assert method in vars(real.cls), f"README shows {method}, which plugins/matryoshka.py does not define"
        assert any(hasattr(base, method) for base in BASES), f"README shows {method}, no base class has it"
        assert framework_calls(method), f"README shows {method}, which the framework never calls"

    # the README's train_forward on the real plugin's object gives the real terms
    torch.manual_seed(0)
    sae = build("arch", {"name": "matryoshka", "k": 2, "group_fractions": [0.5, 1.0]}, d_in=4, d_sae=8)
    x = torch.randn(16, 4)
    dead = torch.zeros(8, dtype=torch.bool)
    dead[5:] = True
    ours, theirs = cls.train_forward(sae, x, dead), sae.train_forward(x, dead)
    torch.testing.assert_close(ours.mse, theirs.mse)
    torch.testing.assert_close(ours.aux["aux_loss"], theirs.aux["aux_loss"])
    torch.testing.assert_close(ours.f, theirs.f)


def test_readme_names_only_base_methods_the_framework_calls():
    """Every base-class method the section names in backticks (`train_forward`, `eval_batches`, ...) is one the
    framework calls."""
    named = set(re.findall(r"`(\w+)`", readme_plugin_section()))
    api = {n for n in named if any(callable(getattr(base, n, None)) for base in BASES)}
    assert {"train_forward", "train_batches", "eval_batches", "update", "compute"} <= api
    assert not [n for n in sorted(api) if not framework_calls(n)]
