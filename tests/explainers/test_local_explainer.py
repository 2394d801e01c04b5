"""``explainer=local``: a transformers chat model in process (the tiny Llama made a chat model)."""
import pytest
from openai_server import chat_model

from saefw.errors import SaefwError
from saefw.registry import build, discover


@pytest.fixture(scope="module")
def chat_dir(tiny_model, tmp_path_factory):
    return chat_model(tiny_model, tmp_path_factory.mktemp("local-chat") / "model")


def test_local_chat_answers_and_counts_tokens(chat_dir):
    discover()
    chat = build("explainer", {"name": "local", "model": str(chat_dir), "device": "cpu"})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the capital of France"}]
    replies = chat.complete_many([(messages, 5), (messages, 3)])
    prompt = len(chat.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert [r.prompt_tokens for r in replies] == [prompt, prompt]
    assert [r.completion_tokens for r in replies] == [5, 3]  # a random model never stops early on this prompt
    assert replies[0].text.split()[:3] == replies[1].text.split()[:3]  # greedy: the same start
    u = chat.usage.as_dict()
    assert (u["requests"], u["prompt_tokens"], u["completion_tokens"], u["cost_usd"]) == (2, 2 * prompt, 8, None)
    assert chat.describe() == {"name": "local", "model": str(chat_dir), "path": str(chat_dir)}


def test_local_chat_needs_a_chat_model(tiny_model):
    discover()
    with pytest.raises(SaefwError, match="has no chat template: explainer=local needs a chat"):
        build("explainer", {"name": "local", "model": str(tiny_model)})
    with pytest.raises(SaefwError, match="explainer.dtype='int3' is not a dtype"):
        build("explainer", {"name": "local", "model": str(tiny_model), "dtype": "int3"})
