"""A forward that starts at a hook point equals the full forward (GPT-2, GPT-NeoX and Llama; every site, every layer)."""
import pytest
import torch

from saefw.lm.model import SITES, LanguageModel, resume_block, resume_point


def _tokens(lm: LanguageModel, n: int = 3, t: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    body = torch.randint(3, len(lm.tokenizer), (n, t - 1), generator=g)
    return torch.cat([torch.full((n, 1), lm.bos_id), body], dim=1)


def _state(lm: LanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    return lm.capture(tokens, [lm.resume_point])[lm.resume_point]


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
def test_resumed_forward_equals_full_forward(tiny_models, kind):
    g = torch.Generator().manual_seed(1)
    for layer in range(4):
        for site in SITES:
            lm = LanguageModel(str(tiny_models[kind]), layer, site)
            assert lm.resume_point == resume_point(layer, site)
            tokens = _tokens(lm)
            state = _state(lm, tokens)
            noise = torch.randn(tokens.shape[0], tokens.shape[1] - 1, lm.d_model, generator=g)
            for replace in (None, torch.zeros_like, lambda x: x + noise):
                full = lm.logits(tokens, replace=replace)
                part = lm.logits(tokens, replace=replace, start=state)
                torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"{kind} layer {layer} {site}: {m}")
            logits, final = lm.logits_and_final(tokens, start=state)
            torch.testing.assert_close(lm.unembed(final), logits, rtol=1e-5, atol=1e-5)
            assert lm.resume_matches(tokens[:1], state[:1])


def test_resume_skips_the_blocks_before_the_hook(tiny_models):
    """Only the blocks from resume_block on run (the others are not called at all)."""
    lm = LanguageModel(str(tiny_models["llama"]), 2, "resid_post")
    tokens = _tokens(lm)
    state = _state(lm, tokens)
    calls = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(lm._blocks)]
    lm.logits(tokens, start=state)
    for h in handles:
        h.remove()
    assert calls == list(range(resume_block(2, "resid_post"), lm.n_layers)) == [3]
    assert len(lm._blocks) == lm.n_layers and lm.model.model.layers is lm._blocks  # restored


def test_capture_from_a_start_point_with_an_edit(tiny_models):
    """The relations' ablation path: edit at an upstream point, capture downstream, from the upstream state."""
    lm = LanguageModel(str(tiny_models["gpt2"]), 1, "resid_post")
    tokens = _tokens(lm)
    up, down = (1, "resid_post"), (3, "mlp_out")
    state = lm.capture(tokens, [up])[up]

    def edit(x):
        y = x.clone()
        y[:, 1:] *= 0.5
        return y

    full = lm.capture(tokens, [down], edits={up: edit})[down]
    part = lm.capture(tokens, [down], edits={up: edit}, start=state, start_point=up)[down]
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-5)
