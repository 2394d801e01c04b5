"""Harvest once for a whole sweep: before the jobs of a multirun start, fill the activation stores of every
(layer, site) the sweep will read — one model pass for all of them — so no job harvests and a sweep over
``layer=`` or ``site=`` pays for the deepest layer once (``hydra.callbacks.prefetch`` in conf/config.yaml).

Only plain grid sweeps over ``layer``/``site``/``total_tokens`` are expanded here; anything else (a search
sweeper, a swept model or corpus) is left to the jobs, which still never harvest the same store twice (its file
lock) and read what is there."""
from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from saefw.app.failures import error_line

log = logging.getLogger("saefw")
_SWEPT = ("layer", "site", "total_tokens")


def _values(overrides: list[str], key: str) -> list[str] | None:
    """The values a grid sweep gives ``key`` (None: not on the command line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(overrides):
        if o.key_or_group == key:
            return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
    return None


def sweep_points(config: DictConfig) -> tuple[list[tuple[int, str]], int] | None:
    """([(layer, site) ...], the largest training budget) of a grid sweep, or None when it is not one."""
    task = list(config.hydra.overrides.task)
    if config.hydra.sweeper.get("_target_", "").split(".")[-1] != "BasicSweeper":
        return None
    layers = _values(task, "layer") or [config.layer]
    sites = _values(task, "site") or [config.site]
    budgets = _values(task, "total_tokens") or [config.total_tokens]
    return [(int(layer), str(site)) for layer in layers for site in sites], max(int(b) for b in budgets)


class PrefetchCallback(Callback):
    """``on_multirun_start``: harvest every hook point of the sweep into the store, in one pass."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled or config.source.get("name") != "hf" or not config.source.get("store", False):
            return
        try:
            plan = sweep_points(config)
            if plan is None:
                return
            points, tokens = plan
            from saefw.store.command import harvest_points

            src = OmegaConf.to_container(config.source, resolve=False)
            src.update(model=config.model)
            log.info("prefetching the activation store for %d hook point(s): %s", len(points), points)
            harvest_points(src, points, tokens)
        except Exception as exc:  # noqa: BLE001 - the jobs harvest what is missing themselves
            log.warning("store prefetch skipped (%s); jobs harvest what they need", error_line(exc))
