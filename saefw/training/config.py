"""The top-level run schema: typed, so ``layer=abc`` or ``trian.lr=1`` fails at composition with Hydra's message.

Plugin groups (``source``, ``arch``, ``penalty``, ``evaluators``) are typed by their own registered dataclasses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from saefw.app.plugin_help import options_text
from saefw.app.wandb_settings import WandbSettings
from saefw.training.sparsity import SparsityConfig


@dataclass
class TrainConfig:
    batch_size: int = 1024
    lr: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_warmup_steps: int = 20
    lr_decay_fraction: float = field(default=0.2, metadata={"help": "linear decay to 0 over this last share of steps"})
    eval_every_steps: int = field(default=0, metadata={"help": "evaluate every this many steps; 0: only at the end"})
    eval_batch_size: int = 4096
    init_batches: int = field(default=4, metadata={"help": (
        "batches used to set input_scale (E‖x‖ = √d) and b_dec (geometric median)")})
    dead_window_tokens: int = field(default=100_000, metadata={"help": (
        "dead_fraction = latents silent over the last this many training tokens")})
    checkpoint_every_steps: int = 100


@dataclass
class WandbConfig(WandbSettings):
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    layer: int = 6
    site: str = "resid_post"
    seed: int = 0
    total_tokens: int = 300_000
    # one knob for every arch; each arch's default_target_l0 is chosen from measurements and documented there
    target_l0: int | None = field(default=None, metadata={"help": (
        "the sparsity target: the penalised archs adapt λ towards it (saefw/training/sparsity.py), the top-k archs use it "
        "as k; null: each arch's own default. sparsity.adapt=false trains at a fixed λ = penalty.coefficient")})
    expansion_factor: int = 8
    d_sae: int | None = field(default=None, metadata={"help": "latents; overrides expansion_factor"})
    threads: int | None = field(default=None, metadata={"help": (
        "torch CPU threads; 1 is faster when other jobs share a small machine")})
    # see saefw/training/checkpoint.py
    resume: bool | None = field(default=None, metadata={"help": (
        "null: continue from the run dir's last checkpoint when there is one (same hydra.run.dir, a requeued "
        "job); true: insist on one; false: start over (the old checkpoints are removed)")})
    source: Any = None
    arch: Any = None
    penalty: Any = None
    evaluators: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    trainer: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "passed as-is to pytorch_lightning.Trainer")})
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # see saefw/training/objective.py
    objective: Any = field(default=None, metadata={"help": (
        "what the job returns to an optimising sweeper (Optuna): null | metric | [metrics] | {metrics, targets}")})
    # see saefw/app/quiet.py
    verbose: bool = field(default=False, metadata={"help": (
        "false: a quiet console (a line per phase, the progress bars, the summary); true: also Lightning's info "
        "lines and tips, the model summary and the third-party warnings saefw silences")})


def run_tag(source: str, layer, site) -> str:
    """The run directory's suffix: ``L6_resid_post`` for LM sources, the source's name otherwise."""
    return f"L{layer}_{site}" if source == "hf" else str(source)


def register_schema() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("saefw_tag", run_tag, replace=True)
    # conf/config.yaml's help template: every registered plugin's options (saefw/app/plugin_help.py)
    OmegaConf.register_new_resolver("saefw_plugin_options", options_text, replace=True)
    ConfigStore.instance().store(name="saefw_schema", node=RunConfig)
