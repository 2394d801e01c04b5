"""A causal LM loaded through ``transformers`` with hook points at (layer, site), for any of the GPT-2,
GPT-NeoX/Pythia and Llama-style families.

Sites: ``resid_pre`` (input of block ``layer``), ``resid_post`` (its output), ``attn_out`` and ``mlp_out``
(outputs of its attention and MLP modules) and ``mlp_in`` (the MLP module's input, after the block's pre-MLP norm:
what a transcoder reads; TransformerLens calls it ``blocks.L.ln2.hook_normalized``). Position 0 of every context is BOS: it is never harvested, never
replaced when splicing, and never scored, so every metric uses the same set of positions.

A forward can also start at a hook point instead of the embeddings (:meth:`LanguageModel.resumed`): given the
residual stream entering block s (BOS included), only blocks s … N−1, the final norm and the unembedding run.
An edit at (layer, site) changes nothing before block ``resume_block(layer, site)``, so an evaluation that has
the clean residual stream there (the activation store holds it) pays for the later blocks alone.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from saefw.errors import SaefwError
from saefw.lm.embedded import EMBEDDED_MODELS, resolve_model
from saefw.lm.shared_weights import load_causal_lm

SITES = ("resid_pre", "resid_post", "mlp_out", "attn_out", "mlp_in")
RESID_SITES = ("resid_pre", "resid_post")
# sites that are a module's input (a forward pre-hook) rather than its output
_INPUT_SITES = ("resid_pre", "mlp_in")
# TransformerLens's names where they are not blocks.L.hook_<site>
_TL_NAMES = {"mlp_in": "ln2.hook_normalized"}
_BLOCK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
# the module that reads the last block's output (a forward that starts after the last block enters here)
_FINAL_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")
_ATTN_NAMES = ("self_attn", "attn", "attention")
_MLP_NAMES = ("mlp",)


class _StopForward(Exception):
    pass


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _block_path(model: nn.Module) -> str:
    for path in _BLOCK_PATHS:
        if isinstance(_get(model, path), nn.ModuleList):
            return path
    raise SaefwError(f"cannot find the transformer blocks of {type(model).__name__}; "
                     f"supported layouts: {', '.join(_BLOCK_PATHS)}")


def block_list(model: nn.Module) -> nn.ModuleList:
    return _get(model, _block_path(model))


def resume_point(layer: int, site: str) -> tuple[int, str]:
    """The hook point whose whole activation [B, T, d] is the residual stream entering block
    :func:`resume_block` ``(layer, site)``: the hook itself for the residual sites, the block's input for
    ``attn_out``/``mlp_out`` (their block must run again, with the edit inside it)."""
    return (layer, "resid_post") if site == "resid_post" else (layer, "resid_pre")


def resume_block(layer: int, site: str) -> int:
    """The first block whose output an edit at (layer, site) can change."""
    return layer + 1 if site == "resid_post" else layer


def _child(block: nn.Module, candidates: tuple[str, ...], site: str) -> nn.Module:
    for name in candidates:
        if isinstance(getattr(block, name, None), nn.Module):
            return getattr(block, name)
    raise SaefwError(f"site={site} is not supported for {type(block).__name__}: no submodule named "
                     f"{' or '.join(candidates)}")


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


def load_config(name: str, local_files_only: bool = True, trust_remote_code: bool = False):
    """(local path or hub id, config) of a causal LM; clear errors for a model that cannot be found, needs code
    it was not allowed to run, or is not a causal LM."""
    from transformers import AutoConfig

    path = resolve_model(name)
    if name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
        raise SaefwError(f"model={name!r}: no such directory; give an embedded model "
                         f"({', '.join(EMBEDDED_MODELS)}), a local checkpoint directory, or a hub id in the Hugging "
                         f"Face cache")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local_files_only,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if "trust_remote_code" in str(exc):
            raise SaefwError(f"model={name!r} ships its own code, which saefw does not run unless asked: set "
                             f"source.trust_remote_code=true if you trust it ({first})") from None
        raise SaefwError(f"model={name!r} could not be loaded: it is not an embedded model "
                         f"({', '.join(EMBEDDED_MODELS)}), a local checkpoint directory, nor in the Hugging Face "
                         f"cache ({first})") from None
    check_causal_lm(name, config)
    return path, config


def check_causal_lm(name: str, config) -> None:
    """The checkpoint must be a decoder-only causal LM: its saved architecture one of ``transformers``' causal-LM
    classes (a BERT saved as ``BertModel``/``BertForMaskedLM``, an encoder-decoder like T5 are refused)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal.update([v] if isinstance(v, str) else v)
    archs = list(getattr(config, "architectures", None) or [])
    kind = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        what = f"an encoder-decoder model ({kind})"
    elif archs and not any(a in causal for a in archs):
        what = f"a {archs[0]} ({kind})"
    elif not archs and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        what = f"a {kind} model without a causal-LM head"
    else:
        return
    raise SaefwError(f"model={name!r} is not a causal language model: its checkpoint is {what}; saefw hooks "
                     f"decoder-only causal LMs (e.g. LlamaForCausalLM, GPT2LMHeadModel, GPTNeoXForCausalLM)")


