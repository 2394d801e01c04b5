"""The bad-input catalogue, each case through the real CLI: one clear ``error:`` line naming the bad value and what
is valid, a non-zero exit, no traceback, and an earlier run dir left exactly as it was.

Most cases fail at composition or start-up; the data cases (NaN activations, a diverging loss) fail during
training, at the step where it happens. A corrupt store shard is the one case that does not fail: it is detected
by its checksum, named, and harvested again."""
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import run_cli

BASE = ["layer=1", "total_tokens=2048", "train.batch_size=256", "source.context_size=32", "source.eval_contexts=4",
        "expansion_factor=4", "wandb.mode=disabled", "trainer.enable_progress_bar=false",
        "train.checkpoint_every_steps=4"]


@dataclass
class Case:
    args: list[str]
    line: str  # the start of the one error line (after "error: "), or of the warning for a repaired input
    code: int = 2
    extra: list[str] = field(default_factory=list)  # more lines that must be printed


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    """Everything the cases need: models (a NaN-producing one, a BERT), corpora, a store dir, an earlier run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

    tmp = tmp_path_factory.mktemp("bad")
    bert = tmp / "bert"
    BertModel(BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                         vocab_size=100)).save_pretrained(bert)
    # a model whose embedding of one word is NaN, and a corpus where that word only comes late
    poisoned = tmp / "poisoned"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.get_input_embeddings().weight[tok.convert_tokens_to_ids("island")] = float("nan")
    model.save_pretrained(poisoned)
    tok.save_pretrained(poisoned)
    late = tmp / "late.txt"
    docs = [f"the country number {i} has a border and a coast line and some people live there" for i in range(200)]
    late.write_text("\n\n".join(docs + [f"the island {i} has a coast" for i in range(40)]))
    (tmp / "empty.txt").write_text("")
    store = tmp / "stores"
    earlier = tmp / "earlier"
    r = run_cli(f"model={tiny_model}", *BASE, f"source.store_dir={store}", f"hydra.run.dir={earlier}", cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"tmp": tmp, "model": tiny_model, "bert": bert, "poisoned": poisoned, "late": late, "store": store,
            "earlier": earlier}


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _corrupt_checkpoints(w, run_dir):
    shutil.copytree(w["earlier"], run_dir)
    for ckpt in (run_dir / "checkpoints").glob("step-*.ckpt"):
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated mid-write


def _corrupt_shard(w, run_dir):
    shard = next(w["store"].glob("*_train_*/shard-00000.npy"))
    data = bytearray(shard.read_bytes())
    data[-100:] = bytes(100)
    shard.write_bytes(bytes(data))
    w["shard"] = shard


def _cases(w, run_dir) -> Case:
    m, tiny = f"model={w['model']}", w["model"]
    return {
        "unknown_plugin": Case([m, "arch=nope"], "arch=nope: Could not find 'arch/nope'; available options in "
                               "'arch': batchtopk, crosscoder, gated, jumprelu, l1, matryoshka, skip_transcoder, topk, "
                               "transcoder"),
        "wrong_type": Case([m, "layer=abc"], "layer=abc: Value 'abc' of type 'str' could not be converted to "
                           "Integer"),
        "unknown_key": Case([m, "train.lrate=0.1"], "train.lrate: unknown key 'lrate' (TrainConfig); valid keys "
                            "there: batch_size, lr,"),
        "layer_out_of_range": Case([m, "layer=9"], f"layer=9 is out of range: {tiny} has 4 layers (0-3)"),
        "unknown_site": Case([m, "site=resid_mid"], "site='resid_mid' is not a hook site; choices: resid_pre, "
                             "resid_post, mlp_out, attn_out"),
        "missing_model": Case([f"model={w['tmp'] / 'no_such_model'}"],
                              f"model='{w['tmp'] / 'no_such_model'}': no such directory; give an embedded model"),
        "not_a_causal_lm": Case([f"model={w['bert']}"], f"model='{w['bert']}' is not a causal language model: "
                                "its checkpoint is a BertModel (bert)"),
        "empty_corpus": Case([m, f"source.corpus={w['tmp'] / 'empty.txt'}"],
                             f"corpus='{w['tmp'] / 'empty.txt'}' is empty: it holds no text"),
        "missing_corpus": Case([m, f"source.corpus={w['tmp'] / 'nope.txt'}"],
                               f"corpus='{w['tmp'] / 'nope.txt'}' is neither an embedded corpus (factbook), a file "
                               "or folder, nor a Hugging Face dataset (hf:<name>)"),
        "budget_below_one_batch": Case([m, "total_tokens=100"], "total_tokens=100 is smaller than one batch "
                                       "(train.batch_size=256)"),
        "k_above_d_sae": Case([m, "arch=topk", "arch.k=1000"], "arch.k=1000 is invalid for topk: it must be an "
                              "integer in [1, d_sae=128]"),
        "gpu_without_gpu": Case([m, "trainer.accelerator=gpu"], "trainer.accelerator=gpu but no CUDA GPU is "
                                "visible here (torch.cuda.is_available() is False); valid on this machine: cpu, auto"),
        "batch_not_split_over_ranks": Case([m, "trainer.strategy=ddp", "trainer.devices=2",
                                            "trainer.accelerator=cpu", "train.batch_size=255"],
                                           "train.batch_size=255 does not split evenly over 2 ranks"),
        "corrupt_checkpoint": Case([m, f"source.store_dir={w['store']}"],
                                   f"no usable checkpoint in {run_dir}/checkpoints (step-", extra=[
                                       f"warning: checkpoint {run_dir}/checkpoints/step-00000008.ckpt is unreadable "
                                       "(truncated or garbled"]),
        "corrupt_store_shard": Case([m, f"source.store_dir={w['store']}"], "activation store shard {shard} is "
                                    "corrupt (checksum mismatch); harvesting it again", code=0),
        "nan_activations": Case([f"model={w['poisoned']}", f"source.corpus={w['late']}", "source.store=false",
                                 "train.batch_size=64", "total_tokens=4096", "source.shard_contexts=4",
                                 "source.buffer_tokens=512", "train.init_batches=2"],
                                "non-finite activations (NaN/inf) in training batch "),
        "diverging_loss": Case([m, "train.lr=1e30"], "training diverged at step 1: the loss is not finite"),
    }


CASES = ["unknown_plugin", "wrong_type", "unknown_key", "layer_out_of_range", "unknown_site", "missing_model",
         "not_a_causal_lm", "empty_corpus", "missing_corpus", "budget_below_one_batch", "k_above_d_sae",
         "gpu_without_gpu", "batch_not_split_over_ranks", "corrupt_checkpoint", "corrupt_store_shard",
         "nan_activations", "diverging_loss"]
SETUP = {"corrupt_checkpoint": _corrupt_checkpoints, "corrupt_store_shard": _corrupt_shard}


@pytest.mark.parametrize("name", CASES)
def test_bad_input(world, name, tmp_path):
    if name == "gpu_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run_dir = tmp_path / "run"
    before = _snapshot(world["earlier"])
    if name in SETUP:
        SETUP[name](world, run_dir)
    case = _cases(world, run_dir)[name]
    r = run_cli(*BASE, *case.args, f"hydra.run.dir={run_dir}", cwd=world["tmp"])
    out = r.stdout + r.stderr
    print(f"[{name}] exit {r.returncode}: " + " | ".join(ln for ln in out.splitlines()
                                                          if ln.startswith(("error:", "warning:")) or "corrupt" in ln))
    assert r.returncode == case.code, out[-3000:]
    assert "Traceback" not in out
    if case.code:
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"error: {case.line}"), errors[0]
    else:
        expected = case.line.format(shard=world["shard"])
        assert sum(expected in ln for ln in out.splitlines()) == 1, out[-3000:]
        assert (run_dir / "metrics.json").is_file()
    for line in case.extra:
        assert any(ln.startswith(line) for ln in r.stderr.splitlines()), r.stderr[-2000:]
    assert _snapshot(world["earlier"]) == before  # the earlier run dir is untouched
