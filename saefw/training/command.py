"""``python -m saefw``: train and evaluate one SAE (a sweep with ``-m``); the Hydra app ``conf/config.yaml``."""
from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import Container, OmegaConf

from saefw.app.cli import command, job_clock, on_command_line
from saefw.app.failures import check_finite
from saefw.errors import SaefwError
from saefw.training.config import register_schema
from saefw.training.objective import parse_objective
from saefw.training.run import run


def _sweeper_optimises(hc) -> bool:
    """Whether this multirun's sweeper reads the task's return value (any sweeper but Hydra's basic grid)."""
    target = str(hc.sweeper.get("_target_", ""))
    return hc.mode.name == "MULTIRUN" and not target.endswith("BasicSweeper")


def main(argv: list[str] | None = None) -> None:
    """``python -m saefw [overrides]``: train and evaluate one SAE (a sweep with ``-m``).

    Returns the run's metrics record, or the values named by the ``objective`` key (see
    :mod:`saefw.training.objective`) for sweepers that optimise them (Optuna)."""

    def train(cfg, output_dir):
        spec = cfg.get("objective")
        objective = parse_objective(OmegaConf.to_container(spec, resolve=True) if isinstance(spec, Container)
                                    else spec)
        hc = HydraConfig.get()
        if objective is None and _sweeper_optimises(hc):
            sweeper = hc.sweeper._target_.rsplit(".", 1)[-1]
            raise SaefwError(f"hydra.sweeper={sweeper} optimises the job's return value, but objective is null: "
                             f"set e.g. objective=[l0,ce_loss_recovered] (see README)")
        record = run(cfg, output_dir, clock=job_clock(), given=on_command_line)
        check_finite(record)
        return record if objective is None else objective.values(record)

    command("config", train, argv, schema=register_schema)
