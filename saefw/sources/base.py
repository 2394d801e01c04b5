"""The activation-source interface: batches of activations [B, d_in], a train stream and a held-out split."""
from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator

from torch import Tensor

from saefw.app.run_spec import RunSpec  # noqa: F401  (plugins import it from here)


class ActivationSource:
    """Base class. ``setup()`` does the heavy work (load a model, harvest); the rest is cheap.

    * ``train_batches(batch_size)`` yields exactly ``spec.train_tokens // batch_size`` shuffled batches.
    * ``eval_batches(batch_size)`` yields the held-out split, the same tokens every call. When the source has
      ``tokens_per_context`` set, every batch holds whole contexts of that many rows (evaluators then report
      per-context standard errors); otherwise every token is its own unit.
    * ``lm`` is a :class:`saefw.lm.model.LanguageModel` when the activations come from a language model
      (needed by ``loss_recovered``); ``ground_truth`` holds known feature directions [n, d_in] (synthetic).
    * ``harvest_seconds`` and ``store_status`` (``hit``/``miss``/``off``) say what the run paid for its data.
    """

    plugin_name = "?"
    needs_model = False  # True for sources that read a language model: they take model/layer/site
    d_in: int
    # what a batch row holds (see saefw.arch.base.SAE.layout): "site" (d_in columns), "pair" (d_in input columns,
    # then d_out target columns: transcoders) or "layers" (one site at several layers side by side: crosscoders)
    layout = "site"
    # the target's columns as (name, width) per written hook point when there are several (per-layer metrics)
    target_segments: list[tuple[str, int]] | None = None
    lm = None
    ground_truth: Tensor | None = None
    tokens_per_context: int | None = None
    harvest_seconds: float = 0.0
    store_status: str = "off"
    # whether harvesting the held-out split also computes the clean model's summary for loss_recovered (an LM
    # source: saefw.sources.hf; a run without that evaluator turns it off)
    summarize_held_out: bool = False

    def __init__(self, cfg, spec: RunSpec):
        self.cfg, self.spec = cfg, spec
        # called with the seconds a lazily loaded language model took (the run books them as model_load)
        self.on_model_load: Callable[[float], None] = lambda seconds: None

    def setup(self) -> None:
        pass

    def train_batches(self, batch_size: int) -> Iterator[Tensor]:
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]:
        raise NotImplementedError

    def eval_states(self, n: int) -> Tensor | None:
        """An LM source: the residual stream [n, T, d] at the model's resume point for the first ``n`` held-out
        contexts, so that evaluations start their forwards there (see :meth:`saefw.lm.model.LanguageModel.resumed`);
        None: forwards run from the embeddings."""
        return None

    def cached(self, name: str, compute: Callable[[], dict] | None = None, tensors: bool = False) -> dict | None:
        """``compute()`` once per source and ``name`` (sources with a store keep it on disk across runs);
        ``tensors=True``: the dict's values are tensors (kept as safetensors rather than JSON). Without
        ``compute``: what is kept, or None."""
        memo = self.held_out().setdefault("cached", {})
        if name not in memo and compute is not None:
            memo[name] = compute()
        return memo.get(name)

    def held_out(self) -> dict:
        """What this source has computed of its held-out split (activations, states, :meth:`cached` results), by
        kind: computed once, then read."""
        return self.__dict__.setdefault("_held_out", {})

    def held_out_key(self) -> str:
        """What :meth:`held_out` depends on: sources with equal keys compute equal held-out parts."""
        return f"{type(self).__qualname__}:{self.cfg!r}"

    def share_held_out(self, shared: dict) -> None:
        """Compute the held-out parts once for several sources of one process (the jobs of a one-pass group):
        ``shared`` is a dict common to them, and sources with the same :meth:`held_out_key` use one entry of it.
        Its users must take turns (a one-pass group's evaluations do): nothing here locks."""
        self.__dict__["_held_out"] = shared.setdefault(self.held_out_key(), self.held_out())

    def describe(self) -> dict:
        """Provenance recorded with the SAE and in metrics.json (an LM source gives model, layer, site, ...)."""
        return {}


def train_batches_from(source: ActivationSource, batch_size: int, skip: int = 0,
                       part: tuple[int, int] = (0, 1)) -> Iterator[Tensor]:
    """``source``'s training batches after the first ``skip``, this rank's ``part=(rank, world)`` rows of each.
    A source whose ``train_batches`` takes ``skip`` and ``part`` does both itself; any other is replayed from its
    start and every batch sliced."""
    if {"skip", "part"} <= set(inspect.signature(source.train_batches).parameters):
        return iter(source.train_batches(batch_size, skip=skip, part=part))
    rank, world = part
    share = batch_size // world
    return (b[rank * share: (rank + 1) * share]
            for b in itertools.islice(source.train_batches(batch_size), skip, None))
