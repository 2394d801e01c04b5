"""The worked plugin in plugins/ (a source reading a memory-mapped .npy of activations): the real CLI finding it in a
working directory that holds a copy of plugins/ and training on it, its errors on bad files, and README's
"Writing a plugin" code being the example's real code."""
import dataclasses
import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, run_cli

from saefw.arch.base import SAE
from saefw.errors import SaefwError
from saefw.evals.base import Evaluator
from saefw.penalties.base import Penalty
from saefw.registry import build, discover, entry
from saefw.sources.base import ActivationSource, RunSpec

D_IN, N_ROWS, EVAL_ROWS = 8, 3000, 500


@pytest.fixture(scope="module")
def npy_cls():
    discover(plugin_dirs=[REPO])  # imports plugins/npy_file.py as the real module plugins.npy_file
    cls = entry("source", "npy_file").cls
    assert cls.__module__ == "plugins.npy_file"
    return cls


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    """Sparse non-negative sums of 16 fixed directions in R^8, saved as a float32 .npy."""
    g = np.random.default_rng(0)
    dirs = g.normal(size=(16, D_IN))
    x = ((g.random((N_ROWS, 16)) < 0.2) * g.uniform(0.5, 1.5, (N_ROWS, 16))) @ dirs
    path = tmp_path_factory.mktemp("npy") / "acts.npy"
    np.save(path, x.astype(np.float32))
    return path


def _source(path, train_tokens=0, **cfg):
    return build("source", {"name": "npy_file", "path": str(path), **cfg},
                 spec=RunSpec(seed=0, train_tokens=train_tokens))


def test_batches_are_the_arrays_rows(npy_cls, acts):
    x = np.load(acts)
    s = _source(acts, train_tokens=1000, eval_rows=EVAL_ROWS)
    assert s.d_in == D_IN
    held_out = torch.cat(list(s.eval_batches(128)))
    torch.testing.assert_close(held_out, torch.from_numpy(x[-EVAL_ROWS:]))  # the last rows, in order
    train = list(s.train_batches(128))
    assert [len(b) for b in train] == [128] * 7  # exactly train_tokens // batch_size batches
    rows = {tuple(r) for r in x[:-EVAL_ROWS].tolist()}
    assert all(tuple(r) in rows for b in train for r in b.tolist())  # never a held-out row
    again = list(_source(acts, train_tokens=1000, eval_rows=EVAL_ROWS).train_batches(128))
    assert all(torch.equal(a, b) for a, b in zip(train, again))  # seeded


