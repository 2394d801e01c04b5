"""One copy of a checkpoint's weights per process, however many :class:`~saefw.lm.model.LanguageModel` use it.

The jobs of a one-pass group (``hydra/launcher=one_pass``) each build their own model of the same checkpoint, in
threads that run at once: one harvests the group's batches while another evaluates. Each needs a module tree of its
own, because hooks and forwards resumed at a hook point (:meth:`~saefw.lm.model.LanguageModel.resumed`) change the
tree while they run; the weights are only read. So the first load keeps a template tree that never runs, and every
model is a copy of its modules whose parameters and buffers wrap the template's storage: six jobs at layer 25 held
six copies of the 542 MB of SmolLM2-135M's weights before.

A tree's own ``.to(dtype)`` gives that tree new tensors and leaves the others as they are (the parameters are new
``Parameter`` objects over the shared storage); an in-place write to a weight would reach every tree, and nothing in
saefw writes one."""
from __future__ import annotations

import copy
import threading
import weakref
from pathlib import Path

import torch
from torch import nn

_templates: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_lock = threading.Lock()


def _files_key(path: str) -> tuple:
    """The checkpoint's files as (name, size, mtime): weights rewritten on disk are loaded anew."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return ()
    stats = [(f.name, f.stat()) for f in folder.iterdir() if f.is_file()]
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats))


def _tree_over(template: nn.Module) -> nn.Module:
    """A copy of ``template``'s modules whose parameters and buffers share its storage (tied weights stay tied)."""
    memo: dict[int, object] = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in template.parameters()}
    memo.update({id(b): b.detach() for b in template.buffers()})
    return copy.deepcopy(template, memo)


def load_causal_lm(path: str, dtype: torch.dtype, device: torch.device, local_files_only: bool,
                   trust_remote_code: bool) -> tuple[nn.Module, nn.Module]:
    """(model, template): a causal LM in eval mode without gradients, its weights shared with every other model of
    the same checkpoint, dtype and device alive in this process. Keep ``template`` as long as the model: it holds the
    weights' only unmodified tree."""
    from transformers import AutoModelForCausalLM

    key = (str(path), str(dtype), str(device), trust_remote_code, _files_key(path))
    with _lock:  # one thread loads; the others copy its template
        template = _templates.get(key)
        if template is None:
            template = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local_files_only,
                                                            trust_remote_code=trust_remote_code).to(device).eval()
            template.requires_grad_(False)
            _templates[key] = template
        return _tree_over(template), template
