"""``explainer=openai``: any OpenAI-compatible chat endpoint (OpenAI, a vLLM or ``transformers serve`` server, ...)
through the ``openai`` client (``pip install saefw[explain]``).

The key is read from the environment variable ``api_key_env`` names (never from the config, so it is never saved
with the results); ``api_key_env: null`` talks to a server that needs no key. Every request has a timeout and
``max_retries`` retries (the client's own, with backoff); ``concurrency`` requests run at once in threads. Before
any work, :meth:`OpenAIChat.check` lists the server's models, so a missing key, a refused key or an unreachable
endpoint is one clear error line at once, never a hang.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from saefw.errors import SaefwError
from saefw.explainers.base import ChatModel, ChatReply, Messages
from saefw.registry import register


@dataclass
class OpenAIConfig:
    model: str = field(default="gpt-4o-mini", metadata={"help": "the chat model the server serves"})
    base_url: str | None = field(default=None, metadata={"help": (
        "null: the client's (OPENAI_BASE_URL, else https://api.openai.com/v1)")})
    api_key_env: str | None = field(default="OPENAI_API_KEY", metadata={"help": (
        "the environment variable holding the key; null: a server that needs none")})
    timeout: float = field(default=60.0, metadata={"help": "seconds per request (and for the connection check)"})
    max_retries: int = field(default=2, metadata={"help": "retries of a failed request"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0: the most likely reply"})
    price_input_per_mtok: float | None = field(default=None, metadata={"help": (
        "USD per million prompt tokens (for the cost count; null: unknown)")})
    price_output_per_mtok: float | None = field(default=None, metadata={"help": (
        "USD per million completion tokens (null: unknown)")})


@register("explainer", "openai", OpenAIConfig)
class OpenAIChat(ChatModel):
    """Chat completions from an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, cfg: OpenAIConfig):
        super().__init__(cfg)
        try:
            import openai
        except ImportError:
            raise SaefwError("explainer=openai needs the openai package: pip install 'saefw[explain]'") from None
        if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.timeout <= 0:
            raise SaefwError(f"explainer.concurrency={cfg.concurrency} must be >= 1, explainer.max_retries="
                             f"{cfg.max_retries} >= 0 and explainer.timeout={cfg.timeout} > 0")
        key = "not-needed"
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise SaefwError(f"explainer=openai needs an API key: the environment variable {cfg.api_key_env} is "
                                 f"not set (explainer.api_key_env names the variable; null for a server without keys)")
        self._openai = openai
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
        self.client = openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout,
                                    max_retries=cfg.max_retries)
        self.endpoint = str(self.client.base_url).rstrip("/")

    def _fail(self, exc: Exception, what: str) -> SaefwError:
        o = self._openai
        if isinstance(exc, o.APITimeoutError):
            why = f"no answer within {self.cfg.timeout:g} s (explainer.timeout)"
        elif isinstance(exc, o.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            why = f"cannot connect ({str(cause or exc).splitlines()[0][:160]})"
        elif isinstance(exc, o.AuthenticationError):
            why = f"the key in {self.cfg.api_key_env} was refused"
        elif isinstance(exc, o.APIStatusError):
            why = f"HTTP {exc.status_code}: {str(exc.message).splitlines()[0][:200]}"
        else:
            why = str(exc).splitlines()[0][:200]
        return SaefwError(f"explainer=openai at {self.endpoint}: {what} failed: {why}")

    def check(self) -> None:
        o = self._openai
        try:
            models = [m.id for m in self.client.with_options(max_retries=0).models.list()]
        except o.NotFoundError:
            return  # a server without /models can still chat
        except o.OpenAIError as exc:
            raise self._fail(exc, "listing the models") from None
        if models and self.cfg.model not in models:
            logging.getLogger(__name__).warning("explainer.model=%s is not among the server's models (%s); asking "
                                                "anyway", self.cfg.model, ", ".join(models[:10]))

    def complete(self, messages: Messages, max_tokens: int) -> ChatReply:
        try:
            r = self.client.chat.completions.create(model=self.cfg.model, messages=messages, max_tokens=max_tokens,
                                                    temperature=self.cfg.temperature)
        except self._openai.OpenAIError as exc:
            raise self._fail(exc, "a chat completion") from None
        text = (r.choices[0].message.content or "") if r.choices else ""
        usage = r.usage
        return ChatReply(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0)

    def complete_many(self, requests, desc: str = "asking the explainer"):
        """Up to ``concurrency`` requests at once; answers in request order."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool, \
                tqdm(total=len(requests), desc=desc, unit="req", disable=not requests) as bar:
            futures = [pool.submit(self.timed, m, n) for m, n in requests]
            out = []
            try:
                for f in futures:
                    out.append(f.result())
                    bar.update(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            return out

    def prices(self):
        return self.cfg.price_input_per_mtok, self.cfg.price_output_per_mtok

    def describe(self) -> dict:
        return {"name": "openai", "model": self.cfg.model, "base_url": self.endpoint}
