"""Relations by effect: ablate a feature of an upstream SAE and measure how the features of a downstream SAE change.

Upstream SAE U reads hook point p, downstream SAE D reads hook point q, later in the forward pass. Ablating
feature i of U on a context subtracts its contribution at p from every position t ≥ 1 (BOS is never edited)::

    x'_t = x_t − f_i(x_t) · c_i,      c_i = decode(e_i) − decode(0)   (= W_dec,i for every arch's affine decoder)

and the model runs on from p; D encodes the activation at q, giving g'_j(t) instead of the clean g_j(t). Then::

    effect(i → j)   = Σ_{t: g_j(t) > 0} (g_j(t) − g'_j(t)) / #{t: g_j(t) > 0}   mean drop of j where it fired
    fraction(i → j) = Σ_{t: g_j(t) > 0} (g_j(t) − g'_j(t)) / Σ_t g_j(t)          share of j's activation removed

over every token of the held-out contexts. A context where i never fires is left unchanged by the ablation (the
model is causal and contexts are independent), so only the (context, feature) pairs where the feature fires
are run: the cost is Σ_i #{contexts where i fires} forwards up to q, batched ``batch_rows`` at a time, each
batch with one clean row per context it ablates in.

Nothing before p changes under the ablation, so those forwards start at p (:meth:`saefw.lm.model.LanguageModel.resumed`):
the clean pass that finds where the features fire also keeps the residual stream at ``resume_point(p)`` (p itself
for a residual site, the input of p's block for ``attn_out``/``mlp_out``, whose block must run again with the
edit inside it), and each ablation batch runs only the blocks from there to q. Those states cost
N × T × d × 4 bytes of host memory (256 contexts × 128 tokens × 576 × 4 B = 75 MB for SmolLM2); a model whose
forward cannot start there (or whose resumed forward does not reproduce the full one) runs from the embeddings.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saefw.errors import SaefwError
from saefw.lm.model import hook_name, resume_point

log = logging.getLogger(__name__)

Point = tuple[int, str]
SITE_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}
"""Order of the sites inside a block's forward pass (resid_post of layer L precedes resid_pre of L + 1)."""


def depth(point: Point) -> tuple[int, int]:
    """Sort key of a hook point along the forward pass."""
    layer, site = point
    return int(layer), SITE_ORDER[site]


def _param(sae) -> Tensor:
    return next(sae.parameters())


@torch.no_grad()
def contribution_vectors(sae, features: list[int]) -> Tensor:
    """c_i = decode(e_i) − decode(0) [len(features), d_in]: what one unit of feature i adds to the
    reconstruction, in raw activation units (W_dec,i / input_scale for saefw's archs)."""
    p = _param(sae)
    e = torch.zeros(len(features), sae.d_sae, device=p.device, dtype=torch.float32)
    e[torch.arange(len(features)), torch.tensor(features, dtype=torch.long)] = 1.0
    return (sae.decode(e) - sae.decode(torch.zeros(1, sae.d_sae, device=p.device))).float()


@dataclass
class SourceFiring:
    """Where the upstream SAE's features fire on the contexts: ``fired`` [d_sae] tokens (BOS excluded),
    ``in_context`` [n_contexts, d_sae] whether each fires anywhere in each context, ``n_tokens`` scanned;
    ``states`` [n_contexts, T, d] float32 on the CPU: the clean residual stream at ``resume_point(point)`` (BOS
    included), where the ablations' forwards start, or None where they cannot (they then run the whole model)."""

    fired: Tensor
    in_context: Tensor
    n_tokens: int
    states: Tensor | None = None

    @property
    def density(self) -> Tensor:
        return self.fired.double().div(max(self.n_tokens, 1)).float()


