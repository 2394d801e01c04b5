"""loss_recovered against a manual splice written here with plain forward hooks."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from saefw.evals.base import run_evaluators
from saefw.registry import build, discover
from saefw.sources.base import RunSpec


def test_loss_recovered_matches_manual_splice(tiny_models):
    discover()
    src = build("source", {"name": "hf", "model": str(tiny_models["gpt2"]), "layer": 1, "site": "resid_post",
                           "context_size": 12, "eval_contexts": 5}, spec=RunSpec(seed=0, train_tokens=1000))
    src.setup()
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=src.d_in, d_sae=64)
    ev = build("evaluator", {"batch_contexts": 2}, name="loss_recovered")
    out = run_evaluators(sae, src, [ev])

    model, tok = src.lm.model, src.eval_tokens
    block = model.transformer.h[1]

    def forward(fn):
        def hook(mod, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            h[:, 1:] = fn(h[:, 1:])
            return (h, *output[1:]) if isinstance(output, tuple) else h
        handle = block.register_forward_hook(hook)
        with torch.no_grad():
            logits = model(tok).logits
        handle.remove()
        return logits

    def ce(logits):
        return F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), tok[:, 2:].reshape(-1)).item()

    clean = forward(lambda h: h)
    with torch.no_grad():
        spliced = forward(lambda h: sae.decode(sae.encode(h)))
    zero = forward(torch.zeros_like)
    c, s, z = ce(clean), ce(spliced), ce(zero)
    assert out["ce_clean"] == pytest.approx(c, rel=1e-5)
    assert out["ce_sae"] == pytest.approx(s, rel=1e-5)
    assert out["ce_zero"] == pytest.approx(z, rel=1e-5)
    # a random tiny model has ce_zero − ce_clean ≈ 0.1, so the ratio amplifies float32 summation order
    assert out["ce_loss_recovered"] == pytest.approx((z - s) / (z - c), abs=2e-3)
    assert out["ce_delta"] == pytest.approx(s - c, rel=1e-4, abs=1e-6)
    lp, lq = F.log_softmax(clean[:, 1:-1].double(), -1), F.log_softmax(spliced[:, 1:-1].double(), -1)
    kl = F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1).mean().item()
    assert out["kl_div"] == pytest.approx(kl, rel=1e-5)
    # ce_zero is cached beside the held-out store (one value per context) and reused by the next evaluation
    cache = json.loads((src.eval_store.path / "cache-ce_zero_5.json").read_text())["ce_zero"]
    assert len(cache) == 5 and sum(cache) / 5 == pytest.approx(z, rel=1e-5)
    # a periodic evaluation during training scores only the first contexts_during_training contexts
    ev.cfg.contexts_during_training = 2
    partial = run_evaluators(sae, src, [ev], final=False)
    tok = tok[:2]
    assert partial["ce_clean"] == pytest.approx(ce(forward(lambda h: h)), rel=1e-5)
    assert (src.eval_store.path / "cache-ce_zero_2.json").is_file()


def _source_and_sae(tiny_models, store_dir, n_ctx=4, edit=None, summarize=True):
    """A GPT-2 source set up over a store in ``store_dir`` and a random SAE; ``edit(model)`` runs before the
    harvest, ``summarize=False``: the held-out harvest leaves the clean summary to the evaluation."""
    discover()
    src = build("source", {"name": "hf", "model": str(tiny_models["gpt2"]), "layer": 1, "site": "resid_post",
                           "context_size": 12, "eval_contexts": n_ctx, "store_dir": str(store_dir)},
                spec=RunSpec(seed=0, train_tokens=1000))
    src.summarize_held_out = summarize
    if edit is not None:
        edit(src.lm.model)
    src.setup()
    torch.manual_seed(0)
    return src, build("arch", {"name": "l1"}, d_in=src.d_in, d_sae=64)


def _counting_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_a_later_evaluation_reuses_the_cached_clean_forward(tiny_models, tmp_path):
    src, sae = _source_and_sae(tiny_models, tmp_path, summarize=False)
    ev = build("evaluator", {"batch_contexts": 2}, name="loss_recovered")
    first = run_evaluators(sae, src, [ev])
    cache = list(src.eval_store.path.glob("cache-clean_summary_4_*.safetensors"))
    assert len(cache) == 1 and "float32_cpu" in cache[0].name
    # a new source object (a later run) reads the cache from disk: one forward per batch, the spliced one
    src2, _ = _source_and_sae(tiny_models, tmp_path)
    calls = _counting_forwards(src2.lm.model)
    second = run_evaluators(sae, src2, [ev])
    assert len(calls) == 2  # 4 contexts in batches of 2
    for key in ("ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "kl_div"):
        assert second[key] == pytest.approx(first[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize("summarize", [True, False], ids=["summary_at_harvest", "summary_at_evaluation"])
def test_logits_changed_after_the_unembedding_fall_back_to_the_clean_forward(tiny_models, tmp_path, summarize):
    def soft_cap(module, args, out):  # like Gemma 2's final-logit soft-capping: the unembedding alone is not enough
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)
        return out
    src, sae = _source_and_sae(tiny_models, tmp_path, edit=lambda m: m.register_forward_hook(soft_cap),
                               summarize=summarize)
    model = src.lm.model
    ev = build("evaluator", {"batch_contexts": 2}, name="loss_recovered")
    out = run_evaluators(sae, src, [ev])
    tok = src.eval_tokens
    with torch.no_grad():
        clean = model(tok).logits
    ce = F.cross_entropy(clean[:, 1:-1].reshape(-1, clean.shape[-1]), tok[:, 2:].reshape(-1)).item()
    assert out["ce_clean"] == pytest.approx(ce, rel=1e-5)
    calls = _counting_forwards(model)
    run_evaluators(sae, src, [ev])
    assert len(calls) == 4  # clean and spliced forward per batch: the cache said the shortcut is not exact


def test_kl_from_the_cached_clean_summary_matches_both_distributions_with_an_unembedding_bias(tiny_models, tmp_path):
    """KL(p ‖ p_sae) = log Z_sae − (pᵀW)·h_sae − (H(p) + pᵀb): the bias term must be carried, and a later evaluation
    (summary read from disk, one forward per batch) must agree with the full computation on both distributions."""
    def add_bias(model):
        head = model.get_output_embeddings()
        head.bias = torch.nn.Parameter(torch.randn(head.out_features, generator=torch.Generator().manual_seed(1)))
    src, sae = _source_and_sae(tiny_models, tmp_path, edit=add_bias, summarize=False)
    model, tok = src.lm.model, src.eval_tokens
    ev = build("evaluator", {"batch_contexts": 3}, name="loss_recovered")  # 4 contexts: batches of 3 and 1
    run_evaluators(sae, src, [ev])
    calls = _counting_forwards(model)
    out = run_evaluators(sae, src, [ev])
    assert len(calls) == 2
    # the summary the held-out harvest computes carries the bias too
    src2, _ = _source_and_sae(tiny_models, tmp_path / "at_harvest", edit=add_bias)
    assert run_evaluators(sae, src2, [ev])["kl_div"] == pytest.approx(out["kl_div"], rel=1e-6)
    with torch.no_grad():
        clean = model(tok).logits
        spliced = src.lm.logits(tok, replace=lambda h: sae.decode(sae.encode(h)))
    lp, lq = F.log_softmax(clean[:, 1:-1].double(), -1), F.log_softmax(spliced[:, 1:-1].double(), -1)
    assert out["kl_div"] == pytest.approx((lp.exp() * (lp - lq)).sum(-1).mean().item(), rel=1e-5)
    ce = F.cross_entropy(clean[:, 1:-1].reshape(-1, clean.shape[-1]), tok[:, 2:].reshape(-1)).item()
    assert out["ce_clean"] == pytest.approx(ce, rel=1e-5)


def test_a_bf16_model_scores_kl_from_both_distributions(tiny_models, tmp_path):
    """bf16 logits are W h rounded by ~1e-3 of their size, as much as a small KL: no cached clean summary then."""
    src, sae = _source_and_sae(tiny_models, tmp_path)
    model = src.lm.model.to(torch.bfloat16)
    ev = build("evaluator", {"batch_contexts": 2}, name="loss_recovered")
    run_evaluators(sae, src, [ev])
    calls = _counting_forwards(model)
    out = run_evaluators(sae, src, [ev])
    assert len(calls) == 4  # clean and spliced forward per batch
    assert not list(src.eval_store.path.glob("cache-clean_summary_*bfloat16*"))
    tok = src.eval_tokens
    with torch.no_grad():
        clean = model(tok).logits.float()
        spliced = src.lm.logits(tok, replace=lambda h: sae.decode(sae.encode(h)))
    lp, lq = F.log_softmax(clean[:, 1:-1], -1), F.log_softmax(spliced[:, 1:-1], -1)
    assert out["kl_div"] == pytest.approx((lp.exp() * (lp - lq)).sum(-1).mean().item(), rel=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "attn_out", "mlp_out"])
def test_evaluation_from_the_hook_equals_the_full_forward(tiny_models, tmp_path, kind, site):
    """Forwards that start at the hook (the held-out split's stored residual stream) give every metric of the
    forwards from the embeddings, to 1e-5; the last layer's resid_post starts at the final norm."""
    discover()
    layer = 3 if site == "resid_post" else 2
    results = {}
    for from_hook in (False, True):
        src = build("source", {"name": "hf", "model": str(tiny_models[kind]), "layer": layer, "site": site,
                               "context_size": 12, "eval_contexts": 5, "store_dir": str(tmp_path / str(from_hook))},
                    spec=RunSpec(seed=0, train_tokens=500))
        # from the embeddings the evaluation computes the clean summary itself; from the hook the harvest does
        src.summarize_held_out = from_hook
        src.setup()
        torch.manual_seed(0)
        sae = build("arch", {"name": "l1"}, d_in=src.d_in, d_sae=64)
        ev = build("evaluator", {"batch_contexts": 2, "from_hook": from_hook}, name="loss_recovered")
        results[from_hook] = run_evaluators(sae, src, [ev])
        assert (src.eval_states(5) is not None) and from_hook or not from_hook
    for key in ("ce_clean", "ce_sae", "ce_zero", "ce_delta", "kl_div"):
        assert results[True][key] == pytest.approx(results[False][key], rel=1e-5, abs=1e-6), key


def test_ce_zero_of_a_residual_site_takes_one_forward_of_two_contexts(tiny_models, tmp_path):
    src, sae = _source_and_sae(tiny_models, tmp_path, n_ctx=6)
    model = src.lm.model
    states = src.eval_states(6)  # built first: the count below is the evaluation's own forwards
    assert states.shape == (6, 12, src.d_in)
    rows = []
    model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    ev = build("evaluator", {"batch_contexts": 3}, name="loss_recovered")
    out = run_evaluators(sae, src, [ev])
    assert rows == [2, 3, 3]  # ce_zero (one pair), the spliced forwards: the harvest computed the clean summary
    tok = src.eval_tokens
    block = model.transformer.h[1]

    def zero(mod, args, output):
        h = (output[0] if isinstance(output, tuple) else output).clone()
        h[:, 1:] = 0
        return (h, *output[1:]) if isinstance(output, tuple) else h
    handle = block.register_forward_hook(zero)
    with torch.no_grad():
        logits = model(tok).logits
    handle.remove()
    ce = F.cross_entropy(logits[:, 1:-1].reshape(-1, logits.shape[-1]), tok[:, 2:].reshape(-1)).item()
    assert out["ce_zero"] == pytest.approx(ce, rel=1e-5)


def test_the_held_out_harvest_computes_the_clean_summary_every_evaluation_reads(tiny_models, tmp_path):
    """The first evaluation of a split runs only its spliced forwards (and ce_zero's pair), a periodic one scores
    the first contexts from the split's rows, and the harvest's summary is the one an evaluation computes itself
    from the hook; a source told no evaluation needs it (``summarize_held_out`` false) computes none."""
    src, sae = _source_and_sae(tiny_models, tmp_path / "harvest", n_ctx=6)
    assert [p.name for p in src.eval_store.path.glob("cache-clean_summary_*")] == [
        "cache-clean_summary_6_float32_cpu.safetensors"]
    src.eval_states(6)  # built first: the count below is the evaluations' own forwards
    rows = []
    src.lm.model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    ev = build("evaluator", {"batch_contexts": 3, "contexts_during_training": 2}, name="loss_recovered")
    out = run_evaluators(sae, src, [ev])
    assert rows == [2, 3, 3]
    periodic = run_evaluators(sae, src, [ev], final=False)
    assert rows == [2, 3, 3, 2, 2]  # ce_zero's pair, then the 2 contexts spliced
    assert not list(src.eval_store.path.glob("cache-clean_summary_2_*"))

    own, _ = _source_and_sae(tiny_models, tmp_path / "evaluation", n_ctx=6, summarize=False)
    assert not list(own.eval_store.path.glob("cache-clean_summary_*"))
    assert run_evaluators(sae, own, [ev]) == pytest.approx(out, rel=1e-5, abs=1e-7)
    assert run_evaluators(sae, own, [ev], final=False) == pytest.approx(periodic, rel=1e-5, abs=1e-7)
    harvested = load_file(next(src.eval_store.path.glob("cache-clean_summary_6_*")))
    computed = load_file(next(own.eval_store.path.glob("cache-clean_summary_6_*")))
    for key, value in harvested.items():
        assert torch.allclose(value.double(), computed[key].double(), rtol=1e-5, atol=1e-6), key

    # live mode: the set-up's held-out forwards compute the activations and the summary together
    live = build("source", {"name": "hf", "model": str(tiny_models["gpt2"]), "layer": 1, "site": "resid_post",
                            "context_size": 12, "eval_contexts": 6, "store": False},
                 spec=RunSpec(seed=0, train_tokens=1000))
    live.setup()
    assert torch.equal(torch.cat(list(live.eval_batches(1 << 20))), torch.cat(list(src.eval_batches(1 << 20))))
    live.eval_states(6)
    rows.clear()
    live.lm.model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    assert run_evaluators(sae, live, [ev]) == pytest.approx(out, rel=1e-5, abs=1e-7)
    assert rows == [2, 3, 3]
