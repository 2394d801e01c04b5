"""``explainer=openai`` against a real OpenAI-compatible server (``transformers serve`` on 127.0.0.1 serving the
tiny Llama as a chat model), and its failures: a missing key and an unreachable or silent endpoint are one error
line each, within seconds."""
import socket

import pytest
from openai_server import free_port

from saefw.errors import SaefwError
from saefw.registry import build, discover


def test_openai_chat_through_a_real_server(openai_server):
    from transformers import AutoTokenizer

    url, model = openai_server
    discover()
    chat = build("explainer", {"name": "openai", "base_url": url, "model": str(model), "api_key_env": None,
                               "concurrency": 2, "timeout": 60, "price_input_per_mtok": 0.5,
                               "price_output_per_mtok": 2.0})
    chat.check()
    requests = [([{"role": "user", "content": f"country number {k}"}], 4) for k in range(3)]
    replies = chat.complete_many(requests)
    tok = AutoTokenizer.from_pretrained(str(model))
    # the server counts the templated prompt exactly as the tokenizer does
    want = [len(tok.apply_chat_template(m, add_generation_prompt=True, return_dict=True)["input_ids"])
            for m, _ in requests]
    assert [r.prompt_tokens for r in replies] == want
    assert all(isinstance(r.text, str) and r.text and 1 <= r.completion_tokens <= 4 for r in replies)
    u = chat.usage
    assert (u.requests, u.prompt_tokens) == (3, sum(want))
    assert u.cost_usd == pytest.approx((u.prompt_tokens * 0.5 + u.completion_tokens * 2.0) / 1e6)
    assert chat.describe() == {"name": "openai", "model": str(model), "base_url": url}


def test_a_missing_key_is_a_clear_error(monkeypatch):
    discover()
    monkeypatch.delenv("SAEFW_TEST_KEY", raising=False)
    with pytest.raises(SaefwError, match="needs an API key: the environment variable SAEFW_TEST_KEY is not set"):
        build("explainer", {"name": "openai", "api_key_env": "SAEFW_TEST_KEY"})


def test_unreachable_and_silent_endpoints_fail_fast():
    discover()
    closed = free_port()  # nothing listens there
    chat = build("explainer", {"name": "openai", "base_url": f"http://127.0.0.1:{closed}/v1", "api_key_env": None,
                               "timeout": 2, "max_retries": 0})
    with pytest.raises(SaefwError, match=rf"at http://127.0.0.1:{closed}/v1: listing the models failed: cannot "
                                         rf"connect"):
        chat.check()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        chat = build("explainer", {"name": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": None,
                                   "timeout": 1.5, "max_retries": 1})
        with pytest.raises(SaefwError, match=r"listing the models failed: no answer within 1.5 s"):
            chat.check()
        with pytest.raises(SaefwError, match=r"a chat completion failed: no answer within 1.5 s"):
            chat.complete([{"role": "user", "content": "hi"}], 4)
