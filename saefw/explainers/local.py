"""``explainer=local``: a ``transformers`` chat model run in this process, offline — by default the embedded
SmolLM2-135M-Instruct (weak explanations, but the whole pipeline runs with no network); any local chat model
directory (or a hub id already in the cache) works.

Generation is greedy unless ``temperature`` > 0 (then sampled with a generator seeded per request, so a rerun
gives the same answers); the model's own generation defaults are not applied."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saefw.errors import SaefwError
from saefw.explainers.base import ChatModel, ChatReply, Messages
from saefw.registry import register


@dataclass
class LocalConfig:
    model: str = field(default="smollm2-135m", metadata={"help": (
        "embedded alias, local chat model directory, or a cached hub id")})
    device: str = field(default="auto", metadata={"help": "auto: the GPU when CUDA is available, else cpu"})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 (keep float32 on CPU)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0: greedy"})
    max_prompt_tokens: int = field(default=4096, metadata={"help": (
        "longer prompts are refused with an error (the model would degrade anyway)")})
    seed: int = field(default=0, metadata={"help": "the sampling seed"})


@register("explainer", "local", LocalConfig)
class LocalChat(ChatModel):
    """A chat model through ``AutoModelForCausalLM`` and the tokenizer's chat template."""

    def __init__(self, cfg: LocalConfig):
        super().__init__(cfg)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from saefw.app.device import resolve_device
        from saefw.lm.embedded import resolve_model
        from saefw.lm.model import load_config

        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if cfg.dtype not in dtypes:
            raise SaefwError(f"explainer.dtype={cfg.dtype!r} is not a dtype; choices: {', '.join(dtypes)}")
        path, _ = load_config(cfg.model)  # a clear error for a model that is not there
        self.path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise SaefwError(f"explainer.model={cfg.model!r} has no chat template: explainer=local needs a chat "
                             f"(instruct) model, e.g. smollm2-135m")
        self.device = torch.device(resolve_device(cfg.device))
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[cfg.dtype], local_files_only=True)
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def complete(self, messages: Messages, max_tokens: int) -> ChatReply:
        from transformers import GenerationConfig

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"]
        if ids.shape[1] > self.cfg.max_prompt_tokens:
            raise SaefwError(f"a prompt of {ids.shape[1]} tokens exceeds explainer.max_prompt_tokens="
                             f"{self.cfg.max_prompt_tokens}: show fewer or shorter examples")
        sample = self.cfg.temperature > 0
        eos = self.tokenizer.eos_token_id
        gen = GenerationConfig(max_new_tokens=max_tokens, do_sample=sample,
                               temperature=self.cfg.temperature if sample else None, top_p=None, top_k=None,
                               eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id or eos)
        ids = ids.to(self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed + self.usage.requests)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gen)
        new = out[0, ids.shape[1]:]
        return ChatReply(self.tokenizer.decode(new, skip_special_tokens=True), int(ids.shape[1]), int(new.numel()))

    def describe(self) -> dict:
        return {"name": "local", "model": self.cfg.model, "path": str(self.path)}
