"""SAELens interop with the real sae_lens package: saefw directories load in SAELens, SAELens directories load in
saefw, both computing the same latents and reconstructions to 1e-5; options that cannot be reproduced refuse."""
import json

import pytest
import sae_lens
import torch
from helpers import assert_same_function, random_transcoder, set_params, tiny_activations
from sae_lens import SAE
from sae_lens.saes import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    StandardSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata

from saefw.errors import SaefwError
from saefw.io.saved import load_sae, save_sae
from saefw.registry import build, discover

ARCHS = {"l1": ("standard", "StandardSAE"), "gated": ("gated", "GatedSAE"), "topk": ("topk", "TopKSAE"),
         "jumprelu": ("jumprelu", "JumpReLUSAE"), "batchtopk": ("jumprelu", "JumpReLUSAE")}
D_IN, D_SAE = 8, 24


def random_saefw(arch: str, seed: int = 0):
    """A saefw SAE with non-trivial random weights (and input_scale ≠ 1, folded on save)."""
    discover()
    torch.manual_seed(seed)
    sae = build("arch", {"name": arch, **({"k": 5} if arch in ("topk", "batchtopk") else {})}, d_in=D_IN, d_sae=D_SAE)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name in ("r_mag", "b_gate", "b_mag", "b_enc") else 1.0))
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.rand(D_SAE).mul(2).add(0.1).log())
        if arch == "batchtopk":
            sae.threshold.fill_(1.2)
    sae.input_scale.fill_(1.7)
    return sae.eval()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_saefw_directory_loads_in_saelens_and_agrees(tmp_path, arch):
    sae = random_saefw(arch)
    save_sae(sae, tmp_path, {"model_name": "m", "hook_name": "blocks.2.hook_resid_post", "context_size": 32})
    theirs = SAE.load_from_disk(tmp_path)
    assert isinstance(theirs, getattr(sae_lens, ARCHS[arch][1]))
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post" and theirs.cfg.metadata.model_name == "m"
    x = torch.randn(200, D_IN) * 3
    f = assert_same_function(sae, theirs, x)
    assert 0 < (f > 0).float().mean() < 1  # latents both on and off: the comparison means something
    assert_same_function(load_sae(tmp_path), theirs, x)
    if arch in ("topk", "batchtopk"):
        assert theirs.cfg.k == 5 if arch == "topk" else theirs.cfg.metadata.training_architecture == "batchtopk"


def test_topk_cfg_json_layout(tmp_path):
    save_sae(random_saefw("topk"), tmp_path, {"model_name": "m", "hook_name": "blocks.2.hook_resid_post"})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert {k: v for k, v in cfg.items() if k != "metadata"} == {
        "architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none", "k": 5,
        "rescale_acts_by_decoder_norm": False}
    assert cfg["metadata"] == {"sae_lens_version": "6.54.12", "sae_lens_training_version": None, "model_name": "m",
                               "hook_name": "blocks.2.hook_resid_post",
                               "saefw": {"format": 2, "architecture": "topk",
                                         "arch_config": {"k": 5, "k_aux": None, "aux_coefficient": 1 / 32}}}


def test_topk_token_whose_kth_preactivation_is_negative(tmp_path):
    """Both apply ReLU after selection: such a token fires fewer than k latents, in saefw and SAELens alike."""
    sae = random_saefw("topk")
    set_params(sae, b_enc=torch.full((D_SAE,), -2.0), b_dec=torch.zeros(D_IN))
    save_sae(sae, tmp_path)
    theirs = SAE.load_from_disk(tmp_path)
    x = torch.randn(100, D_IN) * 0.5
    z = sae.pre_acts(x * sae.input_scale)
    assert (z.topk(5).values[:, -1] < 0).any()
    f = assert_same_function(sae, theirs, x)
    assert ((f > 0).sum(-1) < 5).any()


