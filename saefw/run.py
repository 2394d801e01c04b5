"""One training run, as a thin orchestrator: plan → plugins → data → train → evaluate → save → report."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from saefw.cli import on_command_line
from saefw.errors import SaefwError
from saefw.evals.base import run_evaluators, usable
from saefw.io import save_sae
from saefw.plan import RunPlan
from saefw.registry import FAMILIES, build, discover, entry
from saefw.report import PhaseTimer, Reporter, print_summary
from saefw.sources.base import RunSpec

log = logging.getLogger("saefw")
LM_KEYS = ("model", "layer", "site")


def check_combination(arch: str, penalty: str) -> None:
    allowed = entry("arch", arch).cls.allowed_penalties
    if penalty not in allowed:
        raise SaefwError(f"arch={arch} does not take penalty={penalty}; valid penalties for {arch}: "
                         f"{', '.join(allowed)}")


def check_lm_keys(cfg: DictConfig) -> None:
    """``model``/``layer``/``site`` only mean something to sources that read a language model."""
    given = [k for k in LM_KEYS if on_command_line(k)]
    if given and not entry("source", cfg.source.name).cls.needs_model:
        raise SaefwError(f"{', '.join(f'{k}={cfg[k]}' for k in given)}: source={cfg.source.name} reads no "
                         f"language model, so {'/'.join(LM_KEYS)} have no effect; they apply to LM sources "
                         f"(source=hf)")


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


def build_sae(cfg: DictConfig, d_in: int, penalty):
    """The arch, with the unit-norm decoder decided here, once: forced on when the penalty ignores decoder
    norms (``penalty=l1``) and could otherwise be gamed by shrinking f against W_dec."""
    arch_cfg = OmegaConf.to_container(cfg.arch, resolve=True)
    if penalty.requires_unit_norm_decoder and "unit_norm_decoder" in arch_cfg:
        arch_cfg["unit_norm_decoder"] = True
    return build("arch", arch_cfg, d_in=d_in, d_sae=cfg.d_sae or cfg.expansion_factor * d_in)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate one SAE; writes sae_weights, cfg.json, config.yaml, metrics.json into ``run_dir``."""
    import pytorch_lightning as pl

    from saefw.sparsity import SparsityController
    from saefw.train import ActivationDataModule, EvalCallback, SAEModule

    discover()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for family in ("source", "arch", "penalty"):
        entry(family, cfg[FAMILIES[family]].name)
    check_combination(cfg.arch.name, cfg.penalty.name)
    check_lm_keys(cfg)
    plan = RunPlan.from_config(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # plugins and data
    timer = PhaseTimer()
    with timer("model_load"):  # building an LM source loads its model
        source = build("source", cfg.source, spec=RunSpec(seed=cfg.seed, train_tokens=plan.tokens))
    penalty = build("penalty", cfg.penalty)
    sae = build_sae(cfg, source.d_in, penalty)
    evaluators = build_evaluators(cfg, source)
    with timer("data_setup"):  # fingerprints, store check, harvest (split out below)
        source.setup()
    timer.split("data_setup", "harvest", source.harvest_seconds)
    data = ActivationDataModule(source, plan.batch_size, plan.steps)
    with timer("init"):
        head = torch.cat([b.float() for b in data.peek(cfg.train.init_batches)])
        sae.initialize_from_data(head)

    # training
    controller = SparsityController(cfg.sparsity, getattr(penalty.cfg, "coefficient", 0.0), cfg.target_l0,
                                    plan.steps, active=hasattr(penalty.cfg, "coefficient"))
    module = SAEModule(sae, penalty, controller, cfg.train, plan.steps)
    provenance = {**source.describe(), "source": cfg.source.name, "penalty": cfg.penalty.name,
                  "penalty_config": OmegaConf.to_container(cfg.penalty, resolve=True), "seed": cfg.seed}
    lm_keys = {k: cfg[k] if entry("source", cfg.source.name).cls.needs_model else None for k in LM_KEYS}
    reporter = Reporter(cfg, run_dir, {
        "arch": cfg.arch.name, "penalty": cfg.penalty.name, "source": cfg.source.name, **lm_keys,
        "d_in": source.d_in, "d_sae": sae.d_sae, "seed": cfg.seed, "target_l0": cfg.target_l0})
    trainer = _trainer(cfg, plan, run_dir, source, evaluators, reporter)
    data_record = {"activation_store": source.store_status}
    try:
        with timer("train"):
            trainer.fit(module, datamodule=data)
    except SystemExit:
        # Lightning turns Ctrl-C into SystemExit after its own teardown: keep what was learned before leaving
        if not trainer.interrupted:
            raise
        save_sae(sae, run_dir, provenance)
        last = reporter.history[-1] if reporter.history else {}
        reporter.write(reporter.record(last, trainer.global_step, trainer.global_step * plan.batch_size, True,
                                       **data_record, harvest_seconds=round(source.harvest_seconds, 1),
                                       timings=timer.seconds),
                       status="interrupted")
        print(f"\ninterrupted at step {trainer.global_step}: SAE saved to {run_dir} "
              f"(last checkpoint in {run_dir / 'checkpoints'})", flush=True)
        raise SystemExit(130) from None
    train_seconds = reporter.elapsed()
    timer.split("train", "periodic_evaluate",
                sum(cb.seconds for cb in trainer.callbacks if isinstance(cb, EvalCallback)))

    # evaluation: on the device it trained on (Lightning's teardown moved it to the CPU)
    with timer("evaluate"):
        sae.to(trainer.strategy.root_device)
        sae.finalize_for_inference(iter((head * sae.input_scale.cpu()).split(plan.batch_size)))
        metrics = run_evaluators(sae, source, evaluators, cfg.train.eval_batch_size)
        metrics["dead_fraction"] = module.dead_mask().float().mean().item()
    reporter.log_eval(metrics, trainer.global_step, periodic=False)
    with timer("save"):
        save_sae(sae, run_dir, provenance)
    record = reporter.record(metrics, trainer.global_step, plan.tokens, False, **data_record,
                             harvest_seconds=round(source.harvest_seconds, 1), train_seconds=round(train_seconds, 1),
                             final_coefficient=controller.coefficient(plan.steps), timings=timer.seconds)
    reporter.write(record, metrics)
    print_summary(record, run_dir)
    return record


def _trainer(cfg: DictConfig, plan: RunPlan, run_dir: Path, source, evaluators, reporter):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from saefw.train import EvalCallback, TokenProgressBar

    tc = cfg.train
    callbacks = [EvalCallback(source, evaluators, tc.eval_every_steps, tc.eval_batch_size, reporter.log_eval),
                 ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), save_last=True, save_top_k=0,
                                 every_n_train_steps=tc.checkpoint_every_steps)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(TokenProgressBar(plan.batch_size))
    kwargs = {"max_epochs": 1, "default_root_dir": str(run_dir), "num_sanity_val_steps": 0,
              "gradient_clip_val": None, **cfg.trainer, "max_steps": plan.steps}
    return pl.Trainer(logger=reporter.loggers, callbacks=callbacks, **kwargs)
