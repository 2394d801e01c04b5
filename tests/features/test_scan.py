"""The feature scan on a tiny trained SAE against brute-force computations over every scanned token."""
import pytest
import torch
from feature_helpers import all_activations, copy_sae, features_cfg, trained_run, window

from saefw.features import feature_store as store
from saefw.features.command import activation_store, features
from saefw.features.running_top import RunningTop
from saefw.features.scan import StoredActivations
from saefw.io.saved import load_sae
from saefw.lm.corpus import Corpus, split_documents
from saefw.lm.model import LanguageModel

N_TOKENS = 1500


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, tiny_model):
    """The store of a scan whose histogram sample holds every firing token (so quantile edges are exact)."""
    run = copy_sae(trained_run(tmp_path_factory, tiny_model), tmp_path_factory.mktemp("scan_run"))
    summary = features(features_cfg(run, n_tokens=N_TOKENS, histogram_sample=4096, top_n=12))
    data = store.load(run)
    lm = LanguageModel(str(tiny_model), layer=1, site="resid_post")
    sae = load_sae(run)
    return run, summary, data, all_activations(lm, sae, data.tokens), lm


def test_scanned_text_is_the_evaluation_heldout_split(scanned):
    _, summary, data, _, lm = scanned
    heldout = split_documents(Corpus("factbook").documents(), 0.05, heldout=True)
    expected = lm.contexts(heldout, 32)[: len(data.tokens)]  # what the hf source's evaluation reads
    assert torch.equal(data.tokens.long(), expected)
    assert len(data.tokens) == -(-N_TOKENS // 31) and summary["n_tokens"] == len(data.tokens) * 31
    assert (data.tokens[:, 0] == lm.bos_id).all()


def test_contexts_the_store_holds_are_read_from_it(scanned):
    """Training harvested the held-out split's first eval_contexts (6) into a float32 store: the scan read those
    and ran the model for the rest; the brute-force tests below (all from the model) hold for the whole scan."""
    _, summary, data, _, _ = scanned
    assert summary["from_store"] == data.meta["scan"]["from_store"] == 6 < len(data.tokens)


def test_a_store_with_other_tokens_is_not_used(scanned, caplog):
    """A store whose contexts differ from the scanned ones (another tokenizer under the same weights) gives the
    model's activations from the first differing context on, with a warning."""
    run, _, data, f, lm = scanned
    sae = load_sae(run)
    activations = StoredActivations(activation_store(features_cfg(run), data.meta["settings"]["scan"], run), lm)
    assert activations.n_stored == 6
    tokens = data.tokens[:8].long().clone()
    tokens[2, 5] = (tokens[2, 5] + 1) % int(tokens.max())
    with caplog.at_level("WARNING"):
        x = activations(tokens, 0)
    assert activations.from_store == 2 and activations.from_model == 6
    assert "context 2 of the split has other tokens" in caplog.text
    reference = lm.activations(tokens)[:, 1:]
    torch.testing.assert_close(x, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.encode(x[:2]), f[:2, 1:], rtol=1e-5, atol=1e-5)
    assert activations(tokens[:1], 0) is not None and activations.from_store == 2  # given up for good



def test_density_and_mean_activation_match_brute_force(scanned):
    _, _, data, f, _ = scanned
    body = f[:, 1:].reshape(-1, f.shape[-1])
    assert torch.equal(data.stats["fired"], (body > 0).sum(0))
    torch.testing.assert_close(data.stats["density"], (body > 0).float().mean(0))
    torch.testing.assert_close(data.stats["mean_act"], body.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(data.stats["max_act"], body.max(0).values)
    firing = torch.where(body > 0, body, torch.nan).nanmean(0).nan_to_num(0)
    torch.testing.assert_close(data.stats["mean_act_firing"], firing, rtol=1e-5, atol=1e-6)


def test_top_contexts_equal_brute_force(scanned):
    _, _, data, f, _ = scanned
    before, after = data.meta["window"]["before"], data.meta["window"]["after"]
    ctx_max, ctx_arg = f[:, 1:].max(dim=1)  # [N, d_sae]: every context's max activation and where
    n_top = data.top["value"].shape[1]
    checked = swaps = 0
    for i in range(f.shape[-1]):
        order = ctx_max[:, i].argsort(descending=True)[:n_top]
        order = order[ctx_max[order, i] > 0]
        stored = data.top["context"][i]
        assert (stored >= 0).sum() == len(order), f"feature {i}"
        # the same top values in the same order; the same contexts up to swaps of (near-)equal values, since
        # the brute force encodes in other batch shapes (float rounding differs in the last bits)
        torch.testing.assert_close(data.top["value"][i, : len(order)], ctx_max[order, i])
        stored = stored[: len(order)]
        assert len(set(stored.tolist())) == len(order)
        torch.testing.assert_close(ctx_max[stored, i], data.top["value"][i, : len(order)])
        swapped = stored != order
        assert ((ctx_max[stored, i] - ctx_max[order, i]).abs()[swapped] < 1e-5).all(), f"feature {i}"
        swaps += int(swapped.sum())
        assert torch.equal(data.top["position"][i, : len(order)], ctx_arg[stored, i] + 1)
        for slot, c in enumerate(stored.tolist()):
            pos = int(data.top["position"][i, slot])
            expected = window(f[c, :, i], pos, before, after)
            torch.testing.assert_close(data.top["acts"][i, slot], expected, rtol=1e-5, atol=1e-6)
            assert data.top["acts"][i, slot, before] == data.top["value"][i, slot]  # the max token sits at `before`
            checked += 1
    assert checked > 500 and swaps < 0.05 * checked


def test_window_tokens_come_from_the_scanned_contexts(scanned):
    _, _, data, _, _ = scanned
    ctx, pos = data.top["context"][3, 0], data.top["position"][3, 0]
    ids = data.window_tokens(ctx, pos)
    before = data.meta["window"]["before"]
    assert ids[before] == data.tokens[ctx, pos]
    for j, t in enumerate(ids.tolist()):
        p = int(pos) - before + j
        assert t == (int(data.tokens[ctx, p]) if 1 <= p < data.tokens.shape[1] else -1)


def test_quantile_samples_lie_in_their_quantile_ranges(scanned):
    _, _, data, f, _ = scanned
    q = data.quantiles
    before, after = data.meta["window"]["before"], data.meta["window"]["after"]
    body = f[:, 1:].reshape(-1, f.shape[-1])
    n_ranges = q["edges"].shape[1] - 1
    levels = torch.tensor(data.meta["quantile_levels"], dtype=torch.float64)
    filled = 0
    for i in range(f.shape[-1]):
        vals = body[:, i][body[:, i] > 0]
        if len(vals) == 0:
            assert torch.isnan(q["edges"][i]).all()
            continue
        # the histogram sample held every firing token, so the edges are the exact quantiles
        exact = torch.quantile(vals.double(), levels).float()
        exact[-1] = vals.max()
        torch.testing.assert_close(q["edges"][i], exact, rtol=1e-5, atol=1e-6)
        for k in range(n_ranges):
            for s in range(q["value"].shape[2]):
                c, p = int(q["context"][i, k, s]), int(q["position"][i, k, s])
                if c < 0:
                    continue
                v = q["value"][i, k, s]
                assert exact[k] - 1e-6 <= v <= exact[k + 1] + 1e-6, (i, k, float(v))
                assert v == f[c, p, i] and v > 0  # a real firing token
                torch.testing.assert_close(q["acts"][i, k, s], window(f[c, :, i], p, before, after),
                                           rtol=1e-5, atol=1e-6)
                filled += 1
    assert filled > 300


def test_histogram_counts_every_firing_token(scanned):
    _, _, data, f, _ = scanned
    body = f[:, 1:].reshape(-1, f.shape[-1])
    counts, edges = data.stats["hist_counts"], data.stats["hist_edges"]
    torch.testing.assert_close(counts.sum(1), data.stats["fired"].float())
    i = int(data.stats["fired"].argmax())
    vals = body[:, i][body[:, i] > 0]
    manual = torch.histc(vals, bins=counts.shape[1], min=0, max=float(vals.max()))
    torch.testing.assert_close(counts[i], manual)
    assert edges[i, -1] == data.stats["max_act"][i]


def test_running_top_random_keys_sample_uniformly():
    """Keeping the n largest random keys is uniform sampling without replacement: over many seeds, each of M
    firing tokens is kept with frequency n / M."""
    M, n, trials = 40, 8, 600
    hits = torch.zeros(M)
    f = torch.arange(1, M + 1, dtype=torch.float32).view(1, M, 1)  # one context, M tokens, one feature
    for seed in range(trials):
        g = torch.Generator().manual_seed(seed)
        top = RunningTop(n, 1, None)
        for chunk in torch.arange(M).split(7):  # streamed in pieces, as batches arrive
            keys = torch.rand(len(chunk), 1, generator=g)
            top.update(keys, f[0, chunk], torch.zeros(len(chunk), dtype=torch.long), chunk, f, 0)
        hits[top.position[:, 0]] += 1
    freq = hits / trials
    assert abs(freq.mean() - n / M) < 1e-6
    assert (freq - n / M).abs().max() < 0.08  # ~4.5 standard errors at 600 trials


def test_reuse_and_recompute(scanned, tmp_path):
    run, first, data, _, _ = scanned
    again = features(features_cfg(run, n_tokens=N_TOKENS, histogram_sample=4096, top_n=12))
    assert again["reused"] and not first["reused"]
    assert store.load(run).meta["settings"] == data.meta["settings"]
    lens_only = features(features_cfg(run, n_tokens=N_TOKENS, histogram_sample=4096, top_n=12, logit_lens_k=3))
    assert lens_only["reused"] and store.load(run).logit_lens["promoted_ids"].shape == (data.d_sae, 3)
    assert torch.equal(store.load(run).top["context"], data.top["context"])  # the scan itself was kept
    changed = features(features_cfg(run, n_tokens=600, histogram_sample=4096, top_n=12))
    assert not changed["reused"] and changed["n_tokens"] == len(store.load(run).tokens) * 31 < first["n_tokens"]
