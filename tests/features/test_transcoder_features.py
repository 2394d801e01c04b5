"""``saefw.features`` and ``saefw.steer`` on a transcoder (reads the MLP's input, writes its output), against
references written here with plain forward hooks on the tiny Llama's MLP: the latents are those of the MLP's
input, the logit lens is W_U · W_dec,i, steering edits the MLP's output. Crosscoders are refused clearly."""
import json

import pytest
import torch
from feature_helpers import copy_sae, features_cfg
from helpers import run_cli
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from saefw.errors import SaefwError
from saefw.features import feature_store as store
from saefw.io.saved import load_sae, save_sae

LAYER = 1
TRAIN = [f"layer={LAYER}", "total_tokens=3000", "train.batch_size=256", "source.context_size=32",
         "source.eval_contexts=6", "expansion_factor=4", "wandb.mode=disabled", "arch=transcoder", "arch.k=8",
         "site=mlp_out", "source.input_site=mlp_in"]
IN_HOOK, OUT_HOOK = f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    """A tiny transcoder trained through the real CLI, then ``python -m saefw.features`` on it."""
    trained = tmp_path_factory.mktemp("transcoder") / "run"
    r = run_cli(f"model={tiny_model}", *TRAIN, f"hydra.run.dir={trained}", cwd=trained.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(f"run={trained}", "n_tokens=600", "top_n=5", cwd=trained.parent, module="saefw.features")
    assert r.returncode == 0, r.stderr[-3000:]
    return trained, r


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()


@torch.no_grad()
def mlp_io(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of block LAYER's MLP [N, T, d], captured by hand with one forward hook."""
    seen = {}

    def hook(module, args, out):
        seen["x"], seen["y"] = args[0].detach(), out.detach()

    handle = model.model.layers[LAYER].mlp.register_forward_hook(hook)
    try:
        model(tokens.long())
    finally:
        handle.remove()
    return seen["x"], seen["y"]


def test_the_features_command_reads_the_input_site_and_names_both(run):
    trained, r = run
    assert f"hook point      reads {IN_HOOK} → writes {OUT_HOOK}" in r.stdout
    cfg = json.loads((trained / "cfg.json").read_text())["metadata"]
    assert (cfg["hook_name"], cfg["site"], cfg["hook_name_out"], cfg["site_out"]) == (IN_HOOK, "mlp_in", OUT_HOOK,
                                                                                      "mlp_out")
    meta = store.read_meta(trained / "features")["sae"]
    assert (meta["hook_name"], meta["site"], meta["hook_name_out"], meta["site_out"]) == (IN_HOOK, "mlp_in",
                                                                                          OUT_HOOK, "mlp_out")
    index = (trained / "dashboard" / "data" / "index.js").read_text()
    run_info = json.loads(index[index.index("(") + 1: index.rindex(")")])["run"]
    assert run_info["hooks"] == f"reads {IN_HOOK} → writes {OUT_HOOK}" and run_info["hook_name_out"] == OUT_HOOK
    assert "of the output direction at " in (trained / "dashboard" / "index.html").read_text()


def test_activations_are_the_encoding_of_the_mlp_input(run, model):
    trained, _ = run
    data, sae = store.load(trained), load_sae(trained)
    x, y = mlp_io(model, data.tokens)
    with torch.no_grad():
        f = sae.encode(x[:, 1:])  # BOS is never scored
        f_out = sae.encode(y[:, 1:])  # what a scan of the output site would have given
    flat = f.reshape(-1, sae.d_sae)
    torch.testing.assert_close(data.stats["max_act"], flat.max(0).values, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(data.stats["mean_act"], flat.mean(0), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(data.stats["max_act"], f_out.reshape(-1, sae.d_sae).max(0).values, atol=1e-2)
    # the best context of every live feature holds its max activation at the recorded position
    live = (data.top["context"][:, 0] >= 0).nonzero().flatten()
    ctx, pos = data.top["context"][live, 0], data.top["position"][live, 0]
    torch.testing.assert_close(data.top["value"][live, 0], f[ctx, pos - 1, live], atol=1e-4, rtol=1e-4)
    assert data.meta["scan"]["from_store"] > 0  # the held-out store of the input site was read, and agreed


def test_the_logit_lens_is_the_unembedding_of_the_decoder_rows(run, model):
    trained, _ = run
    data, sae = store.load(trained), load_sae(trained)
    assert sae.W_dec.shape == (sae.d_sae, sae.d_out)
    W_U = model.get_output_embeddings().weight.detach()
    logits = (sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)) @ W_U.t()  # [d_sae, vocab]
    k = data.logit_lens["promoted_ids"].shape[1]
    top, bottom = logits.topk(k, dim=-1), logits.topk(k, dim=-1, largest=False)
    torch.testing.assert_close(data.logit_lens["promoted_values"], top.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.logit_lens["suppressed_values"], bottom.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.gather(1, data.logit_lens["promoted_ids"].long()), top.values, atol=1e-5,
                               rtol=1e-5)


def _steer_cfg(trained, **kw):
    from saefw.features.steer import SteerConfig

    cfg = OmegaConf.structured(SteerConfig(run=str(trained), prompt="The capital of the country is",
                                           max_new_tokens=8, device="cpu"))
    for key, value in kw.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@torch.no_grad()
def greedy_with_mlp_hook(model, tok, prompt: str, edit, n: int) -> str:
    """Greedy decoding without a KV cache, ``edit(x_in, y) → y'`` applied by hand to block LAYER's MLP output at
    every position after BOS."""
    def hook(module, args, out):
        new = out.clone()
        new[:, 1:] = edit(args[0][:, 1:], out[:, 1:])
        return new

    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]
    new = []
    handle = model.model.layers[LAYER].mlp.register_forward_hook(hook)
    try:
        for _ in range(n):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    finally:
        handle.remove()
    return tok.decode(new)


def test_steering_adds_the_decoder_direction_to_the_mlp_output(run, model, tiny_model, capsys):
    from saefw.features.steer import steer

    trained, _ = run
    sae, tok = load_sae(trained), AutoTokenizer.from_pretrained(str(tiny_model))
    out = steer(_steer_cfg(trained, feature=[3, 7], scale=[30, -10]))
    assert f"at {OUT_HOOK} (the transcoder's output; it reads {IN_HOOK})" in capsys.readouterr().out
    d = sae.decoder_directions
    shift = 30 * d[3] - 10 * d[7]
    assert out["steered"] == greedy_with_mlp_hook(model, tok, _steer_cfg(trained).prompt, lambda x, y: y + shift, 8)
    assert out["unsteered"] == greedy_with_mlp_hook(model, tok, _steer_cfg(trained).prompt, lambda x, y: y, 8)
    assert out["steered"] != out["unsteered"]


def test_clamping_encodes_the_mlp_input_and_edits_the_mlp_output(run, model, tiny_model):
    from saefw.features.steer import steer

    trained, _ = run
    sae, tok = load_sae(trained), AutoTokenizer.from_pretrained(str(tiny_model))
    out = steer(_steer_cfg(trained, feature=5, mode="clamp", value=25))

    def clamp(x, y):
        f = sae.encode(x)
        g = f.clone()
        g[..., 5] = 25.0
        return y + sae.decode(g) - sae.decode(f)

    assert out["steered"] == greedy_with_mlp_hook(model, tok, _steer_cfg(trained).prompt, clamp, 8)


def test_a_skip_transcoders_clamp_keeps_everything_but_the_clamped_latents(tiny_model, model):
    """The clamp of a skip transcoder at the logits level: the skip path cancels, x_in is the MLP's input."""
    from saefw.features.steering import clamp_features, reading_input
    from saefw.lm.model import LanguageModel
    from saefw.registry import build, discover

    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "skip_transcoder", "activation": "topk", "k": 4}, d_in=32, d_sae=64, d_out=32)
    with torch.no_grad():
        sae.W_skip.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.5)
    sae.eval()
    lm = LanguageModel(str(tiny_model), LAYER, "mlp_out")
    tokens = torch.randint(3, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = lm.bos_id
    edit = clamp_features(sae, [2, 9], [15.0, 0.0])
    with reading_input(lm, (LAYER, "mlp_in"), edit) as replace:
        got = lm.logits(tokens, replace=replace)

    def hook(module, args, out):
        x, new = args[0][:, 1:], out.clone()
        f = sae.encode(x)
        g = f.clone()
        g[..., 2], g[..., 9] = 15.0, 0.0
        new[:, 1:] = out[:, 1:] + (g - f) @ sae.W_dec  # the dictionary's part only: the skip path cancels
        return new

    handle = model.model.layers[LAYER].mlp.register_forward_hook(hook)
    try:
        with torch.no_grad():
            want = model(tokens).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, lm.logits(tokens), atol=1e-3)


