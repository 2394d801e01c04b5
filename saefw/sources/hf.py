"""Activations of a ``transformers`` causal LM over a text corpus, read from the activation store (or live)."""
from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import II
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from saefw.app.atomic import atomic_path, write_json
from saefw.app.distributed import local_device
from saefw.errors import SaefwError
from saefw.lm.clean_summary import LOGITS_BATCH, CleanSummary, summary_weights
from saefw.lm.corpus import Corpus, split_documents
from saefw.lm.model import (
    LanguageModel,
    check_layer_site,
    d_model_of,
    hook_name,
    load_config,
    model_digest,
    n_layers_of,
)
from saefw.registry import register
from saefw.sources.base import ActivationSource, RunSpec
from saefw.sources.shuffle import Chunk, ShuffleBuffer
from saefw.store.activation_store import (
    DTYPES,
    ActivationStore,
    Manifest,
    StoreKey,
    default_root,
)
from saefw.store.harvest import fill_stores

log = logging.getLogger(__name__)


@dataclass
class HFSourceConfig:
    # the top-level `model`, `layer`, `site` keys flow here, so `layer=25` keeps working
    model: str = field(default=II("model"), metadata={"help": (
        "an embedded alias, a local checkpoint dir or a hub id in the HF cache (default: the top-level model)")})
    layer: int = field(default=II("layer"), metadata={"help": "the hooked block (default: the top-level layer)"})
    site: str = field(default=II("site"), metadata={"help": (
        "resid_pre | resid_post | mlp_out | attn_out | mlp_in: what the dictionary reconstructs (default: the "
        "top-level site)")})
    input_site: str | None = field(default=None, metadata={"help": (
        "the site the dictionary reads when it is not `site` (a transcoder: mlp_in, with site=mlp_out); null: "
        "`site`, a plain SAE")})
    layers: list[int] | None = field(default=None, metadata={"help": (
        "a crosscoder: the layers it reads and writes together, at `site` (e.g. [5,6,7]); null: just `layer`")})
    corpus: str = field(default="factbook", metadata={"help": (
        "embedded name, a .txt/.jsonl(.gz)/.parquet file or folder, or hf:<dataset>")})
    corpus_text_field: str = field(default="text", metadata={"help": "the field holding each document's text"})
    corpus_split: str = field(default="train", metadata={"help": "Hugging Face datasets: which split to read"})
    corpus_config: str | None = field(default=None, metadata={"help": "Hugging Face datasets: config name"})
    context_size: int = field(default=128, metadata={"help": "tokens per context, BOS included (never served)"})
    forward_batch_size: int = field(default=16, metadata={"help": "contexts per model forward"})
    buffer_tokens: int = field(default=131072, metadata={"help": (
        "shuffle buffer: each batch mixes tokens from many contexts and shards")})
    # 128 contexts × 127 tokens put the standard error of ce_loss_recovered near 0.005 on SmolLM2 (see the README)
    eval_contexts: int = field(default=128, metadata={"help": (
        "held-out contexts scored by the evaluators (documents never used for training)")})
    eval_doc_fraction: float = field(default=0.05, metadata={"help": (
        "documents (by a hash of their text) held out from training")})
    device: str = field(default="auto", metadata={"help": (
        "auto: this rank's GPU when CUDA is available (cuda:<local rank>), else cpu")})
    dtype: str = field(default="float32", metadata={"help": "the model's dtype"})
    local_files_only: bool = field(default=True, metadata={"help": (
        "no network at run time; a hub cache or local dir still works")})
    trust_remote_code: bool = field(default=False, metadata={"help": (
        "run a hub model's own Python code (only for checkpoints you trust)")})
    store: bool = field(default=True, metadata={"help": (
        "harvest once into the activation store and share it (false: harvest live every run)")})
    store_dtype: str = field(default="auto", metadata={"help": (
        "auto (bfloat16 when the model runs on a GPU, else float32) | float32 | bfloat16 | float16 (half the "
        "disk and reading time of float32)")})
    store_dir: str | None = field(default=None, metadata={"help": (
        "the activation store's folder; null: $SAEFW_CACHE/stores (~/.cache/saefw/stores)")})
    shard_contexts: int = field(default=256, metadata={"help": (
        "contexts per store shard (256 × 127 tokens × 576 × 4 B ≈ 75 MB)")})


