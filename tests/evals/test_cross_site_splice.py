"""Splicing a dictionary that reads or writes other points than one site: a transcoder (reads the MLP's input,
writes its output) and a crosscoder (reads and writes resid_post at two layers), against manual splices written
here with plain forward hooks, from the embeddings and from the hook alike."""
import pytest
import torch
import torch.nn.functional as F

from saefw.evals.base import run_evaluators
from saefw.registry import build, discover
from saefw.sources.base import RunSpec
from saefw.training.run import layout_kwargs


def _source(model, store_dir, **extra):
    discover()
    src = build("source", {"name": "hf", "model": str(model), "context_size": 12, "eval_contexts": 5,
                           "store_dir": str(store_dir), **extra}, spec=RunSpec(seed=0, train_tokens=600))
    src.setup()
    return src


def _sae(arch, src, **cfg):
    torch.manual_seed(0)
    sae = build("arch", {"name": arch, **cfg}, d_in=src.d_in, d_sae=48, **layout_kwargs(arch, src))
    rows = torch.cat(list(src.eval_batches(4096)))
    sae.initialize_from_data(rows)
    with torch.no_grad():  # away from the init, so the splice changes the logits
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sae.eval()


def _blocks(model):
    return model.model.layers if hasattr(model, "model") else model.transformer.h


def _mlp(block):
    return block.mlp


def _ce(logits, tok):
    return F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), tok[:, 2:].reshape(-1)).item()


def _evaluate(src, sae, from_hook):
    ev = build("evaluator", {"batch_contexts": 2, "from_hook": from_hook}, name="loss_recovered")
    return run_evaluators(sae, src, [ev, build("evaluator", {}, name="reconstruction")])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_transcoder_replaces_the_mlp_output_with_its_reconstruction_from_the_mlp_input(tiny_models, tmp_path,
                                                                                         kind):
    src = _source(tiny_models[kind], tmp_path, layer=1, site="mlp_out", input_site="mlp_in")
    assert (src.layout, src.d_in, src.d_out, src.row_width) == ("pair", 32, 32, 64)
    sae = _sae("transcoder", src, activation="topk", k=8)
    model, tok = src.lm.model, src.eval_tokens
    mlp = _mlp(_blocks(model)[1])

    def forward(fn):
        def hook(mod, args, out):
            y = out.clone()
            y[:, 1:] = fn(args[0][:, 1:], out[:, 1:])
            return y
        handle = mlp.register_forward_hook(hook)
        with torch.no_grad():
            logits = model(tok).logits
        handle.remove()
        return logits

    with torch.no_grad():
        c = _ce(forward(lambda x, y: y), tok)
        s = _ce(forward(lambda x, y: sae.decode(sae.encode(x))), tok)
        z = _ce(forward(lambda x, y: torch.zeros_like(y)), tok)
    for from_hook in (False, True):
        out = _evaluate(src, sae, from_hook)
        assert out["ce_clean"] == pytest.approx(c, rel=1e-5)
        assert out["ce_sae"] == pytest.approx(s, rel=1e-5)
        assert out["ce_zero"] == pytest.approx(z, rel=1e-5)
    # explained variance is of the target (the MLP's output), computed here from the stored rows
    rows = torch.cat(list(src.eval_batches(4096)))
    x, y = rows[:, :32], rows[:, 32:]
    with torch.no_grad():
        err = (y - sae.decode(sae.encode(x))).pow(2).sum()
    assert out["explained_variance"] == pytest.approx(1 - (err / (y - y.mean(0)).pow(2).sum()).item(), rel=1e-5)
    # the rows' input columns are the MLP's input: checked against a hook on the model
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        model(tok[:1])
    handle.remove()
    torch.testing.assert_close(rows[:11, :32], seen["x"][0, 1:], rtol=1e-5, atol=1e-5)


def test_a_crosscoder_splices_every_layer_it_writes(tiny_models, tmp_path):
    src = _source(tiny_models["llama"], tmp_path, layer=1, site="resid_post", layers=[1, 2])
    assert (src.layout, src.d_in, src.row_width) == ("layers", 64, 64)
    sae = _sae("crosscoder", src)
    model, tok = src.lm.model, src.eval_tokens
    blocks = _blocks(model)
    with torch.no_grad():
        clean_rows = torch.cat(list(src.eval_batches(4096))).view(5, 11, 64)
        recon = sae.decode(sae.encode(clean_rows))

    def forward(parts):
        handles = []
        for layer, part in zip((1, 2), parts):
            def hook(mod, args, out, part=part):
                h = (out[0] if isinstance(out, tuple) else out).clone()
                h[:, 1:] = part
                return (h, *out[1:]) if isinstance(out, tuple) else h
            handles.append(blocks[layer].register_forward_hook(hook))
        with torch.no_grad():
            logits = model(tok).logits
        for h in handles:
            h.remove()
        return logits

    with torch.no_grad():
        c = _ce(model(tok).logits, tok)
    s = _ce(forward(recon.split(32, -1)), tok)
    z = _ce(forward([torch.zeros(5, 11, 32)] * 2), tok)
    for from_hook in (False, True):
        out = _evaluate(src, sae, from_hook)
        assert out["ce_clean"] == pytest.approx(c, rel=1e-5)
        assert out["ce_sae"] == pytest.approx(s, rel=1e-5)
        assert out["ce_zero"] == pytest.approx(z, rel=1e-5)
    # per-layer explained variance beside the joint one
    x = clean_rows.reshape(-1, 64)
    r = recon.reshape(-1, 64)
    for i, layer in enumerate((1, 2)):
        cols = slice(32 * i, 32 * (i + 1))
        ev = 1 - (x[:, cols] - r[:, cols]).pow(2).sum() / (x[:, cols] - x[:, cols].mean(0)).pow(2).sum()
        assert out[f"explained_variance_layer{layer}"] == pytest.approx(ev.item(), rel=1e-5)


def test_a_plain_arch_on_a_transcoder_source_is_refused_naming_both(tiny_models, tmp_path):
    from saefw.errors import SaefwError

    discover()
    src = build("source", {"name": "hf", "model": str(tiny_models["llama"]), "layer": 1, "site": "mlp_out",
                           "input_site": "mlp_in", "context_size": 12, "store_dir": str(tmp_path)},
                spec=RunSpec(seed=0, train_tokens=600))
    with pytest.raises(SaefwError, match="arch=l1 does not fit.*input_site=mlp_in site=mlp_out"):
        layout_kwargs("l1", src)
    with pytest.raises(SaefwError, match="arch=crosscoder does not fit.*source.layers"):
        layout_kwargs("crosscoder", src)
    with pytest.raises(SaefwError, match="layer=7 is out of range"):
        build("source", {"name": "hf", "model": str(tiny_models["llama"]), "layer": 1, "site": "resid_post",
                         "layers": [1, 7], "store_dir": str(tmp_path)}, spec=RunSpec(seed=0, train_tokens=600))
