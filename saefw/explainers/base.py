"""The interface of an explainer LLM: chat messages in, text out, with a count of tokens (and cost) used.

A plugin subclasses :class:`ChatModel`, implements :meth:`ChatModel.complete` (one request) and may override
:meth:`ChatModel.complete_many` (e.g. with concurrent requests) and :meth:`ChatModel.check` (fail fast, with
one clear error, before any work is done: a missing key, an unreachable server, a model without a chat
template)."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

Messages = list[dict]
"""OpenAI-style chat messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]."""


@dataclass
class ChatReply:
    """One answer and the tokens it cost (as the model or server counted them)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Usage:
    """What an explainer used in one command: requests, tokens, seconds waiting, and the cost in USD when the
    prices per million tokens are known (None otherwise)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class ChatModel:
    """Base class of the explainer plugins: ``ChatModel(cfg)``; ``complete(messages, max_tokens)``."""

    plugin_name = "?"

    def __init__(self, cfg):
        self.cfg = cfg
        self.usage = Usage()
        self._lock = threading.Lock()

    # --- implemented by plugins ---
    def complete(self, messages: Messages, max_tokens: int) -> ChatReply:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`~saefw.errors.SaefwError` now if the model cannot answer (called before any work)."""

    def describe(self) -> dict:
        """What the saved results record about the explainer (never a secret)."""
        return {"name": self.plugin_name, "model": getattr(self.cfg, "model", None)}

    def prices(self) -> tuple[float | None, float | None]:
        """USD per million prompt and completion tokens (None: unknown, no cost is reported)."""
        return None, None

    # --- shared ---
    def record(self, reply: ChatReply, seconds: float) -> None:
        with self._lock:
            u = self.usage
            u.requests += 1
            u.prompt_tokens += reply.prompt_tokens
            u.completion_tokens += reply.completion_tokens
            u.seconds += seconds
            p_in, p_out = self.prices()
            if p_in is not None and p_out is not None:
                u.cost_usd = (u.prompt_tokens * p_in + u.completion_tokens * p_out) / 1e6

    def timed(self, messages: Messages, max_tokens: int) -> ChatReply:
        start = time.perf_counter()
        reply = self.complete(messages, max_tokens)
        self.record(reply, time.perf_counter() - start)
        return reply

    def complete_many(self, requests: list[tuple[Messages, int]], desc: str = "asking the explainer") \
            -> list[ChatReply]:
        """Answer (messages, max_tokens) requests in order; one at a time unless a plugin overrides this."""
        from tqdm.auto import tqdm

        return [self.timed(m, n) for m, n in tqdm(requests, desc=desc, unit="req", disable=not requests)]
