"""``python -m saefw.evaluate sae=<dir>``: saefw's evaluators on a saved SAE (a saefw run directory or a SAELens
SAE directory) over the source's held-out split.

Model, layer and site come from the SAE's cfg.json (``model=``, ``layer=``, ``site=`` override them). A saefw run
directory also gives the source (every one of its settings, a plugin source's as much as hf's) and the evaluators it
trained with; the command line overrides them exactly as in training (``source.context_size=64``,
``evaluators=[l0]``, or ``source=<other>`` to read another source).
The summary is printed and written, with the metrics, to ``metrics.json`` in this command's own output
directory (``outputs/evaluate/<date>/<time>/`` unless ``hydra.run.dir=`` says otherwise)."""
from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from saefw.app.atomic import write_json
from saefw.app.clock import WallClock
from saefw.app.device import resolve_device
from saefw.app.summary import print_summary
from saefw.errors import SaefwError

log = logging.getLogger("saefw")


@dataclass
class EvaluateConfig:
    sae: str = MISSING  # the saved SAE directory (saefw run dir or SAELens SAE dir)
    model: str | None = None  # null: the SAE's own (cfg.json metadata.model_name)
    layer: int | None = None  # null: the SAE's own (parsed from its hook_name if not recorded)
    site: str | None = None  # null: the SAE's own
    seed: int = 0
    eval_batch_size: int = 4096
    device: str = "auto"  # where the SAE runs; auto → cuda when available
    threads: int | None = None  # torch CPU threads
    source: Any = None
    evaluators: Any = None
    verbose: bool = False  # true: Lightning's and the other libraries' info lines and warnings too (saefw/app/quiet.py)


def register_schema() -> None:
    ConfigStore.instance().store(name="saefw_evaluate_schema", node=EvaluateConfig)