@pytest.mark.parametrize("arch", ["jumprelu", "batchtopk"])
def test_threshold_equality_is_off_in_both(tmp_path, arch):
    """A pre-activation exactly equal to its threshold does not fire (strict z > θ in both)."""
    sae = random_saefw(arch)
    sae.input_scale.fill_(1.0)
    w = torch.zeros(D_IN, D_SAE)
    w[0, :] = 1.0  # z_i = x_0 exactly
    set_params(sae, W_enc=w, b_enc=torch.zeros(D_SAE), b_dec=torch.zeros(D_IN))
    if arch == "jumprelu":
        set_params(sae, log_threshold=torch.full((D_SAE,), 2.0).log())
    else:
        sae.threshold.fill_(2.0)
    save_sae(sae, tmp_path)
    theirs = SAE.load_from_disk(tmp_path)
    x = torch.zeros(3, D_IN)
    x[:, 0] = torch.tensor([2.0, 2.5, 1.0])
    assert theirs.threshold[0].item() == 2.0 and sae.threshold[0].item() == 2.0
    f = assert_same_function(sae, theirs, x)
    assert (f[0] == 0).all() and (f[1] == 2.5).all() and (f[2] == 0).all()


def _randomise(sl_sae, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in sl_sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name in ("r_mag", "b_gate", "b_mag", "b_enc") else 1.0))
            if name == "threshold":
                p.copy_(torch.rand_like(p) + 0.2)
    return sl_sae


def _saelens_inference(arch_cfg, **kw):
    meta = SAEMetadata(model_name="m", hook_name="blocks.1.hook_resid_post")
    return _randomise(SAE.from_dict(arch_cfg(d_in=D_IN, d_sae=D_SAE, metadata=meta, **kw).to_dict()))


@pytest.mark.parametrize("make, arch", [
    (lambda: _saelens_inference(StandardSAEConfig), "l1"),
    (lambda: _saelens_inference(StandardSAEConfig, apply_b_dec_to_input=False), "l1"),
    (lambda: _saelens_inference(GatedSAEConfig), "gated"),
    (lambda: _saelens_inference(GatedSAEConfig, apply_b_dec_to_input=False), "gated"),
    (lambda: _saelens_inference(TopKSAEConfig, k=4), "topk"),
    (lambda: _saelens_inference(TopKSAEConfig, k=4, rescale_acts_by_decoder_norm=True,
                                apply_b_dec_to_input=False), "topk"),
    (lambda: _saelens_inference(JumpReLUSAEConfig), "jumprelu"),
    (lambda: _randomise(StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))), "l1"),
    (lambda: _randomise(GatedTrainingSAE(GatedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))), "gated"),
    (lambda: _randomise(TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))), "topk"),
    (lambda: _randomise(JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))), "jumprelu"),
], ids=["standard", "standard-no-bdec-in", "gated", "gated-no-bdec-in", "topk", "topk-rescaled-no-bdec-in",
        "jumprelu", "standard-training", "gated-training", "topk-training-rescaled", "jumprelu-training"])
def test_saelens_directory_loads_in_saefw_and_agrees(tmp_path, make, arch):
    theirs = make()
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.plugin_name == arch
    reloaded = SAE.load_from_disk(tmp_path)  # what SAELens users get from this directory
    f = assert_same_function(ours, reloaded, torch.randn(200, D_IN) * 2)
    assert 0 < (f > 0).float().mean() < 1


def test_saelens_batchtopk_loads_as_batchtopk_computing_saelens_inference(tmp_path):
    """SAELens saves a BatchTopK SAE for inference as a JumpReLU with one threshold (save_inference_model);
    its training save_model keeps topk_threshold and the decoder-norm rescaling. Both load as saefw batchtopk
    and agree with SAELens's inference JumpReLU."""
    sl = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    _randomise(sl)
    sl.topk_threshold = torch.tensor(1.1, dtype=torch.double)
    sl.save_inference_model(tmp_path / "inference")
    sl.save_model(tmp_path / "training")
    theirs = SAE.load_from_disk(tmp_path / "inference")
    assert isinstance(theirs, JumpReLUSAE)
    x = torch.randn(200, D_IN) * 2
    for folder in ("inference", "training"):
        ours = load_sae(tmp_path / folder)
        assert ours.plugin_name == "batchtopk" and ours.k == 4
        f = assert_same_function(ours, theirs, x)
        assert 0 < (f > 0).float().mean() < 1


