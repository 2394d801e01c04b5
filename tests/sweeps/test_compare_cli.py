"""``python -m saefw.compare``: positional paths and key=value overrides, through the real Hydra app."""

import pytest
from helpers import make_job, read_csv, run_cli
from hydra.core.override_parser.overrides_parser import OverridesParser

from saefw.errors import SaefwError
from saefw.sweeps.command import default_out_dir, hydra_quote, paths_to_override

ODD = ["a b,c", "it's", "x=y[1]", "C:\\dir\\", "a\\'b", "${oops}", "ü{}"]


@pytest.mark.parametrize("path", ODD)
def test_quoted_paths_survive_hydras_grammar(path):
    value = OverridesParser.create().parse_override(f"dirs=[{hydra_quote(path)},{hydra_quote('z')}]").value()
    assert value[1] == "z"
    # Hydra keeps `\${` as written; OmegaConf turns it into a literal `${` when the config is read
    assert value[0] == path.replace("${", "\\${")


def test_bare_paths_become_one_dirs_override(tmp_path):
    (tmp_path / "k=v").mkdir()
    args = ["sweeps/a", "wandb.mode=disabled", "--cfg", "job", str(tmp_path / "k=v"), "-m", "+x.y=1", "runs/b"]
    assert paths_to_override(args) == ["wandb.mode=disabled", "--cfg", "job", "-m", "+x.y=1",
                                       f"dirs=['sweeps/a','{tmp_path / 'k=v'}','runs/b']"]
    assert paths_to_override(["dirs=[a]", "out=x"]) == ["dirs=[a]", "out=x"]
    with pytest.raises(SaefwError, match="either as paths or as dirs"):
        paths_to_override(["a", "dirs=[b]"])


def test_default_output_dir(tmp_path):
    sweep = tmp_path / "sweep"
    run = make_job(sweep, "0_l1", {"l0": 1.0})
    assert default_out_dir([str(sweep)], None) == str(sweep)  # one sweep dir: write into it
    assert default_out_dir([str(sweep)], "elsewhere") == "elsewhere"
    for dirs in ([str(run)], [str(sweep), str(run)]):  # a run dir, or several: a fresh compare dir
        assert default_out_dir(dirs, None).startswith("outputs/compare/")


BASE = {"layer": 1, "site": "resid_post", "model": "m"}


def test_cli_with_odd_paths_and_overrides(tmp_path):
    sweep = tmp_path / "day 1, it's" / "10-00-00"
    make_job(sweep, "0_l1", {**BASE, "arch": "l1", "l0": 30.0, "ce_loss_recovered": 0.8}, ["penalty.coefficient=3"], 0)
    make_job(sweep, "1_l1", {**BASE, "arch": "l1", "l0": 10.0, "ce_loss_recovered": 0.6}, ["penalty.coefficient=9"], 1)
    run = make_job(tmp_path / "runs", "r_topk", {**BASE, "arch": "topk", "l0": 16.0, "ce_loss_recovered": 0.85})
    out = tmp_path / "cmp"
    r = run_cli(str(sweep), str(run), f"out={out}", "wandb.mode=disabled", cwd=tmp_path, module="saefw.compare")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_csv(out / "tradeoff.csv")
    assert [(x["job"], x["status"], x["frontier"]) for x in rows] == [
        ("0_l1", "ok", "True"), ("1_l1", "ok", "True"), ("r_topk", "ok", "True")]
    assert {x["sweep"] for x in rows} == {"day 1, it's/10-00-00", f"{tmp_path.name}/runs"}
    assert "0_l1" in r.stdout and "compare wrote:" in r.stdout
    for name in ("tradeoff.png", "tradeoff.html", "compare.log"):
        assert (out / name).is_file(), name
    assert not (out / ".hydra").exists() and not (out / "wandb").exists()

    # one sweep dir and no out=: the outputs go into the sweep dir, and no stray folder is made
    r = run_cli(str(sweep), "wandb.mode=disabled", cwd=tmp_path, module="saefw.compare")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (sweep / "tradeoff.csv").is_file() and not (tmp_path / "outputs").exists()


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli(str(tmp_path / "missing"), "wandb.mode=disabled", cwd=tmp_path, module="saefw.compare")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: {tmp_path / 'missing'} is not a directory" in r.stderr
    r = run_cli(cwd=tmp_path, module="saefw.compare")
    assert r.returncode == 2 and "error: no directories to compare" in r.stderr
