"""Logit lens: the stored promoted / suppressed tokens are the top / bottom of W_U · d_i computed by hand."""
import torch
from feature_helpers import copy_sae, features_cfg, trained_run

from saefw.features import feature_store as store
from saefw.features.command import features
from saefw.features.logit_lens import logit_lens, unembedding
from saefw.io.saved import load_sae
from saefw.lm.model import LanguageModel


def test_logit_lens_by_hand():
    W_U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2], [0.5, 0.4], [0.1, -2.0]])  # 5 tokens, d = 2
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]])
    ll = logit_lens(W_U, d, k=2, chunk=2)  # chunked over features: the chunks must join up
    # logits: feature 0 [1, 0, -1, .5, .1]; feature 1 [0, 1, .2, .4, -2]; feature 2 [.6, -.8, -.76, -.02, 1.66]
    assert ll.promoted_ids.tolist() == [[0, 3], [1, 3], [4, 0]]
    assert ll.suppressed_ids.tolist() == [[2, 1], [4, 0], [1, 2]]
    torch.testing.assert_close(ll.promoted_values, torch.tensor([[1.0, 0.5], [1.0, 0.4], [1.66, 0.6]]))
    torch.testing.assert_close(ll.suppressed_values, torch.tensor([[-1.0, 0.0], [-2.0, 0.0], [-0.8, -0.76]]))


def test_stored_logit_lens_equals_unembedding_times_decoder_direction(tmp_path_factory, tiny_model, tmp_path):
    run = copy_sae(trained_run(tmp_path_factory, tiny_model), tmp_path / "run")
    features(features_cfg(run, n_tokens=100, logit_lens_k=7))
    data = store.load(run)
    lm = LanguageModel(str(tiny_model), layer=1, site="resid_post")
    sae = load_sae(run)
    W_U = lm.model.lm_head.weight  # the tiny Llama's unembedding, read directly
    assert torch.equal(unembedding(lm.model), W_U.detach())
    for i in range(sae.d_sae):
        d_i = sae.W_dec[i].detach() / sae.W_dec[i].detach().norm()
        logits = torch.stack([W_U[t] @ d_i for t in range(W_U.shape[0])])  # one dot product per token
        order = logits.argsort(descending=True)
        assert data.logit_lens["promoted_ids"][i].tolist() == order[:7].tolist(), i
        assert data.logit_lens["suppressed_ids"][i].tolist() == order.flip(0)[:7].tolist(), i
        torch.testing.assert_close(data.logit_lens["promoted_values"][i], logits[order[:7]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(data.logit_lens["suppressed_values"][i], logits[order.flip(0)[:7]],
                                   rtol=1e-4, atol=1e-5)
