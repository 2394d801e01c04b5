"""A transcoder trained through the real CLI on a tiny Llama whose layer-1 MLP is replaced by a known sparse map
recovers that map: its decoder rows are the map's output directions and its encoder columns its input directions.

The model is the tiny Llama of tests/helpers.py (2 layers, width 32, word tokenizer), rebuilt with
``mlp_bias=True`` so that its layer-1 MLP ``down(silu(gate(x)) * up(x))`` can be set to

    up(x) ≡ 1,   gate(x)_i = S (e_i·x − t_i),   down = [d_1/S … d_M/S, 0 …]
    ⇒  MLP(x) ≈ Σ_i relu(e_i·x − t_i) d_i        (silu(S z)/S → relu(z) as S grows; S = 200)

with M = 12 orthonormal input directions e_i, M orthonormal output directions d_i (random, seeded) and thresholds
t_i at the 92nd percentile of e_i·x on the corpus, so each unit fires on ≈ 8% of tokens and about one unit per
token. It is saved with ``save_pretrained`` and read by saefw's own loading path; the run (``python -m saefw``
in a subprocess) harvests (input_site=mlp_in, site=mlp_out) at layer 1 and trains arch=transcoder (topk, k 4,
d_sae 48 = 4 M) on 200k tokens (1562 steps of 128, lr 2e-2, ``threads=1``: one core is many times faster than two
shared ones here). The rows it harvested and trained on are read back from its activation store and checked to
be the known map's input and output (its explained variance on them > 0.999) with every unit firing on > 1%.

Bounds, on every known d_i: a decoder row with cosine ≥ 0.95 (so the M rows are distinct latents: one unit vector
cannot have cosine > 0.71 with two orthonormal ones), the mean of those maxima ≥ 0.98, the encoder column of that
same latent with cosine ≥ 0.9 to e_i; and metrics.json's held-out explained variance ≥ 0.9. Measured on these
seeds (the same with 1 or 2 threads): decoder cosines ≥ 0.995 (mean 0.998), encoder ≥ 0.969, explained variance
0.969, the known map's own 0.9999997. A freshly built, untrained transcoder fails every bound (decoder min 0.20,
mean 0.36, 10 distinct latents, encoder min −0.38)."""
import json

import pytest
import torch
from helpers import build_tiny_model, run_cli
from torch.nn.functional import normalize

from saefw.io.saved import load_sae
from saefw.registry import build, discover
from saefw.sources.base import RunSpec

LAYER, M, FIRE, S = 1, 12, 0.08, 200.0
TOKENS, BATCH, CONTEXT, EVAL_CONTEXTS = 200_000, 128, 32, 32
SOURCE = {"layer": LAYER, "site": "mlp_out", "input_site": "mlp_in", "context_size": CONTEXT,
          "eval_contexts": EVAL_CONTEXTS}


