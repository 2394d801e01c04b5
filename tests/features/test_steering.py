"""Steering edits and generation under a hook, on the tiny trained SAE."""
import pytest
import torch
from feature_helpers import trained_run

from saefw.errors import SaefwError
from saefw.features.logit_lens import logit_lens, unembedding
from saefw.features.steering import add_directions, clamp_features
from saefw.io.saved import load_sae
from saefw.lm.corpus import Corpus, split_documents
from saefw.lm.model import LanguageModel


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    run = trained_run(tmp_path_factory, tiny_model)
    lm = LanguageModel(str(tiny_model), layer=1, site="resid_post")
    sae = load_sae(run)
    heldout = split_documents(Corpus("factbook").documents(), 0.05, heldout=True)
    tokens = lm.contexts(heldout, 32)[:6]
    return lm, sae, tokens


def test_clamping_a_feature_to_zero_removes_exactly_its_contribution(setup):
    lm, sae, tokens = setup
    x = lm.activations(tokens)[:, 1:]
    f = sae.encode(x)
    busiest = (f > 0).sum((0, 1)).argsort(descending=True)[:5].tolist()
    for i in busiest:
        edited = clamp_features(sae, [i], [0.0])(x)
        expected = x - f[..., i, None] * sae.W_dec[i].detach()  # x − f_i · W_dec,i
        assert (f[..., i] > 0).sum() > 10
        torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)
        assert torch.equal(edited[f[..., i] == 0], x[f[..., i] == 0])  # where it did not fire nothing changes
    # several at once, to other values: x + Σ_j (v_j − f_j) W_dec,j
    i, j = busiest[:2]
    edited = clamp_features(sae, [i, j], [0.0, 2.5])(x)
    expected = x + (0 - f[..., i, None]) * sae.W_dec[i].detach() + (2.5 - f[..., j, None]) * sae.W_dec[j].detach()
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)


def test_clamp_edit_reaches_the_model_at_every_non_bos_position(setup):
    lm, sae, tokens = setup
    i = int((sae.encode(lm.activations(tokens)[:, 1:]) > 0).sum((0, 1)).argmax())
    W_i = sae.W_dec[i].detach()
    via_edit = lm.logits(tokens, replace=clamp_features(sae, [i], [0.0]))
    by_hand = lm.logits(tokens, replace=lambda x: x - sae.encode(x)[..., i, None] * W_i)
    torch.testing.assert_close(via_edit, by_hand, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(via_edit, lm.logits(tokens))


def test_large_positive_steering_raises_the_promoted_tokens(setup):
    lm, sae, tokens = setup
    lens = logit_lens(unembedding(lm.model), sae.decoder_directions, k=5)
    scale = 100 * lm.activations(tokens)[:, 1:].norm(dim=-1).mean().item()
    clean = torch.log_softmax(lm.logits(tokens)[:, 1:], -1)
    for i in (0, 17, 42, 99):
        promoted = lens.promoted_ids[i]
        steered = torch.log_softmax(lm.logits(tokens, replace=add_directions(sae, [i], [scale]))[:, 1:], -1)
        # log-probability that the next token is one of the feature's 5 top promoted tokens, at every position
        before = clean[..., promoted].logsumexp(-1)
        after = steered[..., promoted].logsumexp(-1)
        assert (after > before).all(), i
        # the tiny random model's logits span only ~±0.4 nats, so the gain is bounded; the ranking is not:
        # the top promoted token becomes the most likely next token nearly everywhere
        assert (after - before).mean() > 0.1, i
        assert (steered.argmax(-1) == promoted[0]).float().mean() > 0.95, i
        assert (clean.argmax(-1) == promoted[0]).float().mean() < 0.5, i
        # and a large negative scale lowers them
        lowered = torch.log_softmax(lm.logits(tokens, replace=add_directions(sae, [i], [-scale]))[:, 1:], -1)
        assert (lowered[..., promoted].logsumexp(-1) < before).all(), i


def test_add_directions_is_scale_times_unit_direction(setup):
    lm, sae, tokens = setup
    x = lm.activations(tokens[:1])[:, 1:]
    d = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(add_directions(sae, [3, 7], [4.0, -2.0])(x), x + 4 * d[3] - 2 * d[7])


def test_generation_edits_every_position_as_a_full_forward_would(setup):
    """Cached generation with the edit equals a greedy loop that recomputes every prefix with the edit applied to
    all its non-BOS positions in one forward (no cache), so generated tokens are steered too."""
    lm, sae, tokens = setup
    prompt = tokens[:1, :9]
    edit = add_directions(sae, [5], [3.0])
    seen = []

    def recording(x):
        seen.append(x.shape[1])
        return edit(x)

    ours = lm.generate(prompt, 6, replace=recording, stop_at_eos=False)
    seq = prompt
    for _ in range(6):
        nxt = lm.logits(seq, replace=edit)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(ours, seq[:, 9:])
    assert seen == [8, 1, 1, 1, 1, 1]  # the prompt after BOS, then each generated position once
    assert not torch.equal(ours, lm.generate(prompt, 6, stop_at_eos=False))  # the edit changed the text


def test_sampling_is_seeded(setup):
    lm, _, tokens = setup
    prompt = tokens[:2, :6]
    draw = lambda seed, **kw: lm.generate(prompt, 8, temperature=1.0, seed=seed, stop_at_eos=False, **kw)  # noqa
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    assert torch.equal(draw(1), draw(1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    assert not torch.equal(draw(1), draw(2))
    greedy = lm.generate(prompt, 8, stop_at_eos=False)
    assert torch.equal(draw(3, top_p=1e-6), greedy)  # a nucleus of one token is the argmax
    with pytest.raises(SaefwError, match="top_p=0 in"):
        lm.generate(prompt, 2, temperature=1.0, top_p=0)


def test_bad_steering_requests_are_clear_errors(setup):
    _, sae, _ = setup
    with pytest.raises(SaefwError, match=r"feature=128 is out of range: the SAE has 128 features \(0-127\)"):
        add_directions(sae, [128], [1.0])
    with pytest.raises(SaefwError, match="scale has 1 values for 2 features"):
        add_directions(sae, [1, 2], [1.0])
    with pytest.raises(SaefwError, match="lists a feature twice"):
        clamp_features(sae, [1, 1], [0.0, 0.0])
    with pytest.raises(SaefwError, match="is not an integer feature index"):
        clamp_features(sae, ["a"], [0.0])