@torch.no_grad()
def source_firing(lm, sae, point: Point, contexts: Tensor, batch: int = 16, progress: bool = True,
                  keep_states: bool = True) -> SourceFiring:
    """One clean pass: where each feature of ``sae`` (reading ``point``) fires on ``contexts`` [N, T]. With
    ``keep_states`` (and a model whose forward can start there) the same forwards also capture the residual
    stream at ``resume_point(point)`` (at or before ``point``, so the pass still stops at ``point``), for
    :func:`ablation_effects` to start from."""
    dev = _param(sae).device
    start = resume_point(*point)
    keep = keep_states and lm.can_resume(start)
    points = [point, start] if keep else [point]
    fired = torch.zeros(sae.d_sae, dtype=torch.long)
    in_ctx, states = [], []
    for first in tqdm(range(0, len(contexts), batch), desc=f"firing at {point[0]}/{point[1]}", unit="batch",
                      disable=not progress):
        toks = contexts[first:first + batch]
        caps = lm.capture(toks, points)
        x = caps[point][:, 1:].to(dev, torch.float32)
        fires = sae.encode(x) > 0  # [B, T−1, d_sae]
        fired += fires.sum((0, 1)).cpu()
        in_ctx.append(fires.any(1).cpu())
        if keep:
            states.append(caps[start].to("cpu", torch.float32))
    kept = torch.cat(states) if states else None
    if kept is not None and not lm.resume_matches(contexts[:1], kept[:1], start):
        log.warning("%s: a forward started at %s does not reproduce the full forward; the ablations run the whole "
                    "model", lm.name, hook_name(*start))
        kept = None
    return SourceFiring(fired, torch.cat(in_ctx), int(contexts[:, 1:].numel()), kept)


def select_sources(firing: SourceFiring, top_m: int, max_density: float) -> list[int]:
    """The ``top_m`` features with the highest density among those that fired and are not denser than
    ``max_density`` (dense features fire almost everywhere: ablating them costs the most and says the least)."""
    density = firing.density
    ok = (firing.fired > 0) & (density <= max_density)
    order = torch.argsort(torch.where(ok, density, -1.0), descending=True, stable=True)
    return [int(i) for i in order[: min(top_m, int(ok.sum()))]]


@dataclass
class Forward:
    """One batch of rows: ``context`` [R] (row of the contexts tensor), ``source`` [R] (position in the
    sources list; −1 for a clean row), ``clean_row`` [R] (the batch row holding the clean run of the same
    context), ``counted`` [R] (clean rows whose target statistics count: the first of each context)."""

    context: Tensor
    source: Tensor
    clean_row: Tensor
    counted: Tensor


def plan_forwards(fires: Tensor, batch_rows: int) -> list[Forward]:
    """Pack the rows to run into batches of at most ``batch_rows``: for each context c (row of ``fires``
    [N, M], whether source m fires in c), one clean row and one ablated row per firing source; a context with
    more sources than fit in a batch is split, each part with its own clean row (counted once)."""
    if batch_rows < 2:
        raise SaefwError(f"batch_rows={batch_rows} must be at least 2 (a clean row and an ablated one)")
    groups = []
    for c in range(fires.shape[0]):
        srcs = fires[c].nonzero().flatten().tolist()
        pieces = [srcs[k:k + batch_rows - 1] for k in range(0, len(srcs), batch_rows - 1)] or [[]]
        groups.extend((c, piece, k == 0) for k, piece in enumerate(pieces))
    forwards, rows = [], []

    def flush():
        ctx, src, clean, counted = zip(*rows)
        forwards.append(Forward(torch.tensor(ctx), torch.tensor(src), torch.tensor(clean), torch.tensor(counted)))
        rows.clear()

    for c, piece, first in groups:
        if rows and len(rows) + 1 + len(piece) > batch_rows:
            flush()
        clean = len(rows)
        rows.append((c, -1, clean, first))
        rows.extend((c, m, clean, False) for m in piece)
    if rows:
        flush()
    return forwards