def _saved(root, tiny_model, arch: str, **provenance):
    """A hand-built dictionary saved as a run directory with the given cfg.json metadata."""
    from saefw.registry import build, discover

    discover()
    shape = {"crosscoder": {"d_in": 64, "n_layers": 2}, "transcoder": {"d_in": 32, "d_out": 32}}[arch]
    cfg = {"name": arch, **({"k": 4} if arch == "transcoder" else {})}
    sae = build("arch", cfg, d_sae=16, **shape)
    folder = root / arch
    save_sae(sae, folder, {"model_name": str(tiny_model), "hook_layer": LAYER, "context_size": 32,
                           "dataset_path": "factbook", "prepend_bos": True, **provenance})
    return folder


@pytest.mark.parametrize("arch, provenance, message", [
    ("crosscoder", {"hook_name": "blocks.1.hook_resid_post", "site": "resid_post", "layers": [1, 2]},
     r"holds a crosscoder \(it reads and writes resid_post at layers \[1, 2\] together\): saefw\.{cmd} does not "
     r"serve crosscoders yet; it reads SAEs on one hook point and transcoders \(arch=transcoder, skip_transcoder\)"),
    ("transcoder", {"hook_name": IN_HOOK, "site": "mlp_in"},
     "holds a transcoder but its cfg.json does not say which site it writes"),
])
def test_unsupported_dictionaries_are_clear_errors(tmp_path, tiny_model, arch, provenance, message):
    from saefw.features.command import features
    from saefw.features.steer import steer

    folder = _saved(tmp_path, tiny_model, arch, **provenance)
    with pytest.raises(SaefwError, match=message.format(cmd="features")):
        features(features_cfg(folder))
    with pytest.raises(SaefwError, match=message.format(cmd="steer")):
        steer(_steer_cfg(folder, feature=0, scale=1))
    assert not (folder / "features").exists()


def test_a_copied_transcoder_directory_is_served_from_its_cfg_json_alone(run, tmp_path):
    """Only sae_weights.safetensors + cfg.json (no config.yaml): the sites come from the cfg.json metadata."""
    from saefw.features.sites import dictionary_points
    from saefw.io.saved import sae_metadata

    trained, _ = run
    folder = copy_sae(trained, tmp_path / "copy")
    points = dictionary_points(folder, sae_metadata(folder), load_sae(folder), "saefw.features")
    assert (points.read, points.write) == ((LAYER, "mlp_in"), (LAYER, "mlp_out"))
    assert points.describe() == f"reads {IN_HOOK} → writes {OUT_HOOK}"
