"""One training run, as a thin orchestrator: plan → plugins → data → train → evaluate → save → report."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from saefw.app.allocator import release_freed_memory
from saefw.app.atomic import write_text
from saefw.app.clock import PhaseTimer, WallClock
from saefw.app.distributed import (
    check_accelerator,
    check_global_batch,
    end_process_group,
    is_global_zero,
    strategy_kwargs,
)
from saefw.app.quiet import is_quiet
from saefw.app.summary import print_summary
from saefw.errors import SaefwError
from saefw.evals.base import build_evaluators, run_evaluators
from saefw.io.saved import save_sae
from saefw.penalties.base import PenaltyConfig
from saefw.registry import FAMILIES, build, discover, entry
from saefw.sources.base import RunSpec
from saefw.training import shared_batches
from saefw.training.checkpoint import AtomicCheckpointIO, Checkpointer, Resume, check_identity, clear, find_resume
from saefw.training.module import ActivationDataModule, EvalCallback, SAEModule, TokenProgressBar
from saefw.training.plan import RunPlan
from saefw.training.reporting import Reporter
from saefw.training.sparsity import SparsityController

log = logging.getLogger("saefw")
LM_KEYS = ("model", "layer", "site")
TRAINING_KEYS = ("lr", "adam_beta1", "adam_beta2", "lr_warmup_steps", "lr_decay_fraction", "init_batches",
                 "dead_window_tokens")


def check_combination(arch: str, penalty: str, arch_cfg: dict | None = None) -> None:
    """The penalty fits the arch (and, where the arch's options decide it, those options: a transcoder's
    activation)."""
    arch_cfg = arch_cfg or {}
    allowed = entry("arch", arch).cls.penalties_for(arch_cfg)
    if penalty not in allowed:
        what = arch + (f" arch.activation={arch_cfg['activation']}" if "activation" in arch_cfg else "")
        raise SaefwError(f"arch={what} does not take penalty={penalty}; valid penalties for it: {', '.join(allowed)}")


def check_lm_keys(cfg: DictConfig, given: Callable[[str], bool]) -> None:
    """``model``/``layer``/``site`` only mean something to sources that read a language model."""
    given = [k for k in LM_KEYS if given(k)]
    if given and not entry("source", cfg.source.name).cls.needs_model:
        raise SaefwError(f"{', '.join(f'{k}={cfg[k]}' for k in given)}: source={cfg.source.name} reads no "
                         f"language model, so {'/'.join(LM_KEYS)} have no effect; they apply to LM sources "
                         f"(source=hf)")


def sparsity_target(cfg: DictConfig, d_sae: int | None = None) -> int:
    """The run's L0 target: ``target_l0``, or the arch's own ``default_target_l0`` when it is null — capped at a
    quarter of the dictionary (``d_sae // 4``), so a small SAE's default is still sparse."""
    if cfg.target_l0 is not None:
        return cfg.target_l0
    default = entry("arch", cfg.arch.name).cls.default_target_l0
    return max(1, min(default, d_sae // 4)) if d_sae else default


LAYOUT_HINT = {"site": "a plain SAE reads and writes one site (no source.input_site, no source.layers)",
               "pair": "a transcoder reads source.input_site and writes site (e.g. source.input_site=mlp_in "
                       "site=mlp_out)",
               "layers": "a crosscoder reads and writes site at every layer of source.layers (e.g. "
                         "source.layers=[5,6,7])"}


def layout_kwargs(arch: str, source) -> dict:
    """The constructor arguments an arch needs beyond d_in and d_sae for the rows ``source`` serves (``d_out``
    for a transcoder, ``n_layers`` for a crosscoder); an arch whose layout the source does not serve is refused."""
    want, have = entry("arch", arch).cls.layout, getattr(source, "layout", "site")
    if want != have:
        raise SaefwError(f"arch={arch} does not fit the source's settings: {LAYOUT_HINT[want]}; the source is "
                         f"set up as {LAYOUT_HINT[have]}")
    if want == "pair":
        return {"d_out": source.d_out}
    if want == "layers":
        return {"n_layers": len(source.writes)}
    return {}


def build_sae(cfg: DictConfig, d_in: int, penalty, shape: dict | None = None):
    """The arch, with two things decided here, once: the unit-norm decoder (forced on when the penalty ignores
    decoder norms, ``penalty=l1``, and could otherwise be gamed by shrinking f against W_dec) and, for the top-k
    archs, k = the run's target L0 unless ``arch.k`` is set. ``shape``: :func:`layout_kwargs`."""
    arch_cfg = OmegaConf.to_container(cfg.arch, resolve=True)
    if penalty.requires_unit_norm_decoder and "unit_norm_decoder" in arch_cfg:
        arch_cfg["unit_norm_decoder"] = True
    d_sae = cfg.d_sae or cfg.expansion_factor * d_in
    if arch_cfg.get("k", 0) is None:
        arch_cfg["k"] = sparsity_target(cfg, d_sae)
    return build("arch", arch_cfg, d_in=d_in, d_sae=d_sae, **(shape or {}))


def sparsity_control(cfg: DictConfig, sae, penalty, steps: int):
    """(the run's L0 target, its λ controller): k for the top-k archs; for a penalised arch the target λ is
    steered to (null when ``sparsity.adapt`` is off: λ stays ``penalty.coefficient``)."""
    penalised = isinstance(penalty.cfg, PenaltyConfig)  # the top-k archs' "none" penalty has no λ
    target = sae.k if hasattr(sae, "k") else (
        sparsity_target(cfg, sae.d_sae) if penalised and cfg.sparsity.adapt else None)
    controller = SparsityController(cfg.sparsity, penalty.cfg.coefficient if penalised else 0.0,
                                    target if penalised else None, steps, active=penalised)
    return target, controller


def find_checkpoint(cfg: DictConfig, run_dir: Path, steps: int, zero: bool) -> Resume | None:
    """The checkpoint this run continues from. ``resume``: null (default) continues when ``run_dir`` holds a
    checkpoint (re-running a command with the same ``hydra.run.dir``, or a requeued cluster job); true insists
    on one; false starts over, removing the checkpoints of an earlier attempt."""
    folder = run_dir / "checkpoints"
    mode = cfg.get("resume")
    if mode is False:
        if zero and (n := clear(folder)):
            print(f"resume=false: removed {n} checkpoint(s) of an earlier attempt from {folder}", flush=True)
        return None
    found = find_resume(folder, warn=lambda m: zero and print(f"warning: {m}", file=sys.stderr, flush=True))
    if found is None and mode is True:
        raise SaefwError(f"resume=true but {folder} holds no checkpoint; set hydra.run.dir to the directory of "
                         f"the run to resume")
    if found is not None and zero:
        print(f"resuming from {found.path} (step {found.step} of {steps})", flush=True)
    return found


def nothing_given(key: str) -> bool:
    """The ``given`` of a library call: the caller set no key itself."""
    return False


def run(cfg: DictConfig, run_dir: Path, clock: WallClock | None = None,
        given: Callable[[str], bool] = nothing_given) -> dict:
    """Train and evaluate one SAE; writes sae_weights, cfg.json, config.yaml, metrics.json into ``run_dir``.

    ``clock``: where the record's ``wall_seconds`` (and its ``startup`` phase) count from; the command passes the
    process start (a multirun: the job's start); default: this call. ``given(key)``: whether the user set ``key``
    (the command passes the command line's): ``layer=`` given to a source without a model is then an error and an
    evaluator the source cannot serve a warning. Under data parallelism every rank runs this; only global rank 0
    evaluates and writes (the others return an empty record)."""
    clock = clock or WallClock.now()
    discover()
    zero = is_global_zero()
    plan, resume = _prepare(cfg, run_dir, zero, given)
    timer = PhaseTimer(clock, announce=(lambda line: print(line, flush=True)) if zero else None)
    source, penalty, sae, evaluators = _build_plugins(cfg, plan, timer, zero, given)
    shared_batches.share_held_out(source)  # in a one-pass group: the held-out split's parts computed once
    with timer("data_setup", parts=lambda: {"harvest": source.harvest_seconds}):  # fingerprints, store, harvest
        source.setup()
    data = ActivationDataModule(source, plan.batch_size, plan.steps)
    with timer("init"):  # data-dependent init, the training module, its loggers and its trainer
        head = torch.cat([b.float() for b in data.peek(cfg.train.init_batches)])
        sae.initialize_from_data(head)  # a resumed run then loads the checkpoint's weights over it
        release_freed_memory()  # the store reads behind the shuffle buffer's first fill
        target, controller = sparsity_control(cfg, sae, penalty, plan.steps)
        module = SAEModule(sae, penalty, controller, cfg.train, plan.steps)
        module.rank_facts = lambda: [source.harvest_seconds, float(source.store_status == "miss")]
        base, identity = run_identity(cfg, source, sae, plan, target)
        if resume is not None:
            check_identity(resume, identity)
        reporter = Reporter(cfg, run_dir, base, write=zero, resume_state=resume.state if resume else None,
                            resume_step=resume.step if resume else None, clock=clock)
        trainer = _trainer(cfg, plan, run_dir, source, evaluators, reporter, identity)
    check_global_batch(plan.batch_size, trainer.world_size)  # before any other rank is started
    provenance = {**source.describe(), "source": cfg.source.name, "penalty": cfg.penalty.name,
                  "penalty_config": OmegaConf.to_container(cfg.penalty, resolve=True), "seed": cfg.seed}
    _fit(trainer, module, data, resume, timer,
         on_interrupt=lambda: _save_interrupted(trainer, sae, run_dir, provenance, reporter, source, plan, timer))
    if not trainer.is_global_zero:
        return {}
    with shared_batches.evaluation_turn(), timer("evaluate"):  # in a one-pass group, one job evaluates at a time
        metrics = _final_evaluation(cfg, trainer, sae, module, source, evaluators, head, plan)
    with timer("save"):
        reporter.log_eval(metrics, trainer.global_step, periodic=False)
        save_sae(sae, run_dir, provenance)
        reporter.plot(metrics)
    record = reporter.record(metrics, trainer.global_step, plan.tokens, False, **_data_record(source, module),
                             harvest_seconds=round(source.harvest_seconds, 1),
                             train_seconds=round(timer.seconds["train"] + timer.seconds["periodic_evaluate"], 1),
                             final_coefficient=controller.coefficient(plan.steps),
                             tokens_trained=int(module.tokens_trained), resumed_from=resume.step if resume else None,
                             timings=timer.seconds, **_rank_record(trainer, module))
    reporter.write(record)
    print_summary(record, run_dir)
    return record


def _prepare(cfg: DictConfig, run_dir: Path, zero: bool, given: Callable[[str], bool]) -> tuple:
    """Checks that need no data, the run's plan and the checkpoint it continues from: (plan, resume or None)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if zero:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    for family in ("source", "arch", "penalty"):
        entry(family, cfg[FAMILIES[family]].name)
    check_combination(cfg.arch.name, cfg.penalty.name, OmegaConf.to_container(cfg.arch, resolve=True))
    check_lm_keys(cfg, given)
    check_accelerator(cfg.trainer.get("accelerator", "auto"))
    plan = RunPlan.from_config(cfg)
    resume = find_checkpoint(cfg, run_dir, plan.steps, zero)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return plan, resume


def _build_plugins(cfg: DictConfig, plan: RunPlan, timer: PhaseTimer, zero: bool, given: Callable[[str], bool]):
    """(source, penalty, sae, evaluators); the SAE and the evaluators before the data, so that a bad option fails
    before anything is harvested."""
    with timer("model_load"):  # an LM source reads the model's config here and loads the weights when first needed
        source = build("source", cfg.source, spec=RunSpec(seed=cfg.seed, train_tokens=plan.tokens))
    source.on_model_load = lambda seconds: timer.charge("model_load", seconds)
    with timer("init", announce=False):
        penalty = build("penalty", cfg.penalty)
        sae = build_sae(cfg, source.d_in, penalty, layout_kwargs(cfg.arch.name, source))
        # only rank 0 evaluates
        evaluators = build_evaluators(cfg, source, named=given("evaluators")) if zero else []
    # every rank: whichever harvests the held-out split computes the clean summary rank 0's evaluation reads
    source.summarize_held_out = source.summarize_held_out and "loss_recovered" in (cfg.evaluators or {})
    return source, penalty, sae, evaluators


def cross_site_keys(source) -> dict:
    """What a dictionary across sites or layers reads beyond ``layer``/``site``: a transcoder's ``input_site``, a
    crosscoder's ``layers`` (nothing for a plain SAE, whose records stay as they were)."""
    layout = getattr(source, "layout", "site")
    if layout == "pair":
        return {"input_site": source.reads[0][1]}
    if layout == "layers":
        return {"layers": [layer for layer, _ in source.writes]}
    return {}


def run_identity(cfg: DictConfig, source, sae, plan: RunPlan, target) -> tuple[dict, dict]:
    """(what every record of the run carries, what makes it this run): a rerun in a finished run's dir with
    another target or lr is a new run, and resuming a checkpoint of another one is refused."""
    lm_keys = {k: cfg[k] if entry("source", cfg.source.name).cls.needs_model else None for k in LM_KEYS}
    identity = {"arch": cfg.arch.name, "penalty": cfg.penalty.name, "source": cfg.source.name, **lm_keys,
                **cross_site_keys(source), "d_in": source.d_in, "d_sae": sae.d_sae, "seed": cfg.seed, "steps": plan.steps,
                "batch_size": plan.batch_size}
    training = {"target_l0": target, "arch_config": OmegaConf.to_container(cfg.arch, resolve=True),
                "penalty_config": OmegaConf.to_container(cfg.penalty, resolve=True),
                "sparsity": OmegaConf.to_container(cfg.sparsity, resolve=True),
                **{f"train.{k}": cfg.train[k] for k in TRAINING_KEYS}}
    base = {**{k: v for k, v in identity.items() if k not in ("steps", "batch_size")}, "target_l0": target}
    return base, {**identity, **training}


def _fit(trainer, module, data, resume, timer: PhaseTimer, on_interrupt: Callable[[], None]) -> None:
    """Train; Ctrl-C saves what was learned (``on_interrupt``) and exits with status 130."""
    eval_seconds = lambda: {"periodic_evaluate": sum(cb.seconds for cb in trainer.callbacks  # noqa: E731
                                                     if isinstance(cb, EvalCallback))}
    try:
        with timer("train", parts=eval_seconds):
            trainer.fit(module, datamodule=data, ckpt_path=str(resume.path) if resume else None,
                        weights_only=True)
    except SystemExit:
        # Lightning turns Ctrl-C into SystemExit after its own teardown: keep what was learned before leaving
        if not trainer.interrupted:
            raise
        if trainer.is_global_zero:
            on_interrupt()
        raise SystemExit(130) from None
    finally:
        end_process_group()


def _save_interrupted(trainer, sae, run_dir: Path, provenance: dict, reporter, source, plan: RunPlan,
                      timer: PhaseTimer) -> None:
    save_sae(sae, run_dir, provenance)
    last = reporter.history[-1] if reporter.history else {}
    reporter.write(reporter.record(last, trainer.global_step, trainer.global_step * plan.batch_size, True,
                                   activation_store=source.store_status,
                                   harvest_seconds=round(source.harvest_seconds, 1), timings=timer.seconds),
                   status="interrupted")
    print(f"\ninterrupted at step {trainer.global_step}: SAE saved to {run_dir}; run the same command "
          f"with hydra.run.dir={run_dir} to resume from its last checkpoint", flush=True)


def _final_evaluation(cfg: DictConfig, trainer, sae, module, source, evaluators, head, plan: RunPlan) -> dict:
    """The evaluators on the held-out split, on the device the SAE trained on (Lightning's teardown moved it to
    the CPU), after :meth:`~saefw.arch.base.SAE.finalize_for_inference` on the first training batches."""
    sae.to(trainer.strategy.root_device)
    sae.finalize_for_inference(iter(sae.scale_rows(head.to(sae.input_scale.device)).split(plan.batch_size)))
    metrics = run_evaluators(sae, source, evaluators, cfg.train.eval_batch_size)
    metrics["dead_fraction"] = module.dead_mask().float().mean().item()
    return metrics


def _data_record(source, module) -> dict:
    """Whether the run harvested: under data parallelism it did if any rank did (the first rank to take the
    store's lock harvests; the rest read)."""
    status = source.store_status
    if module.rank_states is not None:
        source.harvest_seconds = sum(f[0] for f in module.gathered_facts)
        if any(f[1] for f in module.gathered_facts):
            status = "miss"
    return {"activation_store": status}


def _rank_record(trainer, module) -> dict:
    ranks = {"world_size": trainer.world_size}
    if module.rank_states is not None:
        ranks["rank_state"] = module.rank_states
    return ranks


def _trainer(cfg: DictConfig, plan: RunPlan, run_dir: Path, source, evaluators, reporter, identity: dict):
    tc = cfg.train
    state = lambda: {**reporter.state(), "identity": identity}  # noqa: E731 - read at every checkpoint
    callbacks = [EvalCallback(source, evaluators, tc.eval_every_steps, tc.eval_batch_size, reporter.log_eval),
                 Checkpointer(run_dir / "checkpoints", tc.checkpoint_every_steps, state)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(TokenProgressBar(plan.batch_size))
    # the model-summary table only on a verbose console (saefw.app.quiet), unless the trainer config asks for it
    kwargs = {"max_epochs": 1, "default_root_dir": str(run_dir), "num_sanity_val_steps": 0,
              "gradient_clip_val": None, "enable_model_summary": not is_quiet(), **cfg.trainer,
              "max_steps": plan.steps, "enable_checkpointing": False}
    kwargs.update(strategy_kwargs(kwargs, AtomicCheckpointIO()))
    try:
        return pl.Trainer(logger=reporter.loggers, callbacks=callbacks, **kwargs)
    except (MisconfigurationException, ValueError, TypeError) as exc:
        raise SaefwError(f"trainer: {' '.join(str(exc).split())[:300]}") from None