def d_model_of(config) -> int:
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def model_digest(name: str, local_files_only: bool = True) -> str:
    """A digest of the model's config and weight files, so stores harvested from other weights are never reused.

    Hashing 500 MB of weights takes a second or two, so the result is memoised per (file, size, mtime) in the
    cache dir. A hub id is resolved to its local snapshot folder first."""
    import hashlib
    import json

    from saefw.app.atomic import write_json
    from saefw.lm.embedded import cache_dir

    path = Path(resolve_model(name)).expanduser()
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, local_files_only=local_files_only))
        except Exception as exc:
            raise SaefwError(f"model={name!r}: cannot find its files to fingerprint ({exc})") from None
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin", ".pt", ".gguf")
                                                                 or p.name == "config.json"))
    memo_file = cache_dir() / "model_digests.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        memo_key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if memo_key not in memo:
            fh_hash = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    fh_hash.update(chunk)
            memo[memo_key] = fh_hash.hexdigest()
        h.update(f"{f.name}:{memo[memo_key]}".encode())
    write_json(memo_file, memo, indent=None)
    return h.hexdigest()[:16]


def hook_name(layer: int, site: str) -> str:
    """TransformerLens/SAELens name of a hook point, e.g. ``blocks.6.hook_resid_post``, ``blocks.6.ln2.hook_normalized``
    (mlp_in)."""
    return f"blocks.{layer}.{_TL_NAMES.get(site, f'hook_{site}')}"


def n_layers_of(config) -> int:
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not n:
        raise SaefwError(f"cannot tell how many layers {config.model_type} has")
    return int(n)


def check_layer_site(name: str, n_layers: int, layer: int, site: str) -> None:
    if not 0 <= layer < n_layers:
        raise SaefwError(f"layer={layer} is out of range: {name} has {n_layers} layers (0-{n_layers - 1})")
    if site not in SITES:
        raise SaefwError(f"site={site!r} is not a hook site; choices: {', '.join(SITES)}")


