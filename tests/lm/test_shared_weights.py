"""Models of one checkpoint share their weights' storage in a process and keep module trees of their own."""
import gc
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from saefw.lm import shared_weights
from saefw.lm.model import LanguageModel


def _tokens(lm: LanguageModel) -> torch.Tensor:
    return torch.randint(0, lm.model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
def test_two_models_of_one_checkpoint_share_every_weight_and_give_the_loaded_models_logits(tiny_models, kind):
    a, b = (LanguageModel(str(tiny_models[kind]), 1, "resid_post") for _ in range(2))
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert pa.keys() == pb.keys() and pa
    assert all(pa[k].data_ptr() == pb[k].data_ptr() and pa[k] is not pb[k] for k in pa)
    assert a.model is not b.model and a._blocks is not b._blocks and a._blocks[0] is not b._blocks[0]
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_models[kind]), dtype=torch.float32).eval()
    tok = _tokens(a)
    with torch.no_grad():
        want = plain(tok).logits
        assert torch.equal(a.model(tok).logits, want) and torch.equal(b.model(tok).logits, want)
    tied = plain.config.tie_word_embeddings
    head, emb = b.model.get_output_embeddings().weight, b.model.get_input_embeddings().weight
    assert (head is emb) == tied


def test_a_forward_resumed_or_hooked_in_one_tree_leaves_the_other_trees_forwards_as_they_are(tiny_models):
    """What one job of a one-pass group does to its tree (hooks, a resumed forward's shortened block list) while
    another job's thread runs a full forward on its own."""
    a, b = (LanguageModel(str(tiny_models["llama"]), 1, "resid_post") for _ in range(2))
    tok = _tokens(a)
    with torch.no_grad():
        want = b.model(tok).logits
        state = a.activations(tok)
    inside, seen = threading.Event(), {}

    def full_forward_elsewhere():
        inside.wait()
        with torch.no_grad():
            seen["logits"] = b.model(tok).logits

    thread = threading.Thread(target=full_forward_elsewhere)
    thread.start()
    with torch.no_grad(), a.resumed(state), a.hooked(lambda x: x * 0, 2, "resid_post"):
        inside.set()
        thread.join()
        edited = a.model(tok).logits
    assert torch.equal(seen["logits"], want)
    assert not torch.allclose(edited, want)


def test_one_trees_dtype_change_stays_in_it_and_the_weights_go_with_the_last_model(tiny_models):
    a, b = (LanguageModel(str(tiny_models["neox"]), 1, "resid_post") for _ in range(2))
    a.model.to(torch.bfloat16)
    assert {p.dtype for p in a.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in b.model.parameters()} == {torch.float32}
    assert {p.dtype for p in LanguageModel(str(tiny_models["neox"]), 1, "resid_post").model.parameters()} == {
        torch.float32}
    del a, b
    gc.collect()
    assert not [k for k in shared_weights._templates.keys() if k[0] == str(tiny_models["neox"])]