def test_saefw_fields_survive_a_saelens_resave(tmp_path):
    """SAELens keeps the metadata block when it re-saves, so saefw still knows a batchtopk is a batchtopk."""
    sae = random_saefw("batchtopk")
    save_sae(sae, tmp_path / "ours")
    SAE.load_from_disk(tmp_path / "ours").save_model(tmp_path / "resaved")
    back = load_sae(tmp_path / "resaved")
    assert back.plugin_name == "batchtopk" and back.k == 5
    assert_same_function(back, SAE.load_from_disk(tmp_path / "resaved"), torch.randn(50, D_IN))


def test_unregistered_plugin_arch_falls_back_to_its_saelens_equivalent(tmp_path, caplog):
    save_sae(random_saefw("topk"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["metadata"]["saefw"]["architecture"] = "my_unloaded_plugin"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(tmp_path).plugin_name == "topk"
    assert "my_unloaded_plugin" in caplog.text and "not registered" in caplog.text
    cfg["architecture"] = "my_unloaded_plugin"  # no SAELens equivalent to fall back to
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaefwError, match="arch='my_unloaded_plugin' is not registered"):
        load_sae(tmp_path)


@pytest.mark.parametrize("key, value, message", [
    ("normalize_activations", "layer_norm", "normalize_activations='layer_norm' is not supported"),
    ("normalize_activations", "constant_norm_rescale", "normalize_activations='constant_norm_rescale'"),
    ("normalize_activations", "expected_average_only_in", "fold the normalisation into the weights"),
    ("reshape_activations", "hook_z", "reshape_activations='hook_z' is not supported"),
    ("architecture", "transcoder", "architecture='transcoder' is not supported; saefw reads the SAELens "
                                   "architectures batchtopk, gated, jumprelu, jumprelu_skip_transcoder, "
                                   "jumprelu_transcoder, standard, topk"),
])
def test_options_saefw_cannot_reproduce_are_refused(tmp_path, key, value, message):
    _saelens_inference(StandardSAEConfig).save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg[key] = value
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaefwError, match=message):
        load_sae(tmp_path)


