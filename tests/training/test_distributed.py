"""Rank detection before Lightning starts, and which strategy the Trainer gets."""
import pytest
import torch

from saefw.app.distributed import (
    SaefwDDPStrategy,
    check_accelerator,
    check_global_batch,
    is_global_zero,
    strategy_kwargs,
)
from saefw.errors import SaefwError
from saefw.training.checkpoint import AtomicCheckpointIO

RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS")


@pytest.mark.parametrize("env, zero", [
    ({}, True),
    ({"LOCAL_RANK": "1"}, False),  # a rank the subprocess launcher started
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
    ({"RANK": "3", "LOCAL_RANK": "0"}, False),  # torchrun
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}, False),  # srun task 1
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, True),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "1"}, True),  # a one-task step is not distributed
])
def test_global_zero_from_the_launchers_environment(monkeypatch, env, zero):
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert is_global_zero() is zero


def test_ddp_gets_saefws_strategy_with_atomic_checkpoints():
    io = AtomicCheckpointIO()
    for kwargs in ({"strategy": "ddp", "devices": 2}, {"strategy": "auto", "devices": 2},
                   {"strategy": "auto", "devices": 1, "num_nodes": 2}, {"strategy": "ddp", "devices": "0,1"}):
        out = strategy_kwargs(kwargs, io)
        assert isinstance(out["strategy"], SaefwDDPStrategy) and out["strategy"].checkpoint_io is io
    out = strategy_kwargs({"strategy": "ddp_find_unused_parameters_true", "devices": 2}, io)
    assert out["strategy"]._ddp_kwargs.get("find_unused_parameters") is True
    assert strategy_kwargs({"strategy": "auto", "devices": 1}, io) == {"strategy": "auto", "plugins": [io]}
    with pytest.raises(SaefwError, match="trainer.strategy=ddp_spawn is not supported"):
        strategy_kwargs({"strategy": "ddp_spawn", "devices": 2}, io)


def test_accelerator_and_global_batch_checks():
    check_accelerator("cpu")
    check_accelerator("auto")
    if not torch.cuda.is_available():
        with pytest.raises(SaefwError, match="trainer.accelerator=gpu but no CUDA GPU is visible here"):
            check_accelerator("gpu")
    check_global_batch(64, 2)
    with pytest.raises(SaefwError, match="train.batch_size=63 does not split evenly over 2 ranks"):
        check_global_batch(63, 2)
