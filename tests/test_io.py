import json

import pytest
import torch

from saefw.errors import SaefwError
from saefw.io import load_sae, save_sae
from saefw.registry import build, discover


def test_roundtrip_folds_input_scale_and_uses_saelens_names(tmp_path):
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=6, d_sae=12)
    sae.input_scale.fill_(2.5)
    save_sae(sae, tmp_path, {"hook_layer": 3})
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "sae.safetensors"))) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    back = load_sae(tmp_path)
    x = torch.randn(20, 6) * 4
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back(x)[0], sae(x)[0], rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "cfg.json").read_text())["hook_layer"] == 3


def test_corrupt_or_missing_files_give_clear_errors(tmp_path):
    discover()
    with pytest.raises(SaefwError, match="not a saved SAE directory"):
        load_sae(tmp_path)
    save_sae(build("arch", {"name": "l1"}, d_in=4, d_sae=8), tmp_path)
    raw = (tmp_path / "sae.safetensors").read_bytes()
    (tmp_path / "sae.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SaefwError, match="sae.safetensors is missing or corrupt"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(SaefwError, match="cfg.json is corrupt"):
        load_sae(tmp_path)
