"""Training checkpoints: written atomically, the newest two kept, loaded with ``weights_only=True``, and found again
when a run is resumed.

A checkpoint is Lightning's (model with the SAE, the sparsity controller's buffers and the dead-latent counters,
optimizer, LR scheduler, loop progress) plus saefw's own block ``checkpoint["saefw"]``: the evaluation history so
far, the W&B run id, and the run's identity (arch, shapes, budget, seed, source), which a resumed run must match.
The data position needs no field of its own: the stream is deterministic given the seed, so a resumed run skips
exactly ``global_step`` global batches (see :mod:`saefw.sources.shuffle`).
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from saefw.app.atomic import atomic_path
from saefw.errors import SaefwError

log = logging.getLogger("saefw")
_STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")
LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but every file is written under a temporary name, flushed to disk and
    renamed into place (a killed job never leaves a truncated checkpoint under a real name), and every load is
    ``torch.load(weights_only=True)``: a checkpoint file can hold tensors and plain containers, never code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(Path(path), map_location or "cpu")


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)``; any failure (truncated, garbled, or holding objects other than
    tensors and plain containers) is a :class:`SaefwError` naming the file."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise SaefwError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - zip, pickle and weights-only errors all mean "unusable"
        reason = ("refused by torch.load(weights_only=True): garbled, or holding objects other than tensors"
                  if "Weights only load failed" in str(exc) else f"truncated or garbled: {type(exc).__name__}")
        raise SaefwError(f"checkpoint {path} is unreadable ({reason})") from None
    if not isinstance(ckpt, dict) or "saefw" not in ckpt or "global_step" not in ckpt:
        raise SaefwError(f"checkpoint {path} is not a saefw training checkpoint")
    return ckpt


def step_files(folder: Path) -> list[Path]:
    """The step checkpoints in ``folder``, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step-*.ckpt") if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


@dataclass
class Resume:
    """Where a resumed run starts: the checkpoint file, its optimizer step and saefw's block."""

    path: Path
    step: int
    state: dict


def find_resume(folder: Path, warn: Callable[[str], None]) -> Resume | None:
    """The newest readable checkpoint in ``folder`` (None when there is none). A corrupt one is reported with
    ``warn`` (one line naming it) and the one before it is used; when every checkpoint is corrupt, a
    :class:`SaefwError` says so."""
    bad = []
    for path in reversed(step_files(folder)):
        try:
            ckpt = load_checkpoint(path)
        except SaefwError as exc:
            warn(f"{exc}; trying the previous one")
            bad.append(path.name)
            continue
        return Resume(path, int(ckpt["global_step"]), ckpt["saefw"])
    if bad:
        raise SaefwError(f"no usable checkpoint in {folder} ({', '.join(bad)} unreadable); delete them or pass "
                         f"resume=false to start this run over")
    return None


def check_identity(resume: Resume, identity: dict) -> None:
    """A resumed run must be the run that wrote the checkpoint: same arch, shapes, budget, seed and source."""
    saved = resume.state.get("identity", {})
    diff = [f"{k}={saved.get(k)!r} (this run: {v!r})" for k, v in identity.items() if saved.get(k) != v]
    if diff:
        raise SaefwError(f"cannot resume from {resume.path}: it was trained with {', '.join(diff)}; rerun with "
                         f"the same settings, or pass resume=false to start over in this directory")


class Checkpointer(pl.Callback):
    """Saves ``checkpoints/step-<step>.ckpt`` every ``every`` optimizer steps and when training ends, keeps the
    newest ``keep``, and points ``last.ckpt`` (a symlink) at the newest. ``state()`` fills saefw's block.

    Every rank calls :meth:`save` (Lightning's ``save_checkpoint`` is collective); only global rank 0 writes."""

    def __init__(self, folder: Path, every: int, state: Callable[[], dict], keep: int = 2):
        self.folder, self.every, self.state, self.keep = Path(folder), every, state, keep
        self._saved_step = -1
        self._due = self._between_batches = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # saved when the next batch starts: Lightning logs this step's train row only after this hook, so a
        # checkpoint written here would come before that row reached the disk, and a job killed before the
        # loggers' next flush would lose it for good (its resumed run starts after it)
        step = trainer.global_step
        self._due = bool(self.every and step > 0 and step % self.every == 0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._due:
            self._due, self._between_batches = False, True
            try:
                self.save(trainer)
            finally:
                self._between_batches = False

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > 0:
            self.save(trainer)  # so a job killed during the final evaluation resumes without training again

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["saefw"] = self.state()
        if self._between_batches:
            _as_after_the_last_batch(checkpoint)

    def save(self, trainer) -> None:
        step = trainer.global_step
        if step == self._saved_step:
            return
        self._saved_step = step
        path = self.folder / f"step-{step:08d}.ckpt"
        if trainer.is_global_zero:  # the logs up to this step reach the disk before the checkpoint that resumes them
            for logger in trainer.loggers:
                logger.save()
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, not only the weights
        if trainer.is_global_zero:
            _link(self.folder / LAST, path.name)
            for old in step_files(self.folder)[: -self.keep]:
                old.unlink(missing_ok=True)


def _as_after_the_last_batch(checkpoint: dict) -> None:
    """A checkpoint written when a batch starts holds the state after the previous batch, but Lightning has
    already counted the new batch as ready. Its progress is set back to say so (ready = completed, Lightning's
    "restarted on last" stage): otherwise a resumed run takes the checkpoint for one written inside a batch and
    logs every later step one step too far."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    for part in ("total", "current"):
        progress[part]["ready"] = progress[part]["completed"]


def _link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (a name in the same folder) atomically; a copy-free convenience only."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.partial")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    except OSError:  # a filesystem without symlinks: last.ckpt is only a convenience
        tmp.unlink(missing_ok=True)


def clear(folder: Path) -> int:
    """Remove the step checkpoints in ``folder`` (a run started over); returns how many."""
    files = step_files(folder)
    for p in files:
        p.unlink(missing_ok=True)
    (Path(folder) / LAST).unlink(missing_ok=True)
    return len(files)