def test_bad_files_name_the_problem(npy_cls, tmp_path):
    with pytest.raises(SaefwError, match=r"source.path='.*missing.npy': no such file"):
        _source(tmp_path / "missing.npy")
    np.save(tmp_path / "flat.npy", np.zeros(10, np.float32))
    with pytest.raises(SaefwError, match=r"shape \(10,\); expected 2-D"):
        _source(tmp_path / "flat.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(SaefwError, match="is not a readable .npy array"):
        _source(tmp_path / "junk.npy")
    np.save(tmp_path / "small.npy", np.zeros((10, 4), np.float32))
    with pytest.raises(SaefwError, match=r"source.eval_rows=10 must be between 1 and 9 \(the array has 10 rows\)"):
        _source(tmp_path / "small.npy", eval_rows=10)


def test_cli_finds_and_trains_on_the_copied_plugin(tmp_path, acts):
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")  # a user's working directory with the example
    run = tmp_path / "run"
    r = run_cli("source=npy_file", f"source.path={acts}", f"source.eval_rows={EVAL_ROWS}", "arch=topk",
                "target_l0=4", "evaluators=[l0,reconstruction]", "total_tokens=65536", "train.batch_size=256",
                "train.eval_every_steps=0", "expansion_factor=4", "wandb.mode=disabled",
                "trainer.enable_progress_bar=false", f"hydra.run.dir={run}", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert (m["source"], m["d_in"], m["d_sae"]) == ("npy_file", D_IN, 32)
    assert m["l0"] == pytest.approx(4.0) and 0.5 < m["explained_variance"] <= 1.0

    from saefw.io.saved import load_sae

    x = torch.from_numpy(np.load(acts)[-EVAL_ROWS:])
    with torch.no_grad():
        sae = load_sae(run)
        x_hat = sae.decode(sae.encode(x))
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()  # the held-out rows, by hand
    assert m["explained_variance"] == pytest.approx(ev.item(), abs=1e-4)


def test_without_the_plugins_folder_the_source_is_unknown(tmp_path):
    r = run_cli("source=npy_file", "--cfg", "job", cwd=tmp_path)
    assert r.returncode != 0 and "Could not find 'source/npy_file'" in r.stderr


def test_help_from_the_repository_root_lists_the_example():
    r = run_cli("--help", cwd=REPO)
    assert r.returncode == 0
    source_line = next(line for line in r.stdout.splitlines() if line.startswith("source: "))
    assert "npy_file" in source_line and "hf" in source_line
    assert "the .npy file of activations" in r.stdout


BASES = (SAE, ActivationSource, Evaluator, Penalty)


def readme_plugin_section() -> str:
    """README.md's "Writing a plugin" section (up to the next heading)."""
    return (REPO / "README.md").read_text().split("\n## Writing a plugin\n", 1)[1].split("\n## ", 1)[0]


def framework_calls(name: str) -> bool:
    """Whether saefw's own code calls a method ``name`` anywhere (``.name(``): the pipeline, not a test, uses it."""
    pattern = re.compile(rf"\.{re.escape(name)}\(")
    return any(pattern.search(p.read_text()) for p in (REPO / "saefw").rglob("*.py"))


def test_readme_plugin_snippet_is_the_real_api(npy_cls, acts):
    """The README's plugin code, executed with the worked example's imports: the config it shows is the example's,
    every method it defines is one the example really overrides, that a base class declares and that the framework
    calls (a ``train_batches`` the trainer no longer calls fails here), and it yields what the example yields."""
    blocks = re.findall(r"```python\n(.*?)```", readme_plugin_section(), re.S)
    assert blocks, "no python code in README's Writing a plugin section"
    shown = []
    namespace = {**vars(sys.modules[npy_cls.__module__]),
                 "register": lambda family, name, cfg: lambda cls: shown.append((family, name, cfg, cls)) or cls}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert [(family, name) for family, name, _, _ in shown] == [("source", "npy_file")]
    _, name, cfg_cls, cls = shown[0]
    real = entry("source", name)
    assert [f.name for f in dataclasses.fields(cfg_cls)] == [f.name for f in dataclasses.fields(real.config_cls)]
    methods = [m for m, v in vars(cls).items() if callable(v)]
    assert methods, "the README's class defines no method"
    for method in methods:
        assert method in vars(real.cls), f"README shows {method}, which plugins/npy_file.py does not define"
        assert any(hasattr(base, method) for base in BASES), f"README shows {method}, no base class has it"
        assert framework_calls(method), f"README shows {method}, which the framework never calls"

    # the README's class on the example's config yields the example's batches
    cfg, spec = cfg_cls(path=str(acts), eval_rows=EVAL_ROWS), RunSpec(seed=3, train_tokens=600)
    ours, theirs = cls(cfg, spec), real.cls(cfg, spec)
    assert ours.d_in == theirs.d_in == D_IN
    for a, b in zip(ours.train_batches(100), theirs.train_batches(100), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(ours.eval_batches(128), theirs.eval_batches(128), strict=True):
        torch.testing.assert_close(a, b)


def test_readme_names_only_base_methods_the_framework_calls():
    """Every base-class method the section names in backticks (`train_forward`, `eval_batches`, ...) is one the
    framework calls."""
    named = set(re.findall(r"`(\w+)`", readme_plugin_section()))
    api = {n for n in named if any(callable(getattr(base, n, None)) for base in BASES)}
    assert {"train_forward", "train_batches", "eval_batches", "update", "compute"} <= api
    assert not [n for n in sorted(api) if not framework_calls(n)]