@dataclass
class AblationEffects:
    """Accumulated effects of ablating ``sources`` (features of the upstream SAE) on every downstream feature:
    ``drop_sum`` [M, d_down] Σ (g − g') over the tokens where the target fired cleanly; ``target_fired``
    [d_down] clean firing tokens; ``target_act_sum`` [d_down] Σ clean activation; ``n_tokens`` scanned;
    ``rows`` context forwards run; ``resumed`` whether they started at the upstream point (else at the embeddings)."""

    sources: list[int]
    drop_sum: Tensor
    target_fired: Tensor
    target_act_sum: Tensor
    n_tokens: int
    rows: int
    resumed: bool = False

    def effect(self) -> Tensor:
        """Mean drop of each target where it fired [M, d_down] (0 for a target that never fired)."""
        return torch.where(self.target_fired > 0, self.drop_sum / self.target_fired.clamp_min(1), 0.0).float()

    def fraction(self) -> Tensor:
        """Share of each target's clean activation removed by each ablation [M, d_down]."""
        return torch.where(self.target_act_sum > 0, self.drop_sum / self.target_act_sum.clamp_min(1e-30),
                           0.0).float()


@torch.no_grad()
def ablation_effects(lm, up, up_point: Point, down, down_point: Point, contexts: Tensor, sources: list[int],
                     in_context: Tensor, batch_rows: int = 32, progress: bool = True,
                     states: Tensor | None = None) -> AblationEffects:
    """Ablate each of ``sources`` (features of ``up`` at ``up_point``) on the ``contexts`` [N, T] where it
    fires (``in_context`` [N, d_up]) and accumulate the drops of every feature of ``down`` at ``down_point``
    (see the module docstring for the equations). ``states`` [N, T, d] (:attr:`SourceFiring.states`): the clean
    residual stream at ``resume_point(up_point)``; each forward then starts there instead of at the embeddings,
    with the same result."""
    if depth(down_point) <= depth(up_point):
        raise SaefwError(f"the downstream hook point {down_point} does not come after {up_point} in the forward "
                         f"pass: list runs from the earliest hook point to the latest")
    if not sources:
        raise SaefwError("no feature to ablate: none fired in the scanned text (more tokens, or a feature list)")
    dev = _param(up).device
    src_feats = torch.tensor(sources, dtype=torch.long, device=dev)
    vectors = contribution_vectors(up, sources).to(dev)  # [M, d_in]
    fires = in_context[:, torch.tensor(sources, dtype=torch.long)]
    plan = plan_forwards(fires, batch_rows)
    start_point = resume_point(*up_point)
    resumed = states is not None and lm.can_resume(start_point)
    M, d_down = len(sources), down.d_sae
    drop_sum = torch.zeros(M, d_down, dtype=torch.float64)
    fired = torch.zeros(d_down, dtype=torch.long)
    act_sum = torch.zeros(d_down, dtype=torch.float64)
    total = sum(len(f.context) for f in plan)
    bar = tqdm(total=total, desc=f"ablating {M} features at {up_point[0]}/{up_point[1]}", unit="row",
               disable=not progress)
    for fw in plan:
        tokens = contexts[fw.context]
        ablated = fw.source >= 0
        src = fw.source.clamp_min(0).to(dev)
        row_vec = vectors[src] * ablated.to(dev, torch.float32)[:, None]  # clean rows: zero edit
        row_feat = src_feats[src]

        def edit(x: Tensor) -> Tensor:
            body = x[:, 1:].to(dev, torch.float32)
            f = up.encode(body)  # [R, T−1, d_up]
            a = f.gather(-1, row_feat[:, None, None].expand(-1, f.shape[1], 1))  # [R, T−1, 1]
            new = x.clone()
            new[:, 1:] = (body - a * row_vec[:, None, :]).to(x.device, x.dtype)
            return new

        start = states[fw.context] if resumed else None
        y = lm.capture(tokens, [down_point], edits={up_point: edit}, start=start,
                       start_point=start_point if resumed else None)[down_point]
        g = down.encode(y[:, 1:].to(dev, torch.float32)).double().cpu()  # [R, T−1, d_down]
        g_clean = g[fw.clean_row]
        drop = ((g_clean - g) * (g_clean > 0)).sum(1)  # [R, d_down]
        drop_sum.index_add_(0, fw.source[ablated], drop[ablated])
        counted = g[fw.counted]
        fired += (counted > 0).sum((0, 1))
        act_sum += counted.sum((0, 1))
        bar.update(len(fw.context))
    bar.close()
    return AblationEffects(list(sources), drop_sum, fired, act_sum, int(contexts[:, 1:].numel()), total,
                          resumed)
