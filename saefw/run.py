"""One training run: build the plugins from the composed config, train with Lightning, evaluate, save."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from saefw.cli import on_command_line
from saefw.errors import SaefwError
from saefw.evals.base import run_evaluators, usable
from saefw.io import save_sae
from saefw.registry import FAMILIES, build, discover, entry
from saefw.sources.base import RunSpec

log = logging.getLogger("saefw")
SUMMARY_KEYS = ("l0", "explained_variance", "ce_loss_recovered", "ce_delta", "kl_div", "dead_fraction",
                "shrinkage", "mmcs")


def check_combination(arch: str, penalty: str) -> None:
    allowed = entry("arch", arch).cls.allowed_penalties
    if penalty not in allowed:
        raise SaefwError(f"arch={arch} does not take penalty={penalty}; valid penalties for {arch}: "
                         f"{', '.join(allowed)}")


def build_evaluators(cfg: DictConfig, source) -> list:
    """The evaluators of ``cfg.evaluators`` that ``source`` can serve. One it cannot serve (``ground_truth``
    without known features, ``loss_recovered`` without a language model) is skipped: quietly when it came
    from the default list, with a warning when the user named it (``evaluators=[...]`` on the command line)."""
    asked = on_command_line("evaluators")
    evaluators = []
    for name, ev_cfg in (cfg.evaluators or {}).items():
        ev = build("evaluator", ev_cfg or {}, name=name)
        if usable(ev, source):
            evaluators.append(ev)
        else:
            (log.warning if asked else log.debug)("evaluator %s skipped: source=%s provides no %s", name,
                                                  cfg.source.name, "/".join(ev.requires))
    return evaluators


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if not torch.is_tensor(v) or v.ndim == 0}


def make_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    if cfg.wandb.mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        if cfg.wandb.mode == "offline":
            os.environ["WANDB_MODE"] = "offline"  # never a login prompt
        group = cfg.wandb.group
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            if group is None and hc.mode.name == "MULTIRUN":
                group = Path(hc.sweep.dir).name
        except ValueError:
            pass
        loggers.append(WandbLogger(project=cfg.wandb.project, entity=cfg.wandb.entity, group=group,
                                   name=cfg.wandb.name or run_dir.name, tags=list(cfg.wandb.tags),
                                   save_dir=str(run_dir), offline=cfg.wandb.mode == "offline",
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def log_metrics(loggers, metrics: dict, step: int, prefix: str = "eval/") -> None:
    scalars = {prefix + k: v for k, v in _scalars(metrics).items()}
    for lg in loggers:
        lg.log_metrics(scalars, step=step)
        hist = {prefix + k: v for k, v in metrics.items() if torch.is_tensor(v) and v.ndim == 1}
        if hist and type(lg).__name__ == "WandbLogger":
            import wandb

            lg.experiment.log({k: wandb.Histogram(v.numpy()) for k, v in hist.items()}, step=step)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate one SAE; writes sae_weights.safetensors, cfg.json, config.yaml, metrics.json into run_dir."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from saefw.train import ActivationDataModule, EvalCallback, SAEModule

    t0 = time.time()
    discover()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for family in ("source", "arch", "penalty"):
        entry(family, cfg[FAMILIES[family]].name)
    check_combination(cfg.arch.name, cfg.penalty.name)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    spec = RunSpec(model=cfg.model, layer=cfg.layer, site=cfg.site, seed=cfg.seed, total_tokens=cfg.total_tokens)
    source = build("source", cfg.source, spec=spec)
    source.setup()
    d_sae = cfg.d_sae or cfg.expansion_factor * source.d_in
    sae = build("arch", cfg.arch, d_in=source.d_in, d_sae=d_sae)
    penalty = build("penalty", cfg.penalty)
    evaluators = build_evaluators(cfg, source)

    tc = cfg.train
    total_steps = cfg.trainer.get("max_steps", -1)
    if total_steps is None or total_steps < 0:
        total_steps = max(1, cfg.total_tokens // tc.batch_size)
    data = ActivationDataModule(source, tc.batch_size)
    head = torch.cat([b.float() for b in data.peek(tc.init_batches)])
    if not torch.isfinite(head).all():
        raise SaefwError(f"the activations contain NaN/inf ({(~torch.isfinite(head)).sum().item()} values in "
                         f"the first {len(head)} tokens): check model dtype and site={cfg.site}")
    scale = math.sqrt(source.d_in) / head.norm(dim=-1).mean().item()
    sae.input_scale.fill_(scale)
    sae.init_from_data(head.to(sae.input_scale.device) * scale)

    module = SAEModule(sae, penalty, tc, total_steps)
    loggers = make_loggers(cfg, run_dir)
    history: list[dict] = []

    def on_eval(result, step):
        history.append({"step": step, **_scalars(result)})
        log_metrics(loggers, result, step)

    callbacks = [EvalCallback(source, evaluators, tc.eval_every_steps, tc.eval_batch_size, on_eval),
                 ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True, save_top_k=0,
                                 every_n_train_steps=tc.checkpoint_every_steps)]
    trainer_kwargs = {"max_epochs": 1, "max_steps": total_steps, "default_root_dir": str(run_dir),
                      "num_sanity_val_steps": 0, "gradient_clip_val": None, **cfg.trainer}
    trainer = pl.Trainer(logger=loggers, callbacks=callbacks, **trainer_kwargs)
    provenance = {**source.describe(), "penalty": cfg.penalty.name,
                  "penalty_config": OmegaConf.to_container(cfg.penalty, resolve=True), "seed": cfg.seed}
    base_record = {"arch": cfg.arch.name, "penalty": cfg.penalty.name, "layer": cfg.layer, "site": cfg.site,
                   "model": cfg.model, "source": cfg.source.name, "d_in": source.d_in, "d_sae": d_sae,
                   "seed": cfg.seed}
    try:
        trainer.fit(module, datamodule=data)
    except SystemExit:
        # Lightning turns Ctrl-C into SystemExit after its own teardown: keep what was learned before leaving
        if not trainer.interrupted:
            raise
        save_sae(sae, run_dir, provenance)
        record = {**(history[-1] if history else {}), **base_record, "steps": trainer.global_step,
                  "tokens": trainer.global_step * tc.batch_size, "interrupted": True,
                  "wall_seconds": round(time.time() - t0, 1), "history": history}
        (run_dir / "metrics.json").write_text(json.dumps(record, indent=2))
        print(f"\ninterrupted at step {trainer.global_step}: SAE saved to {run_dir} "
              f"(last checkpoint in {run_dir / 'checkpoints'})", flush=True)
        raise SystemExit(130) from None
    train_seconds = time.time() - t0
    sae.to(trainer.strategy.root_device)  # Lightning's teardown moved it to CPU; evaluate where it trained

    # the init batches, scaled as in training: after fit the stream is spent, so peek() would hand out nothing
    sae.finalize_for_inference(iter((head * scale).split(tc.batch_size)))
    metrics = run_evaluators(sae, source, evaluators, tc.eval_batch_size)
    log_metrics(loggers, metrics, trainer.global_step)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update({k: v for k, v in _scalars(metrics).items()})
        lg.finalize("success")

    save_sae(sae, run_dir, provenance)
    record = {**_scalars(metrics), **base_record, "steps": trainer.global_step,
              "tokens": trainer.global_step * tc.batch_size, "interrupted": False,
              "wall_seconds": round(time.time() - t0, 1), "train_seconds": round(train_seconds, 1),
              "history": history}
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2))
    _plot_density(metrics, run_dir)
    print_summary(record, run_dir)
    return record


def _plot_density(metrics: dict, run_dir: Path) -> None:
    dens = metrics.get("feature_density")
    if dens is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(dens.numpy(), bins=50)
    ax.set_xlabel("log10 firing frequency (held-out tokens)")
    ax.set_ylabel("latents")
    fig.tight_layout()
    fig.savefig(run_dir / "feature_density.png", dpi=100)
    plt.close(fig)


def print_summary(record: dict, run_dir: Path, title: str = "saefw run summary") -> None:
    rows = [("arch", record["arch"]), ("penalty", record["penalty"]),
            ("layer / site", f"{record['layer']} / {record['site']}")]
    rows += [(label, f"{record[k]:,}") for k, label in (("tokens", "tokens"), ("eval_tokens", "held-out tokens"))
             if k in record]
    rows += [(k, f"{record[k]:.4f}") for k in SUMMARY_KEYS if k in record]
    rows += [("wall time", f"{record['wall_seconds']:.0f} s"), ("run dir", str(run_dir))]
    width = max(len(k) for k, _ in rows)
    print("\n".join(["", title, "-" * 40] + [f"{k:<{width}}  {v}" for k, v in rows]), flush=True)