class LanguageModel:
    """A ``transformers`` causal LM with one hook point: harvest, splice, and next-token cross-entropy.

    ``reads``/``writes``: the hook points a dictionary reads and writes when they are not just (layer, site) — a
    transcoder reads ``[(L, "mlp_in")]`` and writes ``[(L, "mlp_out")]``, a crosscoder reads and writes one site at
    several layers. (layer, site) is then the first written point: splicing (:meth:`logits`) replaces every
    written point, ``generate`` edits (layer, site)."""

    def __init__(self, name: str, layer: int, site: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 local_files_only: bool = True, trust_remote_code: bool = False,
                 reads: list[tuple[int, str]] | None = None, writes: list[tuple[int, str]] | None = None):
        from transformers import AutoTokenizer

        self.name, self.layer, self.site, self.device = name, layer, site, torch.device(device)
        path, config = load_config(name, local_files_only, trust_remote_code)
        self.n_layers = n_layers_of(config)
        check_layer_site(name, self.n_layers, layer, site)
        self.model, self._weights = load_causal_lm(path, dtype, self.device, local_files_only, trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_files_only,
                                                       trust_remote_code=trust_remote_code)
        bos = self.tokenizer.bos_token_id
        self.bos_id = bos if bos is not None else self.tokenizer.eos_token_id
        self.sep_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.bos_id
        self.d_model = d_model_of(config)
        self._block_path = _block_path(self.model)
        self._blocks = _get(self.model, self._block_path)
        self._module = self.hook_module(layer, site)
        self.hook_name = hook_name(layer, site)
        self.writes = list(writes or [(layer, site)])
        self.reads = list(reads or self.writes)
        for point in {*self.reads, *self.writes}:
            check_layer_site(name, self.n_layers, *point)
        self.one_point = self.reads == self.writes == [(layer, site)]
        # the latest point a forward can start at and still see every read point and apply every edit
        self.resume_point = min((resume_point(*p) for p in {*self.reads, *self.writes}),
                                key=lambda p: resume_block(*p))
        self._resume_checked: dict[tuple[int, str], bool] = {}

    def hook_module(self, layer: int, site: str) -> nn.Module:
        """The module whose input (resid_pre) or output (the other sites) is the hook point."""
        check_layer_site(self.name, self.n_layers, layer, site)
        block = self._blocks[layer]
        if site == "attn_out":
            return _child(block, _ATTN_NAMES, site)
        if site in ("mlp_out", "mlp_in"):
            return _child(block, _MLP_NAMES, site)
        return block

    # --- tokenisation ---
    def iter_contexts(self, docs: Iterable[str], context_size: int, chunk: int = 256) -> Iterator[Tensor]:
        """Concatenate docs (separated by EOS) and cut fixed-length contexts, each starting with BOS; yields them
        ``chunk`` contexts [≤ chunk, context_size] at a time, so the corpus is never held in memory."""
        body = context_size - 1
        stream: list[int] = []
        for doc in docs:
            stream.extend(self.tokenizer(doc, add_special_tokens=False).input_ids)
            stream.append(self.sep_id)
            while len(stream) >= chunk * body:
                yield self._cut(stream[: chunk * body], body)
                del stream[: chunk * body]
        if len(stream) >= body:
            n = len(stream) // body
            yield self._cut(stream[: n * body], body)

    def _cut(self, ids: list[int], body: int) -> Tensor:
        t = torch.tensor(ids, dtype=torch.long).view(-1, body)
        return torch.cat([torch.full((len(t), 1), self.bos_id, dtype=torch.long), t], dim=1)

    def contexts(self, docs: Iterable[str], context_size: int) -> Tensor:
        """All contexts of ``docs`` [N, context_size] (see :meth:`iter_contexts`)."""
        parts = list(self.iter_contexts(docs, context_size))
        if not parts:
            raise SaefwError(f"the corpus has fewer tokens than one context of {context_size}")
        return torch.cat(parts)

    # --- hooks ---
    @contextmanager
    def _hook(self, fn: Callable[[Tensor], Tensor | None], layer: int | None = None, site: str | None = None):
        """Install ``fn`` on a hook point (default: this model's): it sees the activation [B, T, d] and may
        return a replacement."""
        site = self.site if site is None else site
        module = self._module if layer is None else self.hook_module(layer, site)
        if site in _INPUT_SITES:
            def pre(module, args, kwargs):
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})
            handle = module.register_forward_pre_hook(pre, with_kwargs=True)
        else:
            def post(module, args, out):
                new = fn(_first(out))
                return None if new is None else _with_first(out, new)
            handle = module.register_forward_hook(post)
        try:
            yield
        finally:
            handle.remove()

    def hooked(self, fn: Callable[[Tensor], Tensor | None], layer: int, site: str):
        """A context manager: inside it, ``fn`` sees the whole activation [B, T, d] at (layer, site) in every
        forward (:meth:`generate`'s cached steps included) and may return a replacement (None: unchanged). For
        edits that need a second point beside the one :meth:`generate` edits (a transcoder steered by clamping
        reads its input site there)."""
        return self._hook(fn, layer, site)

    # --- forwards that start at a hook point ---
    def _entry(self, point: tuple[int, str]) -> tuple[int, nn.Module | None]:
        s = resume_block(*point)
        if s < self.n_layers:
            return s, self._blocks[s]
        norms = [m for m in (_get(self.model, p) for p in _FINAL_NORM_PATHS) if isinstance(m, nn.Module)]
        return s, norms[0] if norms else None

    def can_resume(self, point: tuple[int, str] | None = None) -> bool:
        """Whether a forward can start at ``point`` (default: this model's :attr:`resume_point`)."""
        return self._entry(point or self.resume_point)[1] is not None

    @contextmanager
    def resumed(self, state: Tensor, point: tuple[int, str] | None = None):
        """Inside, a forward of ``self.model`` starts at ``point`` (default :attr:`resume_point`): the blocks
        before :func:`resume_block` are left out and the residual stream entering the first one that runs is
        ``state`` [B, T, d] (the whole activation at ``point``, BOS included). The model's own forward still
        builds the masks and position encodings from the token ids it is given (the embedding lookup is the only
        work wasted), so every family's attention sees what it sees in a full forward."""
        point = point or self.resume_point
        s, entry = self._entry(point)
        if entry is None:
            raise SaefwError(f"{self.name}: cannot start a forward after block {s - 1} (no final norm found among "
                             f"{', '.join(_FINAL_NORM_PATHS)})")

        def inject(module, args, kwargs):
            if args:
                return (state.to(args[0].dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": state.to(kwargs["hidden_states"].dtype)}

        owner_path, _, attr = self._block_path.rpartition(".")
        owner = _get(self.model, owner_path) if owner_path else self.model
        handle = entry.register_forward_pre_hook(inject, with_kwargs=True, prepend=True)
        setattr(owner, attr, self._blocks[s:])
        try:
            yield
        finally:
            setattr(owner, attr, self._blocks)
            handle.remove()

    @torch.no_grad()
    def resume_matches(self, tokens: Tensor, state: Tensor, point: tuple[int, str] | None = None,
                       tol: float = 1e-4) -> bool:
        """Whether the forward started at ``point`` from ``state`` gives the full forward's logits for
        ``tokens`` (checked once per point and model; a model whose blocks see more than the residual stream,
        e.g. per-layer token inputs, fails it and its callers fall back to full forwards)."""
        point = point or self.resume_point
        if point not in self._resume_checked:
            ok = self.can_resume(point)
            if ok:
                full = self.model(tokens.to(self.device), use_cache=False).logits.float()
                with self.resumed(state.to(self.device), point):
                    part = self.model(tokens.to(self.device), use_cache=False).logits.float()
                ok = bool(torch.allclose(full, part, rtol=tol, atol=tol))
            self._resume_checked[point] = ok
        return self._resume_checked[point]

    def _forward(self, tokens: Tensor, edits: dict[tuple[int, str], Callable[[Tensor], Tensor | None]],
                 start: Tensor | None = None, start_point: tuple[int, str] | None = None):
        """``self.model`` on ``tokens`` with ``edits`` (hook point → function of the activation returning its
        replacement or None), from the embeddings or, with ``start``, from ``start_point``'s state. An edit at
        the start point itself is applied to ``start``."""
        with ExitStack() as stack:
            if start is not None:
                start_point = start_point or self.resume_point
                edits = dict(edits)
                at_start = edits.pop(start_point, None)
                state = start.to(self.device)
                if at_start is not None:
                    new = at_start(state)
                    state = state if new is None else new
                stack.enter_context(self.resumed(state, start_point))
            for point, fn in edits.items():
                stack.enter_context(self._hook(fn, *point))
            return self.model(tokens.to(self.device), use_cache=False)

    @torch.no_grad()
    def activations(self, tokens: Tensor) -> Tensor:
        """Hook-point activations [B, T, d] for ``tokens`` [B, T]; the forward stops right after the hook."""
        return self.capture(tokens, [(self.layer, self.site)])[(self.layer, self.site)]

    @torch.no_grad()
    def capture(self, tokens: Tensor, points: list[tuple[int, str]],
                edits: dict[tuple[int, str], Callable[[Tensor], Tensor]] | None = None,
                start: Tensor | None = None, start_point: tuple[int, str] | None = None
                ) -> dict[tuple[int, str], Tensor]:
        """Activations [B, T, d] at several hook points (layer, site) from one forward, stopped as soon as the
        last of them has been seen (so harvesting layers 6 and 25 together costs one pass to layer 25).

        ``edits`` maps hook points upstream of ``points`` to functions returning a replacement of the whole
        activation [B, T, d] (BOS included: the edit decides), so what is captured downstream is the edited
        model's (the cross-layer ablations of :mod:`saefw.relations.ablation`). ``start``: the state at
        ``start_point`` to begin from (see :meth:`resumed`; an edit at ``start_point`` applies to it)."""
        captured: dict[tuple[int, str], Tensor] = {}
        wanted = set(points)
        if start is not None and (start_point or self.resume_point) in wanted:
            # the start point's block does not run in a resumed forward: its activation is the state itself
            captured[start_point or self.resume_point] = start.to(self.device).detach()
            if len(captured) == len(wanted):
                return captured

        def grabber(point):
            def grab(x):
                captured[point] = x.detach()
                if len(captured) == len(wanted):
                    raise _StopForward
            return grab

        with ExitStack() as stack:
            for point in wanted:
                stack.enter_context(self._hook(grabber(point), *point))
            try:
                self._forward(tokens, edits or {}, start, start_point)
            except _StopForward:
                pass
        return captured

    @torch.no_grad()
    def logits(self, tokens: Tensor, replace: Callable[[Tensor], Tensor] | None = None,
               capture: dict | None = None, start: Tensor | None = None) -> Tensor:
        """Full-model logits [B, T, V]. ``replace`` maps the non-BOS activations [B, T−1, d] to their
        replacement; ``capture`` (a dict) receives the clean activation under key ``"x"``. ``start``: the
        residual stream at :attr:`resume_point` [B, T, d] for these tokens: the forward runs from there on
        (:meth:`resumed`), with the same result.

        With ``reads``/``writes`` other than (layer, site), ``replace`` maps the clean non-BOS activations of every
        read point, side by side [B, T−1, Σ d], to those of every written point [B, T−1, Σ d]: one forward that
        stops at the last read point captures them (a crosscoder reads later layers than the first one it
        writes), then the spliced forward replaces every written point."""
        if replace is not None and not self.one_point:
            clean = self.capture(tokens, self.reads, start=start)
            new = replace(torch.cat([clean[p][:, 1:] for p in self.reads], -1))
            sizes = [self.d_model] * len(self.writes)
            edits = {p: _set_body(part) for p, part in zip(self.writes, new.split(sizes, -1))}
            return self._forward(tokens, edits, start).logits.float()

        def splice(x):
            if capture is not None:
                capture["x"] = x.detach()
            if replace is None:
                return None
            new = x.clone()
            new[:, 1:] = replace(x[:, 1:]).to(x.dtype)
            return new

        return self._forward(tokens, {(self.layer, self.site): splice}, start).logits.float()

    @torch.no_grad()
    def logits_and_final(self, tokens: Tensor, replace: Callable[[Tensor], Tensor] | None = None,
                         start: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits [B, T, V] (as :meth:`logits`, ``replace`` included) and the unembedding's input [B, T, d] (the
        last hidden state, after the final norm)."""
        seen: dict[str, Tensor] = {}
        handle = self.model.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: seen.__setitem__("h", args[0].detach()))
        try:
            logits = self.logits(tokens, replace=replace, start=start)
        finally:
            handle.remove()
        return logits, seen["h"]

    @torch.no_grad()
    def capture_and_logits(self, tokens: Tensor, points: list[tuple[int, str]]
                           ) -> tuple[dict[tuple[int, str], Tensor], Tensor, Tensor]:
        """(activations at ``points`` as :meth:`capture`, logits, unembedding input as :meth:`logits_and_final`)
        from one clean forward run to the end."""
        captured: dict[tuple[int, str], Tensor] = {}

        def grabber(point):
            return lambda x: captured.__setitem__(point, x.detach())

        with ExitStack() as stack:
            for point in set(points):
                stack.enter_context(self._hook(grabber(point), *point))
            logits, final = self.logits_and_final(tokens)
        return captured, logits, final

    @torch.no_grad()
    def unembed(self, final: Tensor) -> Tensor:
        """Logits [B, T, V] from the unembedding's input (see :meth:`logits_and_final`)."""
        head = self.model.get_output_embeddings()
        return head(final.to(self.device, next(head.parameters()).dtype)).float()

    def unembedding_affine(self) -> tuple[Tensor, Tensor | None] | None:
        """(W [V, d], b [V] or None) when the unembedding is a plain ``nn.Linear`` (logits = h Wᵀ + b); else None."""
        head = self.model.get_output_embeddings()
        return (head.weight, head.bias) if type(head) is nn.Linear else None

    @property
    def precision_tag(self) -> str:
        """What a cached clean forward depends on beyond the tokens: the weights' dtype and the device type."""
        return f"{str(next(self.model.parameters()).dtype).removeprefix('torch.')}_{self.device.type}"

    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, replace: Callable[[Tensor], Tensor] | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop_at_eos: bool = True) -> Tensor:
        """Continue ``tokens`` [B, T] (BOS at position 0) by up to ``max_new_tokens`` with ``transformers``'
        ``generate`` (KV cache); returns the new tokens [B, ≤ max_new_tokens].

        ``replace`` edits the hook activation at every position after BOS — prompt and generated tokens alike,
        as :meth:`logits` does for one forward: the hook counts the positions it has seen, so the cached steps
        (one new position each) are edited and BOS never is. ``temperature`` 0 is greedy; otherwise tokens are
        sampled from softmax(logits / temperature) within the top-``top_p`` nucleus, from a generator seeded with
        ``seed`` (the global RNG state is restored afterwards). The model's own generation defaults (top-k,
        repetition penalty ...) are not applied."""
        from transformers import GenerationConfig

        if temperature < 0 or not 0 < top_p <= 1:
            raise SaefwError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
        seen = {"n": 0}

        def splice(x):
            start, seen["n"] = seen["n"], seen["n"] + x.shape[1]
            if replace is None:
                return None
            new = x.clone()
            skip = max(0, 1 - start)  # absolute position 0 (BOS) is never edited
            new[:, skip:] = replace(x[:, skip:]).to(x.dtype)
            return new

        eos = self.tokenizer.eos_token_id
        sample = temperature > 0
        gen = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=0 if stop_at_eos else max_new_tokens,
                               do_sample=sample, temperature=temperature if sample else None,
                               top_p=top_p if sample else None, top_k=0 if sample else None,
                               eos_token_id=eos, pad_token_id=eos if eos is not None else self.bos_id)
        tokens = tokens.to(self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._hook(splice):
            torch.manual_seed(seed)
            out = self.model.generate(tokens, attention_mask=torch.ones_like(tokens), generation_config=gen)
        return out[:, tokens.shape[1]:].cpu()


def _set_body(body: Tensor) -> Callable[[Tensor], Tensor]:
    """An edit that puts ``body`` [B, T−1, d] in place of an activation's non-BOS positions."""
    def edit(x):
        new = x.clone()
        new[:, 1:] = body.to(x.dtype)
        return new
    return edit


def next_token_ce(logits: Tensor, tokens: Tensor, log_probs: Tensor | None = None) -> Tensor:
    """Per-position CE [B, T−2] of predicting token t+1 from positions 1..T−2 (BOS position excluded).
    ``log_probs``: ``log_softmax(logits[:, 1:-1])`` when the caller already has it (it costs a pass over B·T·V)."""
    lp = torch.log_softmax(logits[:, 1:-1], dim=-1) if log_probs is None else log_probs
    target = tokens[:, 2:].to(lp.device)
    return -lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
