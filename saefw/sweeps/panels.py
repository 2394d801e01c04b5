"""Which trade-off plots to draw and the points/frontier line of each arch group in them (shared by the PNG and
the HTML page, so both show the same thing)."""
from __future__ import annotations

from dataclasses import dataclass

from saefw.sweeps.pareto import pareto_mask
from saefw.sweeps.tradeoff import Tradeoff, number

# matplotlib's tab10, so the PNG and the HTML page colour each arch alike
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
# at these sites zero-ablation barely moves the loss, so ce_loss_recovered is noisy: show the raw effects too
QUIET_SITES = {"mlp_out", "attn_out"}


@dataclass(frozen=True)
class Panel:
    """One plot: ``metric`` against L0 (log x); the frontier maximises it or, if not ``maximise``, minimises it."""

    metric: str
    title: str
    maximise: bool


CE_RECOVERED = Panel("ce_loss_recovered", "CE loss recovered", True)
EXPLAINED_VARIANCE = Panel("explained_variance", "explained variance", True)
CE_DELTA = Panel("ce_delta", "CE delta (nats, SAE − clean)", False)
KL_DIV = Panel("kl_div", "KL(clean ‖ SAE) (nats)", False)
# quality beyond the proxies, drawn when the sweep ran those evaluators (evaluators=[...,absorption,sparse_probing])
ABSORPTION = Panel("absorption_rate", "first-letter absorption rate", False)
SPARSE_PROBING = Panel("sparse_probing_sae_top_1_acc", "sparse probing accuracy, top-1 latent", True)


@dataclass
class Series:
    """One arch group in one panel: every ok job with a value (x, y, its se or None, its table row) and which of
    them lie on the group's frontier for this metric."""

    group: str
    color: str
    x: list[float]
    y: list[float]
    se: list[float | None]
    rows: list[dict]
    frontier: list[bool]

    def frontier_line(self) -> tuple[list[float], list[float]]:
        """Frontier points ordered by L0: the line drawn through them."""
        pts = sorted((x, y) for x, y, on in zip(self.x, self.y, self.frontier) if on)
        return [p[0] for p in pts], [p[1] for p in pts]


def panels_for(table: Tradeoff) -> list[Panel]:
    """CE loss recovered and explained variance vs L0; CE delta and KL too for mlp_out/attn_out sweeps; absorption
    and sparse probing when measured. Panels without any value (e.g. no LM behind a synthetic source) are left out."""
    panels = [CE_RECOVERED, EXPLAINED_VARIANCE]
    if table.sites & QUIET_SITES:
        panels += [CE_DELTA, KL_DIV]
    panels += [ABSORPTION, SPARSE_PROBING]
    ok = table.ok_rows()
    return [p for p in panels if any(number(r, p.metric) is not None and number(r, "l0") is not None for r in ok)]


def series_for(table: Tradeoff, panel: Panel) -> list[Series]:
    out = []
    for i, group in enumerate(table.groups):
        rows = [r for r in table.ok_rows() if r["group"] == group
                and number(r, "l0") is not None and number(r, panel.metric) is not None]
        if not rows:
            continue
        x = [number(r, "l0") for r in rows]
        y = [number(r, panel.metric) for r in rows]
        out.append(Series(group=group, color=COLORS[i % len(COLORS)], x=x, y=y,
                          se=[number(r, f"{panel.metric}_se") for r in rows], rows=rows,
                          frontier=pareto_mask(x, y, maximise_y=panel.maximise)))
    return out


def subtitle(table: Tradeoff) -> str:
    """What was compared: the shared model/layer/site, and how many jobs ran and failed."""
    parts = []
    for key, fmt in (("model", "{}"), ("layer", "layer {}"), ("site", "{}")):
        values = {r.get(key) for r in table.ok_rows()}
        if len(values) == 1 and None not in values:
            parts.append(fmt.format(values.pop()))
    n_failed = len(table.failed_rows())
    parts.append(f"{len(table.ok_rows())} runs" + (f", {n_failed} failed" if n_failed else ""))
    return " · ".join(parts)
