"""Relations by effect start their ablation forwards at the upstream hook point: the same effects as the forwards
from the embeddings (residual and mlp_out upstream points, GPT-2 and Llama), without running the earlier blocks."""
import itertools

import pytest
import torch
from helpers import set_params

from saefw.lm.corpus import Corpus, split_documents
from saefw.lm.model import LanguageModel, resume_block
from saefw.registry import build, discover
from saefw.relations.ablation import ablation_effects, source_firing

# (upstream, downstream) hook points: a residual site restarts after its block, mlp_out restarts at its block
PAIRS = [((1, "resid_post"), (3, "resid_post")), ((1, "mlp_out"), (2, "attn_out"))]


def random_sae(lm: LanguageModel, point, contexts: torch.Tensor, d_sae: int = 12, seed: int = 0):
    """An l1 SAE with random unit directions whose biases make each feature fire on 20 % of the tokens, scaled so
    that a feature is about 1 where it fires and its ablation moves the activation by about the activation's own
    norm (a tiny random model's activations are faint: the effects must be large against the 1e-5 the paths are
    compared to)."""
    discover()
    x = lm.capture(contexts, [point])[point][:, 1:].reshape(-1, lm.d_model)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(d_sae, lm.d_model, generator=g), dim=1)
    bias = -torch.quantile(x @ dirs.T, 0.8, dim=0)
    f = torch.relu(x @ dirs.T + bias)
    unit = f[f > 0].mean()
    sae = build("arch", {"name": "l1"}, d_in=lm.d_model, d_sae=d_sae)
    set_params(sae, W_enc=dirs.T / unit, W_dec=dirs * x.norm(dim=1).mean(), b_enc=bias / unit,
               b_dec=torch.zeros(lm.d_model))
    return sae.eval()


def setup(model, up_point, down_point):
    lm = LanguageModel(str(model), *up_point)
    docs = itertools.islice(split_documents(Corpus("factbook").documents(), 0.05, heldout=True), 40)
    contexts = lm.contexts(docs, 24)[:12]
    return lm, contexts, random_sae(lm, up_point, contexts), random_sae(lm, down_point, contexts, seed=1)


class BlockCalls:
    """Which blocks of ``lm`` started, in order, while inside (a pre-hook: a capture inside a block stops the
    forward before the block's end)."""

    def __init__(self, lm: LanguageModel):
        self.lm, self.calls = lm, []

    def __enter__(self):
        self.handles = [b.register_forward_pre_hook(lambda m, a, i=i: self.calls.append(i))
                        for i, b in enumerate(self.lm._blocks)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("up_point, down_point", PAIRS, ids=["resid_post", "mlp_out"])
def test_resumed_effects_equal_the_full_forward(tiny_models, kind, up_point, down_point):
    lm, contexts, up, down = setup(tiny_models[kind], up_point, down_point)
    firing = source_firing(lm, up, up_point, contexts, batch=5, progress=False)
    start = (1, "resid_post") if up_point[1] == "resid_post" else (1, "resid_pre")
    assert firing.states is not None and firing.states.dtype == torch.float32
    assert firing.states.shape == (*contexts.shape, lm.d_model)
    torch.testing.assert_close(firing.states, lm.capture(contexts, [start])[start], rtol=0, atol=0)
    sources = list(range(up.d_sae))
    args = (lm, up, up_point, down, down_point, contexts, sources, firing.in_context)
    full = ablation_effects(*args, batch_rows=8, progress=False)
    part = ablation_effects(*args, batch_rows=8, progress=False, states=firing.states)
    assert part.resumed and not full.resumed and part.rows == full.rows > len(contexts)
    assert torch.equal(part.target_fired, full.target_fired) and full.target_fired.sum() > 0
    torch.testing.assert_close(part.drop_sum, full.drop_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part.effect(), full.effect(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part.fraction(), full.fraction(), rtol=1e-5, atol=1e-5)
    assert part.effect().abs().max() > 1e-2  # the ablations did change the downstream features
    print(f"{kind} {up_point} -> {down_point}: max |effect| {float(full.effect().abs().max()):.3g}, max |resumed − "
          f"full| {float((part.effect() - full.effect()).abs().max()):.2g}")


@pytest.mark.parametrize("up_point, down_point", PAIRS, ids=["resid_post", "mlp_out"])
def test_resumed_ablations_do_not_run_the_blocks_before_the_upstream_point(tiny_models, up_point, down_point):
    lm, contexts, up, down = setup(tiny_models["llama"], up_point, down_point)
    firing = source_firing(lm, up, up_point, contexts, batch=5, progress=False)
    args = (lm, up, up_point, down, down_point, contexts, list(range(up.d_sae)), firing.in_context)
    with BlockCalls(lm) as full:
        ablation_effects(*args, batch_rows=8, progress=False)
    with BlockCalls(lm) as part:
        effects = ablation_effects(*args, batch_rows=8, progress=False, states=firing.states)
    first, last = resume_block(*up_point), down_point[0]
    n_forwards = full.calls.count(0)
    assert n_forwards > 1 and sorted(set(full.calls)) == list(range(last + 1))
    # each forward runs only the blocks from the upstream point's resume block to the downstream point's block
    assert part.calls == list(range(first, last + 1)) * n_forwards
    assert effects.resumed and len(lm._blocks) == lm.n_layers  # the model's block list is restored
    print(f"{up_point} -> {down_point}: {len(full.calls)} block calls from the embeddings, {len(part.calls)} resumed")


def test_no_states_without_a_resumable_model_or_when_not_asked(tiny_models, monkeypatch):
    up_point, down_point = PAIRS[0]
    lm, contexts, up, down = setup(tiny_models["gpt2"], up_point, down_point)
    assert source_firing(lm, up, up_point, contexts, progress=False, keep_states=False).states is None
    monkeypatch.setattr(lm, "can_resume", lambda point=None: False)
    firing = source_firing(lm, up, up_point, contexts, progress=False)
    assert firing.states is None
    effects = ablation_effects(lm, up, up_point, down, down_point, contexts, [0, 1], firing.in_context,
                               progress=False, states=torch.zeros(*contexts.shape, lm.d_model))
    assert not effects.resumed  # can_resume is False: the forwards run from the embeddings, states unused
