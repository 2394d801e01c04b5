"""The crosscoder layer profile (table, summary, figure) on a hand-set crosscoder."""
import json

import pytest
import torch
from helpers import read_csv

from saefw.errors import SaefwError
from saefw.registry import build, discover
from saefw.relations.layer_profile import layer_profile, write_layer_profile


def _hand_set():
    """Three layers of width 2; latent 0 only at the first layer, 1 only at the last, 2 spread evenly, 3 mostly
    (0.7) at the middle one, 4 with no decoder."""
    discover()
    sae = build("arch", {"name": "crosscoder"}, d_in=6, d_sae=5, n_layers=3)
    w = torch.tensor([[3.0, 4.0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0, 2.0],
                      [1.0, 0, 0, 1.0, 0.6, 0.8],
                      [0, 0.2, 0.7, 0, 0, 0.1],
                      [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        sae.W_dec.copy_(w * 2.0)
        sae.layer_scales.fill_(2.0)  # profiles are in raw units: W_dec / scale
    return sae


def test_profile_numbers():
    p = layer_profile(_hand_set())
    torch.testing.assert_close(p["norms"][:4], torch.tensor([[5.0, 0, 0], [0, 0, 2.0], [1.0, 1.0, 1.0],
                                                             [0.2, 0.7, 0.1]]))
    torch.testing.assert_close(p["fractions"][3], torch.tensor([0.2, 0.7, 0.1]))
    assert (p["top"][0], p["top"][1], p["top"][3]) == (0, 2, 1)
    assert p["shared"].tolist() == [False, False, True, False, False]
    assert p["zero"].tolist() == [False, False, False, False, True]
    torch.testing.assert_close(p["fractions"][4], torch.zeros(3))


def test_table_summary_and_figure(tmp_path):
    paths = write_layer_profile(_hand_set(), [4, 8, 12], tmp_path / "out")
    rows = read_csv(paths.csv)
    assert list(rows[0]) == ["latent", "norm_L4", "norm_L8", "norm_L12", "fraction_L4", "fraction_L8",
                             "fraction_L12", "top_layer", "top_share", "class"]
    assert [r["class"] for r in rows] == ["L4", "L12", "shared", "L8", "zero"]
    assert [r["top_layer"] for r in rows if r["class"] != "shared"][:3] == ["4", "12", "8"]
    assert float(rows[0]["norm_L4"]) == pytest.approx(5.0) and float(rows[3]["fraction_L8"]) == pytest.approx(0.7)
    summary = json.loads(paths.summary.read_text())
    assert summary["format"] == "saefw.layer_profile/1" and summary["layers"] == [4, 8, 12]
    assert summary["counts"] == {"shared": 1, "L4": 1, "L8": 1, "L12": 1, "zero": 1}
    assert summary["n_latents"] == 5 and summary["shared_above"] == 0.6
    assert paths.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["layer_profile.csv", "layer_profile.json",
                                                                    "layer_profile.png"]


def test_threshold_and_bad_inputs(tmp_path):
    p = layer_profile(_hand_set(), shared_above=0.75)
    assert p["shared"].tolist() == [False, False, True, True, False]  # 0.7 ≤ 0.75: latent 3 now shared
    with pytest.raises(SaefwError, match="names 2 layers, but the SAE writes 3"):
        write_layer_profile(_hand_set(), [4, 8], tmp_path)
    with pytest.raises(SaefwError, match="twice"):
        write_layer_profile(_hand_set(), [4, 4, 8], tmp_path)
    sae = build("arch", {"name": "l1"}, d_in=4, d_sae=8)
    with pytest.raises(SaefwError, match="arch=crosscoder"):
        layer_profile(sae)