def _sparse_mlp_model(path):
    """The tiny Llama with layer LAYER's MLP set to the known sparse map; returns (path, E [M, d], D [M, d], t [M])."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from saefw.lm.corpus import Corpus

    build_tiny_model("llama", path, n_layers=2, hidden=32)
    config = LlamaConfig.from_pretrained(path)
    config.mlp_bias = True
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(LlamaForCausalLM.from_pretrained(path).state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".bias") and ".mlp." in k for k in missing)
    d = config.hidden_size
    # calibration: the MLP's input on corpus contexts (BOS first, as saefw cuts them); layer LAYER's own MLP does
    # not change its input, so the thresholds hold after the MLP is replaced
    tok = AutoTokenizer.from_pretrained(path)
    docs = [doc for _, doc in zip(range(100), Corpus("factbook").documents())]
    ids = torch.tensor(tok(f" {tok.eos_token} ".join(docs), add_special_tokens=False).input_ids)
    body = CONTEXT - 1
    contexts = ids[: len(ids) // body * body].view(-1, body)[:128]
    contexts = torch.cat([torch.full((len(contexts), 1), tok.bos_token_id), contexts], 1)
    mlp, seen = model.model.layers[LAYER].mlp, {}
    handle = mlp.register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        model(contexts)
    handle.remove()
    x = seen["x"][:, 1:].reshape(-1, d)
    g = torch.Generator().manual_seed(1)
    E = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :M].T.contiguous()
    D = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :M].T.contiguous()
    t = (x @ E.T).quantile(1 - FIRE, dim=0)
    with torch.no_grad():
        for p in mlp.parameters():
            p.zero_()
        mlp.up_proj.bias.fill_(1.0)
        mlp.gate_proj.weight[:M] = S * E
        mlp.gate_proj.bias[:M] = -S * t
        mlp.down_proj.weight[:, :M] = D.T / S
        y = mlp(x)
    torch.testing.assert_close(y, torch.relu(x @ E.T - t) @ D, atol=2e-3, rtol=0)
    model.save_pretrained(path)
    return path, E, D, t


def _known_map_on_training_rows(model, tokens, E, D, t):
    """(fraction of training rows each unit fires on [M], explained variance of the known map on them), from the
    rows the run trained on: its activation store read back through the hf source with the run's seed, budget
    (``tokens``) and batch size."""
    discover()
    src = build("source", {"name": "hf", "model": str(model), **SOURCE}, spec=RunSpec(seed=0, train_tokens=tokens))
    src.setup()
    assert src.store_status == "hit"  # the run's own store, not a new harvest
    rows = torch.cat(list(src.train_batches(BATCH)))
    x, y = rows[:, :src.d_in], rows[:, src.d_in:]
    a = torch.relu(x @ E.T - t)
    ev = 1 - (y - a @ D).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    return (a > 0).float().mean(0), ev.item()


@pytest.fixture
def one_thread():
    """One torch thread in this process, as the run's ``threads=1``: on a small shared machine OpenMP threads
    spinning on busy cores make this tiny work many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_a_transcoder_recovers_the_known_sparse_map_of_an_mlp(tmp_path):
    model, E, D, t = _sparse_mlp_model(tmp_path / "model")
    run = tmp_path / "run"
    r = run_cli(f"model={model}", "arch=transcoder", "arch.k=4", "d_sae=48", "site=mlp_out",
                "source.input_site=mlp_in", f"layer={LAYER}", f"total_tokens={TOKENS}", f"train.batch_size={BATCH}",
                "train.lr=2e-2", "train.eval_every_steps=0", f"source.context_size={CONTEXT}",
                f"source.eval_contexts={EVAL_CONTEXTS}", "source.forward_batch_size=64", "threads=1",
                "wandb.mode=disabled", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}",
                cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["arch"], metrics["site"], metrics["input_site"]) == ("transcoder", "mlp_out", "mlp_in")
    assert metrics["explained_variance"] >= 0.9, metrics["explained_variance"]

    # the rows the pipeline harvested at (mlp_in → mlp_out) and trained on are the known map's input and output,
    # and every unit fires in them
    fired, known_ev = _known_map_on_training_rows(model, metrics["tokens"], E, D, t)
    assert known_ev > 0.999, known_ev
    assert (fired > 0.01).all(), fired

    sae = load_sae(run)
    assert (sae.d_in, sae.d_out, sae.d_sae) == (32, 32, 48)
    dec = normalize(sae.W_dec.detach(), dim=-1)     # [d_sae, d_out]
    enc = normalize(sae.W_enc.detach(), dim=0).T    # [d_sae, d_in]
    best, latent = (D @ dec.T).max(dim=1)           # per known output direction: its closest decoder row
    assert best.min() >= 0.95, best
    assert best.mean() >= 0.98, best
    assert len(set(latent.tolist())) == M
    enc_cos = (E * enc[latent]).sum(-1)              # that latent's encoder column against the unit's e_i
    assert enc_cos.min() >= 0.9, enc_cos
