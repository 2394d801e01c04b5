"""saefw's own side of saved SAE directories: round trips, provenance, errors, the old format, sae_metadata."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saefw.errors import SaefwError
from saefw.io.saved import load_sae, parse_hook_name, sae_metadata, save_sae
from saefw.registry import build, discover
from saefw.sources.base import ActivationSource

HF_PROVENANCE = {"model_name": "/models/tiny", "hook_name": "blocks.3.hook_mlp_out", "hook_layer": 3,
                 "site": "mlp_out", "context_size": 64, "dataset_path": "factbook", "prepend_bos": True,
                 "penalty": "l1_decoder_norm", "seed": 0}


def test_roundtrip_folds_input_scale_and_uses_saelens_names(tmp_path):
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=6, d_sae=12)
    sae.input_scale.fill_(2.5)
    save_sae(sae, tmp_path, {"hook_layer": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]  # no .partial
    assert set(load_file(str(tmp_path / "sae_weights.safetensors"))) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    back = load_sae(tmp_path)
    assert back.input_scale.item() == 1.0 and not back.training
    x = torch.randn(20, 6) * 4
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back(x)[0], sae(x)[0], rtol=1e-5, atol=1e-5)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["metadata"]["hook_layer"] == 3
    assert cfg["metadata"]["saefw"]["architecture"] == "l1"


class _ReportsTooMuch(ActivationSource):
    """A third-party source whose describe() reports keys that name the SAE's own fields."""

    def describe(self):
        return {"source": "mine", "d_in": 999, "d_sae": 1, "architecture": "topk", "k": 1, "arch_config": {},
                "saefw": "mine", "sae_lens_version": "0.1", "training_architecture": "nope",
                "normalize_activations": "layer_norm"}


def test_provenance_never_overwrites_the_saes_own_fields(tmp_path):
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "gated"}, d_in=6, d_sae=12)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    save_sae(sae, tmp_path, _ReportsTooMuch(None, None).describe())
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["normalize_activations"]) == ("gated", 6, 12, "none")
    meta = cfg["metadata"]
    assert meta["saefw"]["architecture"] == "gated" and meta["sae_lens_version"] == "6.54.12"
    assert "training_architecture" not in meta  # gated is not a batchtopk
    # the source's own values are kept, renamed where they named a reserved field
    assert (meta["d_in"], meta["architecture"], meta["source_saefw"], meta["source_sae_lens_version"],
            meta["source_training_architecture"]) == (999, "topk", "mine", "0.1", "nope")
    back = load_sae(tmp_path)
    x = torch.randn(30, 6)
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    from sae_lens import SAE

    theirs = SAE.load_from_disk(tmp_path)
    torch.testing.assert_close(theirs.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)


def _write_format_1(folder, sae, **provenance):
    """A run directory exactly as saefw wrote it before the SAELens layout (flat cfg.json, sae.safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in sae.state_dict().items() if k != "input_scale"}
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {"architecture": sae.plugin_name, "d_in": sae.d_in, "d_sae": sae.d_sae,
           "arch_config": {k: v for k, v in vars(sae.cfg).items()}, "dtype": "float32",
           "normalize_activations": "none", **provenance}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))


@pytest.mark.parametrize("arch", ["l1", "topk", "jumprelu"])
def test_format_1_directories_still_load(tmp_path, arch):
    discover()
    torch.manual_seed(1)
    sae = build("arch", {"name": arch, **({"k": 3} if arch == "topk" else {})}, d_in=6, d_sae=12)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    _write_format_1(tmp_path, sae, **HF_PROVENANCE)
    back = load_sae(tmp_path)
    assert back.plugin_name == arch
    x = torch.randn(30, 6)
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    torch.testing.assert_close(back.decode(sae.encode(x)), sae.decode(sae.encode(x)))
    assert sae_metadata(tmp_path) == {"model": "/models/tiny", "layer": 3, "site": "mlp_out",
                                      "hook_name": "blocks.3.hook_mlp_out", "context_size": 64,
                                      "corpus": "factbook", "prepend_bos": True, "penalty": "l1_decoder_norm",
                                      "source": None, "site_out": None, "layers": None}


def test_sae_metadata_is_the_same_for_saefw_and_saelens_directories(tmp_path):
    discover()
    save_sae(build("arch", {"name": "l1"}, d_in=4, d_sae=8), tmp_path / "ours", HF_PROVENANCE)
    assert sae_metadata(tmp_path / "ours") == {
        "model": "/models/tiny", "layer": 3, "site": "mlp_out", "hook_name": "blocks.3.hook_mlp_out",
        "context_size": 64, "corpus": "factbook", "prepend_bos": True, "penalty": "l1_decoder_norm",
                                      "source": None, "site_out": None, "layers": None}
    from sae_lens import SAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(model_name="gpt2", hook_name="blocks.6.hook_resid_pre", context_size=128,
                       dataset_path="monology/pile", prepend_bos=False)
    SAE.from_dict(StandardSAEConfig(d_in=4, d_sae=8, metadata=meta).to_dict()).save_model(tmp_path / "theirs")
    assert sae_metadata(tmp_path / "theirs") == {
        "model": "gpt2", "layer": 6, "site": "resid_pre", "hook_name": "blocks.6.hook_resid_pre",
        "context_size": 128, "corpus": "monology/pile", "prepend_bos": False, "penalty": None, "source": None, "site_out": None, "layers": None}


def test_parse_hook_name():
    assert parse_hook_name("blocks.12.hook_resid_post") == (12, "resid_post")
    assert parse_hook_name("blocks.0.hook_attn_out") == (0, "attn_out")
    assert parse_hook_name("blocks.3.hook_mlp_out") == (3, "mlp_out")
    assert parse_hook_name("blocks.5.hook_resid_mid") == (5, None)  # no saefw site there
    assert parse_hook_name("blocks.2.attn.hook_z") == (2, None)
    assert parse_hook_name("hook_embed") == (None, None)
    assert parse_hook_name(None) == (None, None)


def test_corrupt_or_missing_files_give_clear_errors(tmp_path):
    discover()
    with pytest.raises(SaefwError, match="not a saved SAE directory"):
        load_sae(tmp_path)
    with pytest.raises(SaefwError, match="not a saved SAE directory"):
        sae_metadata(tmp_path)
    save_sae(build("arch", {"name": "l1"}, d_in=4, d_sae=8), tmp_path)
    raw = (tmp_path / "sae_weights.safetensors").read_bytes()
    (tmp_path / "sae_weights.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SaefwError, match="sae_weights.safetensors is missing or corrupt"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(SaefwError, match="cfg.json is corrupt"):
        load_sae(tmp_path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    discover()
    save_sae(build("arch", {"name": "l1"}, d_in=4, d_sae=8), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_sae"] = 16
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaefwError, match="do not fit arch=l1 with d_in=4, d_sae=16"):
        load_sae(tmp_path)