def test_unknown_tensors_are_refused(tmp_path):
    sl = _saelens_inference(StandardSAEConfig)
    sl.save_model(tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    save_file({**tensors, "finetuning_scaling_factor": torch.ones(D_SAE)}, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(SaefwError, match=r"also has \['finetuning_scaling_factor'\]"):
        load_sae(tmp_path)


def test_cli_trained_run_directories_load_in_saelens(trained_runs, tiny_model):
    """Every arch, trained through the real CLI on the tiny Llama: SAELens loads the run dir and agrees with
    saefw on real activations of the hooked layer."""
    x = tiny_activations(tiny_model, layer=1, site="resid_post")
    for arch, run_dir in trained_runs.items():
        theirs = SAE.load_from_disk(run_dir)
        assert isinstance(theirs, getattr(sae_lens, ARCHS[arch][1])), arch
        assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
        assert theirs.cfg.metadata.model_name == str(tiny_model)
        f = assert_same_function(load_sae(run_dir), theirs, x)
        assert (f > 0).any(), arch


# --- transcoders: SAELens's jumprelu_transcoder and jumprelu_skip_transcoder, d_in ≠ d_out ---
TC_D_OUT = 6
TC_META = {"model_name": "m", "hook_name": "blocks.2.ln2.hook_normalized", "hook_name_out": "blocks.2.hook_mlp_out"}
TRANSCODERS = {"transcoder": JumpReLUTranscoder, "skip_transcoder": JumpReLUSkipTranscoder}


def random_saefw_transcoder(arch: str, seed: int = 0):
    """A saefw jumprelu (skip) transcoder with random weights (a large W_skip), thresholds in [0.1, 2.1] and both
    scales ≠ 1."""
    return random_transcoder(arch, "jumprelu", D_IN, D_SAE, TC_D_OUT, seed, skip_scale=3.0)


def assert_same_transcoder(ours, theirs, x: torch.Tensor) -> torch.Tensor:
    """Same latents, same decode(f) (the dictionary's part: SAELens's decode has no skip term) and the same whole
    output (SAELens's forward, which adds x W_skipᵀ for a skip transcoder; saefw's forward); returns the latents."""
    f = assert_same_function(ours, theirs, x)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(f, x), theirs(x), atol=1e-5, rtol=1e-5)
    return f


@pytest.mark.parametrize("arch", list(TRANSCODERS))
def test_saefw_jumprelu_transcoder_loads_in_saelens_and_agrees(tmp_path, arch):
    sae = random_saefw_transcoder(arch)
    save_sae(sae, tmp_path, TC_META)
    theirs = SAE.load_from_disk(tmp_path)
    assert type(theirs) is TRANSCODERS[arch]
    assert (theirs.cfg.d_in, theirs.cfg.d_sae, theirs.cfg.d_out) == (D_IN, D_SAE, TC_D_OUT)
    assert theirs.cfg.metadata.hook_name_out == "blocks.2.hook_mlp_out"
    x = torch.randn(200, D_IN) * 2
    f = assert_same_transcoder(sae, theirs, x)
    assert 0 < (f > 0).float().mean() < 1
    if arch == "skip_transcoder":  # the skip term is in the comparison, not negligible
        with torch.no_grad():
            skip = theirs(x) - theirs.decode(f)
        assert skip.norm() > 0.2 * theirs(x).norm()
        torch.testing.assert_close(theirs.W_skip, sae.W_skip.detach() * 1.7 / 0.6)
    assert_same_transcoder(load_sae(tmp_path), theirs, x)


def _saelens_transcoder(arch: str, seed: int = 0, nonpositive_thresholds: bool = False):
    config = {"transcoder": JumpReLUTranscoderConfig, "skip_transcoder": JumpReLUSkipTranscoderConfig}[arch]
    meta = SAEMetadata(**TC_META)
    sl = TRANSCODERS[arch](config(d_in=D_IN, d_sae=D_SAE, d_out=TC_D_OUT, apply_b_dec_to_input=False, metadata=meta))
    _randomise(sl, seed)
    if nonpositive_thresholds:  # SAELens's relu(z)·H(z − θ) is relu(z) there
        with torch.no_grad():
            sl.threshold[:4] = torch.tensor([-0.5, 0.0, -2.0, 0.0])
    return sl.eval()


@pytest.mark.parametrize("nonpositive", [False, True], ids=["thresholds", "nonpositive-thresholds"])
@pytest.mark.parametrize("arch", list(TRANSCODERS))
def test_saelens_jumprelu_transcoder_loads_in_saefw_and_agrees(tmp_path, arch, nonpositive):
    theirs = _saelens_transcoder(arch, nonpositive_thresholds=nonpositive)
    if arch == "skip_transcoder":
        assert theirs.W_skip.abs().sum() > 0  # randomised, not SAELens's zero init
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.plugin_name == arch and ours.activation == "jumprelu"
    assert (ours.d_in, ours.d_sae, ours.d_out) == (D_IN, D_SAE, TC_D_OUT)
    x = torch.randn(200, D_IN) * 2
    f = assert_same_transcoder(ours, theirs, x)
    assert 0 < (f > 0).float().mean() < 1
    if nonpositive:  # the latents with θ ≤ 0 fire wherever z > 0
        assert ((f[:, :4] > 0) == (ours.pre_acts(x)[:, :4] > 0)).all() and (f[:, :4] > 0).any()
    assert_same_transcoder(ours, SAE.load_from_disk(tmp_path), x)


def test_saelens_transcoder_with_b_dec_applied_to_the_input_is_refused(tmp_path):
    _saelens_transcoder("transcoder").save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["apply_b_dec_to_input"] = True
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SaefwError, match="apply_b_dec_to_input=True is not supported: a transcoder's b_dec"):
        load_sae(tmp_path)
