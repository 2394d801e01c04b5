"""The run summary names what a dictionary reads: one site, a transcoder's two sites, a crosscoder's layers."""
import pytest

from saefw.app.summary import print_summary

BASE = {"arch": "x", "penalty": "none", "site": "mlp_out", "layer": 6, "wall_seconds": 12.0}


@pytest.mark.parametrize("extra, line", [
    ({}, "layer / site  6 / mlp_out"),
    ({"input_site": "mlp_in"}, "layer / sites  6 / mlp_in → mlp_out"),
    ({"layers": [5, 6, 7], "site": "resid_post"}, "layers / site  5, 6, 7 / resid_post"),
])
def test_the_summary_names_the_sites_read_and_written(capsys, tmp_path, extra, line):
    print_summary({**BASE, **extra}, tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert [ln for ln in out if ln.startswith("layer")] == [line]
