"""Checkpoint files: atomic writes, weights-only loads, the newest readable one found on resume."""
import collections

import pytest
import torch

from saefw.errors import SaefwError
from saefw.training.checkpoint import (
    AtomicCheckpointIO,
    Resume,
    check_identity,
    find_resume,
    load_checkpoint,
    step_files,
)


def _ckpt(step, **extra):
    return {"global_step": step, "state_dict": {"w": torch.full((3,), float(step))},
            "saefw": {"history": [{"step": step, "l0": 1.5}], "wandb_id": "abc12345", "identity": {"arch": "l1"}},
            **extra}


def test_atomic_io_writes_whole_files_and_loads_them_back(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(7), tmp_path / "step-00000007.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000007.ckpt"]  # no temporary file left behind
    back = io.load_checkpoint(tmp_path / "step-00000007.ckpt")
    assert back["global_step"] == 7 and torch.equal(back["state_dict"]["w"], torch.full((3,), 7.0))
    assert back["saefw"]["history"] == [{"step": 7, "l0": 1.5}]


class Payload:
    """An object a pickle may carry; a weights-only load must refuse it (it could just as well run code)."""


def test_a_checkpoint_holding_an_object_is_refused(tmp_path):
    path = tmp_path / "step-00000001.ckpt"
    torch.save(_ckpt(1, callbacks=collections.OrderedDict(x=Payload())), path)
    with pytest.raises(SaefwError, match=r"is unreadable \(refused by torch.load\(weights_only=True\)"):
        load_checkpoint(path)


def test_the_newest_readable_checkpoint_is_used_and_a_corrupt_one_reported(tmp_path):
    io = AtomicCheckpointIO()
    for step in (20, 40, 60):
        io.save_checkpoint(_ckpt(step), tmp_path / f"step-{step:08d}.ckpt")
    assert [p.name for p in step_files(tmp_path)] == [f"step-{s:08d}.ckpt" for s in (20, 40, 60)]
    newest = tmp_path / "step-00000060.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # killed mid-write by something that did not write atomically
    warnings = []
    found = find_resume(tmp_path, warnings.append)
    assert isinstance(found, Resume) and found.step == 40 and found.path.name == "step-00000040.ckpt"
    assert found.state["wandb_id"] == "abc12345"
    assert len(warnings) == 1 and warnings[0].startswith(f"checkpoint {newest} is unreadable (truncated or garbled")
    assert warnings[0].endswith("; trying the previous one")
    for step in (20, 40):
        (tmp_path / f"step-{step:08d}.ckpt").write_bytes(b"garbage")
    with pytest.raises(SaefwError, match=r"no usable checkpoint in .* \(step-00000060.ckpt, step-00000040.ckpt, "
                                         r"step-00000020.ckpt unreadable\); delete them or pass resume=false"):
        find_resume(tmp_path, lambda m: None)
    assert find_resume(tmp_path / "none", lambda m: None) is None


def test_a_different_run_cannot_resume_the_checkpoint(tmp_path):
    resume = Resume(tmp_path / "step-00000010.ckpt", 10,
                    {"identity": {"arch": "l1", "steps": 100, "seed": 0}})
    check_identity(resume, {"arch": "l1", "steps": 100, "seed": 0})
    with pytest.raises(SaefwError, match=r"it was trained with steps=100 \(this run: 200\), seed=0 \(this run: 1\)"):
        check_identity(resume, {"arch": "l1", "steps": 200, "seed": 1})