@register("source", "hf", HFSourceConfig)
class HFActivationSource(ActivationSource):
    """Hooks ``model`` at (``layer``, ``site``) and serves activations of corpus contexts (BOS first, never
    served). The document split is a fixed hash of each document's text, so the held-out contexts are identical
    across runs, seeds and sweeps.

    With ``store=true`` (the default) the train and held-out activations come from the activation store
    (:mod:`saefw.store`): the first run with a key harvests, every later run reads. Training batches come from
    the first ``⌈train_tokens / shard⌉`` shards, read in a seeded random order through a shuffle buffer of
    ``buffer_tokens`` (serve half, keep half), so memory stays flat in the budget and a run's data does not
    depend on whether the store was already there.

    The model's weights are loaded when first needed (harvesting, live mode, evaluation): a data-parallel rank
    that only reads a finished store never loads them."""

    needs_model = True
    summarize_held_out = True

    def __init__(self, cfg: HFSourceConfig, spec: RunSpec):
        super().__init__(cfg, spec)
        if cfg.context_size < 3:
            raise SaefwError(f"source.context_size={cfg.context_size} is too small; it must be at least 3")
        if not isinstance(getattr(torch, cfg.dtype, None), torch.dtype):
            raise SaefwError(f"source.dtype={cfg.dtype!r} is not a torch dtype; e.g. float32, bfloat16, float16")
        self.device = cfg.device if cfg.device != "auto" else local_device()
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SaefwError(f"source.device={cfg.device} but no CUDA GPU is visible here; valid: cpu, auto")
        self.store_dtype = resolve_store_dtype(cfg.store_dtype, self.device)
        self.corpus = Corpus(cfg.corpus, cfg.corpus_text_field, cfg.corpus_split, cfg.corpus_config)
        _, config = load_config(cfg.model, cfg.local_files_only, cfg.trust_remote_code)
        self.reads, self.writes, self.layout = read_write_points(cfg, n_layers_of(config))
        self.points = list(dict.fromkeys(self.reads + self.writes))  # the stored hook points, side by side in a row
        self._lm: LanguageModel | None = None
        d = d_model_of(config)
        self.d_in, self.d_out = d * len(self.reads), d * len(self.writes)
        self.row_width = d * len(self.points)
        # the target's columns, per written point (per-layer explained variance of a crosscoder)
        self.target_segments = ([(f"layer{layer}", d) for layer, _ in self.writes] if len(self.writes) > 1
                                else None)
        self.tokens_per_context = cfg.context_size - 1
        self.harvest_seconds = 0.0
        self.store_status = "off"

    @property
    def lm(self) -> LanguageModel:
        if self._lm is None:
            c = self.cfg
            t0 = time.perf_counter()
            layer, site = self.writes[0]
            self._lm = LanguageModel(c.model, layer, site, device=self.device, dtype=getattr(torch, c.dtype),
                                     local_files_only=c.local_files_only, trust_remote_code=c.trust_remote_code,
                                     reads=self.reads, writes=self.writes)
            self.on_model_load(time.perf_counter() - t0)
        return self._lm

    # --- documents and stores ---
    def documents(self, heldout: bool) -> Callable[[], Iterator[str]]:
        return lambda: split_documents(self.corpus.documents(), self.cfg.eval_doc_fraction, heldout)

    def store_key(self, split: str, layer: int | None = None, site: str | None = None) -> StoreKey:
        c = self.cfg
        return StoreKey(model=c.model, model_digest=self._model_digest, layer=c.layer if layer is None else layer,
                        site=c.site if site is None else site, corpus=c.corpus,
                        corpus_digest=self._corpus_digest, context_size=c.context_size, split=split,
                        heldout_fraction=c.eval_doc_fraction, dtype=self.store_dtype)

    def stores(self, split: str, points: list[tuple[int, str]] | None = None) -> list[ActivationStore]:
        root = Path(self.cfg.store_dir).expanduser() if self.cfg.store_dir else default_root()
        return [ActivationStore(root, self.store_key(split, *p)) for p in points or self.points]

    def prepare_keys(self) -> None:
        """Fingerprint the model's weights and the corpus text (the parts of a store key that need reading)."""
        self._model_digest = model_digest(self.cfg.model, self.cfg.local_files_only)
        self._corpus_digest = self.corpus.fingerprint()

    def setup(self) -> None:
        c = self.cfg
        if not c.store:
            self.eval_tokens = self.lm.contexts(self.documents(True)(), c.context_size)[: c.eval_contexts]
            if self.summarize_held_out:
                self._live_held_out()
            return
        self.prepare_keys()
        self.train_stores, self.eval_stores = self.stores("train"), self.stores("heldout")
        summary = _HeldOutSummary(self) if self.summarize_held_out else None
        heldout_desc = "harvesting held-out split" + (" (to the logits, for the clean summary)" if summary else "")
        self.train_store, self.eval_store = self.train_stores[0], self.eval_stores[0]
        reports = [fill_stores(lambda: self.lm, self.train_stores, self.documents(False), self.spec.train_tokens,
                               c.shard_contexts, c.forward_batch_size, desc="harvesting train split"),
                   fill_stores(lambda: self.lm, self.eval_stores, self.documents(True),
                               c.eval_contexts * self.tokens_per_context, c.shard_contexts, c.forward_batch_size,
                               desc=heldout_desc, on_logits=summary and summary.add)]
        self.split_harvest_seconds = {"train": reports[0].seconds, "heldout": reports[1].seconds}
        self.harvest_seconds = sum(r.seconds for r in reports)
        self.store_status = "miss" if any(r.tokens for r in reports) else "hit"  # what this run paid for
        for store, what, wanted in ((self.train_store, "training", self.spec.train_tokens),
                                    (self.eval_store, "held-out", c.eval_contexts)):
            if wanted and not (store.manifest() or Manifest(key={}, d=0)).n_tokens:
                raise SaefwError(f"corpus={c.corpus!r} has no {what} text: not one context of {c.context_size} "
                                 f"tokens among its {what} documents (source.eval_doc_fraction="
                                 f"{c.eval_doc_fraction} of the documents are held out)")
        m = self.eval_store.manifest()
        self.eval_tokens = torch.cat([self.eval_store.read_tokens(i, m) for i in range(len(m.shards))])
        self.eval_tokens = self.eval_tokens[: c.eval_contexts]
        if len(self.eval_tokens) < c.eval_contexts:
            log.warning("the held-out split has only %d contexts (eval_contexts=%d)", len(self.eval_tokens),
                        c.eval_contexts)
        if summary is not None:
            self._keep_summary(summary)

    # --- serving ---
    def _live_chunks(self) -> Iterator[Chunk]:
        """Live mode: the training split in corpus order, tokenised now and harvested when a chunk is read."""
        for contexts in self.lm.iter_contexts(self.documents(False)(), self.cfg.context_size,
                                              chunk=self.cfg.shard_contexts):
            yield Chunk(contexts.shape[0] * self.tokens_per_context, functools.partial(self._harvest, contexts))

    def _harvest(self, contexts: Tensor) -> Tensor:
        t0 = time.time()
        rows = torch.cat([self._live_rows(b) for b in contexts.split(self.cfg.forward_batch_size)])
        self.harvest_seconds += time.time() - t0
        return rows

    def _live_rows(self, contexts: Tensor, on_logits: Callable[[Tensor, Tensor, Tensor], None] | None = None
                   ) -> Tensor:
        """Rows [n·(T−1), row_width] of ``contexts``: every stored point's activation side by side, BOS dropped.
        ``on_logits(contexts, logits, final)``: the forward runs on to the logits and hands them over."""
        if on_logits is None:
            captured = self.lm.capture(contexts, self.points)
        else:
            captured, logits, final = self.lm.capture_and_logits(contexts, self.points)
            on_logits(contexts, logits, final)
        return torch.cat([captured[p][:, 1:].float() for p in self.points], -1).reshape(-1, self.row_width)

    def _live_held_out(self) -> None:
        """Live mode: the held-out activations and the clean summary from one forward per batch, run now (a
        one-pass group's jobs set up one at a time, so the first computes them for all, before any trains)."""
        held = self.held_out()
        if "acts" in held:
            return
        summary = _HeldOutSummary(self)
        held["acts"] = torch.cat([self._live_rows(batch, functools.partial(summary.add, i * LOGITS_BATCH))
                                  for i, batch in enumerate(self.eval_tokens.split(LOGITS_BATCH))])
        self._keep_summary(summary)

    def _keep_summary(self, summary: _HeldOutSummary) -> None:
        """The clean summary of the whole held-out split, when ``summary`` holds it, into :meth:`cached`."""
        if summary.rows is not None and summary.rows.filled == len(self.eval_tokens):
            self.cached(f"clean_summary_{summary.rows.filled}_{self.lm.precision_tag}", summary.rows.result,
                        tensors=True)

    def _read_rows(self, stores: list[ActivationStore], manifests: list, i: int) -> Tensor:
        """Shard ``i`` of every store, side by side (one store: the shard itself)."""
        if len(stores) == 1:
            return stores[0].read(i, manifests[0])
        return torch.cat([s.read(i, m) for s, m in zip(stores, manifests)], -1)

    def _store_chunks(self, generator: torch.Generator) -> Iterator[Chunk]:
        """Store mode: the shards this run's budget covers, in a seeded random order (read when a chunk is)."""
        ms = aligned_manifests(self.train_stores)
        m = ms[0]
        n = min(len(m.shards), math.ceil(self.spec.train_tokens / (m.shards[0].n_tokens or 1)))
        for i in torch.randperm(n, generator=generator).tolist():
            yield Chunk(m.shards[i].n_tokens, functools.partial(self._read_rows, self.train_stores, ms, i))

    def train_batches(self, batch_size: int, skip: int = 0, part: tuple[int, int] = (0, 1)) -> Iterator[Tensor]:
        """Exactly ``spec.train_tokens // batch_size`` shuffled batches, less the first ``skip`` (a resumed run);
        with ``part=(rank, world)`` this rank's ``batch_size // world`` rows of each (see
        :mod:`saefw.sources.shuffle`). Skipped batches are never read from the store."""
        return itertools.islice(self._shuffled(batch_size, skip, part),
                                max(0, self.spec.train_tokens // batch_size - skip))

    def _shuffled(self, batch_size: int, skip: int, part: tuple[int, int]) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.spec.seed)
        buffer = ShuffleBuffer(self.row_width, skip, capacity=self.cfg.buffer_tokens)
        for epoch in itertools.count():
            if epoch == 1:
                log.warning("the budget (%d tokens) exceeds the corpus's training split: reusing text (epoch 2+)",
                            self.spec.train_tokens)
            n_chunks = 0
            for chunk in (self._store_chunks(g) if self.cfg.store else self._live_chunks()):
                n_chunks += 1
                buffer.add(chunk)
                if len(buffer) >= self.cfg.buffer_tokens:
                    yield from buffer.serve(len(buffer) // 2, batch_size, g, part)  # keep half to mix
            if n_chunks == 0:
                raise SaefwError(f"corpus={self.cfg.corpus!r} has no training text (after holding out "
                                 f"{self.cfg.eval_doc_fraction:.0%} of its documents)")
            yield from buffer.serve(len(buffer), batch_size, g, part)  # end of an epoch: serve it all

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]:
        """The held-out activations, context-aligned: each batch holds whole contexts (``tokens_per_context``
        rows each), so evaluators can compute per-context statistics."""
        held = self.held_out()
        if "acts" not in held:
            if self.cfg.store:
                ms = aligned_manifests(self.eval_stores)
                acts = torch.cat([self._read_rows(self.eval_stores, ms, i) for i in range(len(ms[0].shards))])
            else:
                acts = torch.cat([self._live_rows(b) for b in self.eval_tokens.split(self.cfg.forward_batch_size)])
            held["acts"] = acts[: len(self.eval_tokens) * self.tokens_per_context]
        per_batch = max(1, batch_size // self.tokens_per_context) * self.tokens_per_context
        yield from held["acts"].split(per_batch)

    def eval_states(self, n: int) -> Tensor | None:
        """The residual stream [n, T, d] at the model's resume point (:attr:`LanguageModel.resume_point`) for the
        first ``n`` held-out contexts, BOS included: an evaluation's forwards start there and run only the blocks
        after it (:meth:`LanguageModel.resumed`). None when this model's forward cannot start there: every
        forward then runs from the embeddings.

        For ``resid_pre``/``resid_post`` with a float32 store these are the held-out store's own activations
        plus the BOS row (the same in every context: position 0 attends only to itself). Otherwise (``attn_out``
        and ``mlp_out`` restart at their block's input, a bfloat16/float16 store is not the model's exact
        state, live mode) one forward to that point per held-out split, kept beside the store."""
        memo = self.held_out().setdefault("states", {})
        if n in memo:
            return memo[n]
        lm, c = self.lm, self.cfg
        tokens = self.eval_tokens[:n]
        point = lm.resume_point
        name = f"resume_{point[0]}_{point[1]}_{lm.precision_tag}"
        memo[n] = None
        if not lm.can_resume():
            return None
        d = lm.d_model
        if c.store and self.store_dtype == "float32" and point in self.points:
            j = self.points.index(point)
            rows = torch.cat(list(self.eval_batches(1 << 20)))[: n * self.tokens_per_context]
            body = rows[:, j * d: (j + 1) * d].reshape(n, self.tokens_per_context, d)

            def bos_row():
                bos = lm.capture(tokens[:1], [point])[point][0, :1].float().cpu()
                return {"bos": bos, "exact": torch.tensor(lm.resume_matches(tokens[:1], torch.cat([bos, body[0]])[None]))}

            entry = self.cached(name, bos_row, tensors=True)
            states = torch.cat([entry["bos"].expand(n, 1, d), body], 1)
        else:
            def capture():
                parts = [lm.capture(b, [point])[point].float().cpu()
                         for b in tqdm(tokens.split(c.forward_batch_size), desc="held-out states (once per split)",
                                       unit="batch", leave=False)]
                states = torch.cat(parts)
                return {"states": states, "exact": torch.tensor(lm.resume_matches(tokens[:1], states[:1]))}

            entry = self.cached(f"{name}_{n}", capture, tensors=True)
            states = entry["states"]
        if not bool(entry["exact"]):
            log.warning("%s: a forward started at %s does not reproduce the full forward; evaluations run the "
                        "whole model", c.model, hook_name(*point))
            return None
        memo[n] = states
        return states

    # --- a small on-disk cache beside the held-out store (ce_zero per context, the clean summary for KL) ---
    def cached(self, name: str, compute: Callable[[], dict] | None = None, tensors: bool = False) -> dict | None:
        """``compute()`` once per held-out store and ``name``; kept in the store folder as JSON, or as safetensors
        when ``tensors``. A file that cannot be read is recomputed (and rewritten), with a warning. Without
        ``compute``: what is kept, or None."""
        memo = self.held_out().setdefault("cached", {})
        if name in memo:
            return memo[name]
        path = (self.eval_store.path / f"cache-{name}.{'safetensors' if tensors else 'json'}"
                if self.cfg.store else None)
        if path is not None and path.is_file():
            try:
                memo[name] = load_file(path) if tensors else json.loads(path.read_text())
                return memo[name]
            except (json.JSONDecodeError, SafetensorError, OSError) as exc:
                log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        if compute is None:
            return None
        memo[name] = compute()
        if path is not None:
            if tensors:
                with atomic_path(path) as tmp:
                    save_file({k: v.contiguous().cpu() for k, v in memo[name].items()}, str(tmp))
            else:
                write_json(path, memo[name], indent=None)
        return memo[name]

    def held_out_key(self) -> str:
        return f"{super().held_out_key()}:{self.reads}:{self.writes}"

    def describe(self) -> dict:
        """SAELens's metadata names, so the saved cfg.json reads as SAELens's: ``hook_name`` is where the
        dictionary reads (a transcoder's input); a transcoder adds ``hook_name_out``/``site_out``, a crosscoder
        ``layers``."""
        c = self.cfg
        (layer, site), (_, site_out) = self.reads[0], self.writes[0]
        out = {"model_name": c.model, "hook_name": hook_name(layer, site), "hook_layer": layer, "site": site,
               "context_size": c.context_size, "dataset_path": c.corpus, "prepend_bos": True}
        if self.layout == "pair":
            out.update(hook_name_out=hook_name(layer, site_out), site_out=site_out)
        if self.layout == "layers":
            out["layers"] = [p[0] for p in self.writes]
        return out


class _HeldOutSummary:
    """The held-out harvest's ``on_logits`` (live mode: its held-out forwards'): the clean summary
    (:mod:`saefw.lm.clean_summary`) of the split's contexts from the forwards that compute their activations,
    which then run past the hook to the logits (at layer 6 of SmolLM2, the 24 later blocks and the unembedding of
    103 contexts: what a first evaluation would otherwise run). ``rows`` stays None when the model's unembedding
    cannot be summarised."""

    def __init__(self, source: HFActivationSource):
        self.source, self.rows, self.checked = source, None, False

    def add(self, first: int, contexts: Tensor, logits: Tensor, final: Tensor) -> None:
        c, lm = self.source.cfg, self.source.lm
        if not self.checked:
            self.checked = True
            weights = summary_weights(lm, c.eval_contexts * c.context_size)
            self.rows = weights and CleanSummary(lm, c.eval_contexts, c.context_size, weights)
        if self.rows is not None and first == self.rows.filled:  # contexts [0, n) in order, or none of them
            keep = c.eval_contexts - first
            self.rows.add(contexts[:keep], logits[:keep], final[:keep])


def resolve_store_dtype(store_dtype: str, device: str) -> str:
    """The store's dtype for ``source.store_dtype``: ``auto`` is bfloat16 when the model runs on a GPU (there the
    store's size and reading time, not the model's forward, bound a long run: 1.2 GB per million tokens at d 576
    instead of 2.3 GB) and float32 on the CPU (runs there are short, and a float32 store is the model's exact
    state: evaluations resume from it without a forward and match the full forward to 1e-5)."""
    if store_dtype == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    if store_dtype not in DTYPES:
        raise SaefwError(f"source.store_dtype={store_dtype!r} is invalid; choices: auto, {', '.join(DTYPES)}")
    return store_dtype


def read_write_points(cfg: HFSourceConfig, n_layers: int) -> tuple[list, list, str]:
    """(points read, points written, layout) of a source config: ``"site"`` (one point in and out), ``"pair"``
    (``input_site`` → ``site`` at ``layer``: a transcoder) or ``"layers"`` (``site`` at every layer of
    ``layers``: a crosscoder). Clear errors for a layer or site out of range and for asking both."""
    layers = list(cfg.layers) if cfg.layers else [cfg.layer]
    for layer in layers:
        check_layer_site(cfg.model, n_layers, layer, cfg.site)
    if len(set(layers)) != len(layers):
        raise SaefwError(f"source.layers={layers} names a layer twice")
    pair = cfg.input_site is not None and cfg.input_site != cfg.site
    if pair:
        check_layer_site(cfg.model, n_layers, layers[0], cfg.input_site)
        if len(layers) > 1:
            raise SaefwError(f"source.input_site={cfg.input_site} with source.layers={layers}: a dictionary reads "
                             f"one site into another (a transcoder) or one site at several layers (a crosscoder), "
                             f"not both")
        return [(layers[0], cfg.input_site)], [(layers[0], cfg.site)], "pair"
    points = [(layer, cfg.site) for layer in layers]
    return points, points, "layers" if len(layers) > 1 else "site"


def aligned_manifests(stores: list[ActivationStore]) -> list[Manifest]:
    """The manifests of stores read side by side; their shards must hold the same contexts (a harvest writes
    them so: :mod:`saefw.store.harvest`), checked by token counts and the first shard's tokens."""
    ms = [s.manifest() for s in stores]
    if len(ms) == 1:
        return ms
    n = min(len(m.shards) for m in ms)
    for store, m in zip(stores[1:], ms[1:]):
        if ([sh.n_tokens for sh in m.shards[:n]] != [sh.n_tokens for sh in ms[0].shards[:n]]
                or (n and not torch.equal(store.read_tokens(0, m), stores[0].read_tokens(0, ms[0])))):
            raise SaefwError(f"activation stores {stores[0].path} and {store.path} hold different contexts (made "
                             f"with another source.shard_contexts?); delete one to harvest it again")
    return [dataclasses.replace(m, shards=m.shards[:n]) for m in ms]


