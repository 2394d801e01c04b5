"""Explainer LLMs (the ``explainer`` plugin family): the chat models ``python -m saefw.explain`` asks to explain a
feature and to answer the scorers' questions. One module each, imported by ``registry.discover``."""
from saefw.explainers.base import ChatModel, ChatReply, Usage  # noqa: F401