def _check_output_dir(out_dir: Path, sae_dir: Path) -> None:
    """Refuse to write into an SAE directory or over a metrics.json this command did not write."""
    if out_dir.resolve() == sae_dir.resolve() or (out_dir / "cfg.json").exists():
        raise SaefwError(f"hydra.run.dir={out_dir} is a saved SAE directory: the evaluation writes its "
                         f"metrics.json into a directory of its own (default outputs/evaluate/<date>/<time>)")
    old = out_dir / "metrics.json"
    if old.exists():
        try:
            evaluated = "evaluated_sae" in json.loads(old.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            evaluated = False
        if not evaluated:
            raise SaefwError(f"{old} exists and was not written by saefw.evaluate: not overwriting it; "
                             f"choose another hydra.run.dir")


def _where(cfg: DictConfig, meta: dict) -> dict:
    """model, layer, site: the command line's, else the SAE's own (``site`` is the site the dictionary writes:
    a transcoder's output site)."""
    own = {**meta, "site": meta.get("site_out") or meta["site"]}
    return {key: cfg[key] if cfg[key] is not None else own[key] for key in ("model", "layer", "site")}


def _nothing_given(key: str) -> bool:
    return False


def carried(cfg: DictConfig, saved: dict | None, given: Callable[[str], bool]) -> dict:
    """The ``source`` and ``evaluators`` to evaluate with: a training run's own (every setting it saved in its
    ``config.yaml``, a plugin source's ``source.path`` as much as hf's ``source.context_size``), except what the
    caller set itself (``given(key)``): ``source=<other>`` picks another source and drops the run's source
    settings, ``source.<key>=`` replaces one of them, ``evaluators=`` replaces the list. Without a saved config (a
    SAELens directory) both are ``cfg``'s."""
    out = {"source": OmegaConf.to_container(cfg.source, resolve=False),
           "evaluators": OmegaConf.to_container(cfg.evaluators, resolve=False) if cfg.evaluators is not None
           else None}
    saved = saved or {}
    source = saved["source"] if isinstance(saved.get("source"), dict) else {}
    other = given("source") and out["source"]["name"] != source.get("name")  # source=<another one>
    if source.get("name") and not other:
        own = {k: v for k, v in out["source"].items() if given(f"source.{k}")}
        out["source"] = {**source, **own}
    if isinstance(saved.get("evaluators"), dict) and not given("evaluators"):
        out["evaluators"] = saved["evaluators"]
    return out


def evaluate(cfg: DictConfig, out_dir: Path, clock: WallClock | None = None,
             given: Callable[[str], bool] = _nothing_given) -> dict:
    """Evaluate the SAE in ``cfg.sae``; returns the record also written to ``out_dir/metrics.json``.
    ``clock``: where its ``wall_seconds`` count from (the command passes the process start; default: now).
    ``given(key)``: whether the caller set ``key`` itself (the command passes the command line's,
    :func:`saefw.app.cli.on_command_line`), which then wins over the setting a training run saved (:func:`carried`);
    by default every saved source and evaluator setting is the run's."""
    from saefw.evals.base import build_evaluators, run_evaluators
    from saefw.io.saved import load_sae, sae_metadata, saved_run_config
    from saefw.registry import build, discover, entry
    from saefw.sources.base import RunSpec

    clock = clock or WallClock.now()
    if OmegaConf.is_missing(cfg, "sae"):
        raise SaefwError("sae=<dir> is required: the saved SAE to evaluate (a saefw run dir or a SAELens SAE dir)")
    discover()
    sae_dir = Path(cfg.sae).expanduser()
    meta = sae_metadata(sae_dir)
    sae = load_sae(sae_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_output_dir(out_dir, sae_dir)
    cfg = copy.deepcopy(cfg)  # the caller's config stays as it was
    with open_dict(cfg):
        cfg.update(carried(cfg, saved_run_config(sae_dir), given))
    where = _where(cfg, meta)
    missing = [k for k, v in where.items() if v is None]
    if missing and entry("source", cfg.source.name).cls.needs_model:
        trained_on = meta["source"] if meta["source"] not in (None, cfg.source.name) else None
        raise SaefwError(f"{sae_dir}/cfg.json does not say which {'/'.join(missing)} the SAE reads "
                         f"(hook_name={meta['hook_name']!r}); pass " + " ".join(f"{k}=..." for k in missing)
                         + (f", or source={trained_on} (the source it was trained on)" if trained_on else ""))
    if meta["prepend_bos"] is False:
        log.warning("the SAE was trained without BOS; saefw always prepends BOS (and never scores it)")
    ctx = cfg.source.get("context_size")
    if meta["context_size"] and ctx is not None and ctx != meta["context_size"]:
        log.info("evaluating at source.context_size=%s; the SAE was trained at %s", ctx, meta["context_size"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    src_cfg = OmegaConf.to_container(cfg.source, resolve=False)
    if entry("source", cfg.source.name).cls.needs_model:
        src_cfg.update(where)  # an LM source reads the SAE's own hook point (or the command line's)
        if meta.get("site_out") and not given("source.input_site"):
            src_cfg["input_site"] = meta["site"]  # a transcoder reads one site and writes another
        if meta.get("layers") and not given("source.layers"):
            src_cfg["layers"] = list(meta["layers"])
    source = build("source", OmegaConf.create(src_cfg), spec=RunSpec(seed=cfg.seed, train_tokens=0))
    source.setup()
    if sae.d_in != source.d_in:
        raise SaefwError(f"the SAE reads d_in={sae.d_in} activations but source={cfg.source.name} at "
                         f"{where['model']} layer {where['layer']} {where['site']} gives d={source.d_in}")
    device = resolve_device(cfg.device)
    sae = sae.to(device)
    evaluators = build_evaluators(cfg, source, named=given("evaluators"))
    metrics = run_evaluators(sae, source, evaluators, cfg.eval_batch_size)
    record = {**{k: float(v) for k, v in metrics.items() if not torch.is_tensor(v) or v.ndim == 0},
              "arch": sae.plugin_name, "penalty": meta["penalty"] or "n/a", **where, "source": cfg.source.name,
              **({"input_site": src_cfg["input_site"]} if src_cfg.get("input_site") else {}),
              **({"layers": list(src_cfg["layers"])} if src_cfg.get("layers") else {}),
              "d_in": sae.d_in, "d_sae": sae.d_sae, "evaluated_sae": str(sae_dir.resolve()),
              "eval_tokens": sum(len(b) for b in source.eval_batches(cfg.eval_batch_size)),
              "wall_seconds": round(clock.seconds(), 1), "wall_from": clock.origin}
    write_json(out_dir / "metrics.json", record)
    print_summary(record, out_dir, title="saefw evaluation summary")
    return record


def main(argv: list[str] | None = None) -> None:
    """``python -m saefw.evaluate sae=<dir> [overrides]``."""
    from saefw.app.cli import command, job_clock, on_command_line

    register_schema()
    command("evaluate", lambda cfg, out_dir: evaluate(cfg, out_dir, clock=job_clock(), given=on_command_line),
            argv)
