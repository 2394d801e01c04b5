import pytest
import torch

from saefw.errors import SaefwError
from saefw.lm.model import LanguageModel, next_token_ce


def _tokens(lm, n=2, t=16):
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(3, lm.model.config.vocab_size, (n, t), generator=g)
    tok[:, 0] = lm.bos_id
    return tok


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
def test_residual_sites_match_hidden_states(tiny_models, kind):
    for site, offset in (("resid_pre", 0), ("resid_post", 1)):
        lm = LanguageModel(str(tiny_models[kind]), layer=1, site=site)
        tok = _tokens(lm)
        acts = lm.activations(tok)
        hidden = lm.model(tok, output_hidden_states=True).hidden_states
        # hidden_states[i] is the input of block i; the last entry is after the final norm, so stop before it
        torch.testing.assert_close(acts, hidden[1 + offset])


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
@pytest.mark.parametrize("site", ["attn_out", "mlp_out"])
def test_component_sites_capture_module_outputs(tiny_models, kind, site):
    lm = LanguageModel(str(tiny_models[kind]), layer=2, site=site)
    tok = _tokens(lm)
    seen = {}
    handle = lm._module.register_forward_hook(lambda m, a, o: seen.setdefault("x", o[0] if isinstance(o, tuple) else o))
    lm.model(tok)
    handle.remove()
    torch.testing.assert_close(lm.activations(tok), seen["x"])


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "mlp_out", "attn_out"])
def test_identity_splice_keeps_logits_and_zero_splice_changes_them(tiny_model, site):
    lm = LanguageModel(str(tiny_model), layer=1, site=site)
    tok = _tokens(lm)
    clean = lm.model(tok).logits
    torch.testing.assert_close(lm.logits(tok, replace=lambda x: x), clean)
    zeroed = lm.logits(tok, replace=torch.zeros_like)
    assert not torch.allclose(zeroed, clean)
    # BOS position is never replaced, so its logits stay clean
    torch.testing.assert_close(zeroed[:, 0], clean[:, 0])


def test_next_token_ce_skips_bos_position(tiny_model):
    lm = LanguageModel(str(tiny_model), layer=0, site="resid_post")
    tok = _tokens(lm, n=1, t=6)
    logits = lm.model(tok).logits
    manual = torch.stack([torch.nn.functional.cross_entropy(logits[0, p], tok[0, p + 1]) for p in range(1, 5)])
    torch.testing.assert_close(next_token_ce(logits, tok)[0], manual)


def test_layer_out_of_range_and_bad_site(tiny_model):
    with pytest.raises(SaefwError, match=r"layer=25 is out of range: .* has 4 layers \(0-3\)"):
        LanguageModel(str(tiny_model), layer=25, site="resid_post")
    with pytest.raises(SaefwError, match="site='resid' is not a hook site; choices: resid_pre, resid_post"):
        LanguageModel(str(tiny_model), layer=0, site="resid")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SaefwError, match="no such directory; give an embedded model"):
        LanguageModel(str(tmp_path / "nope"), layer=0, site="resid_post")
