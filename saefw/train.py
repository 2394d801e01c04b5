"""Lightning pieces: the SAE training module, the activation data module, and the periodic-eval callback."""
from __future__ import annotations

import itertools
import logging
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, IterableDataset

from saefw.errors import SaefwError
from saefw.evals.base import run_evaluators
from saefw.arch.ops import firing_stats
from saefw.sparsity import SparsityController, compose_loss

log = logging.getLogger(__name__)
# the stream is read in the main process (num_workers=0), so a length on an IterableDataset is exact here
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")


class _Stream(IterableDataset):
    """An iterable of ``length`` batches: the length gives Lightning's progress bar its total and ETA."""

    def __init__(self, make_iter, length: int):
        self.make_iter, self.length = make_iter, length

    def __iter__(self):
        return self.make_iter()

    def __len__(self):
        return self.length


class ActivationDataModule(pl.LightningDataModule):
    """Serves ``steps`` batches of ``source.train_batches``. ``peek(n)`` hands the first batches out early for
    data-dependent init without losing them from the stream."""

    def __init__(self, source, batch_size: int, steps: int):
        super().__init__()
        self.source, self.batch_size, self.steps = source, batch_size, steps
        self._head: list[torch.Tensor] = []
        self._iter = None

    def _stream(self):
        if self._iter is None:
            self._iter = self.source.train_batches(self.batch_size)
        return self._iter

    def peek(self, n: int) -> list[torch.Tensor]:
        while len(self._head) < n:
            batch = next(self._stream(), None)
            if batch is None:
                break
            self._head.append(batch)
        return self._head[:n]

    def _all(self):
        head, self._head = self._head, []
        return itertools.islice(itertools.chain(head, self._stream()), self.steps)

    def train_dataloader(self):
        return DataLoader(_Stream(self._all, self.steps), batch_size=None, num_workers=0)


class SAEModule(pl.LightningModule):
    """Trains ``sae``: loss = ‖x − x̂‖² + Σ aux + λ_t·P (see :mod:`saefw.sparsity`; the controller owns λ_t).

    Learning rate: linear warmup, constant, linear decay to 0 over the last ``lr_decay_fraction`` of steps.
    A latent is dead when it has not fired for ``dead_window_tokens`` training tokens.

    The step never waits for the device: the dead-latent counters, λ_t and the non-finite check live in device
    tensors. Metrics are logged every ``trainer.log_every_n_steps`` steps (the steps Lightning writes anyway). A
    batch with NaN/inf activations stops training with an error naming its step: on the CPU at that step (asking
    costs nothing there), on an accelerator at the next logging step, before any checkpoint and at the end."""

    def __init__(self, sae, penalty, controller: SparsityController, train_cfg, total_steps: int):
        super().__init__()
        self.sae, self.penalty, self.controller = sae, penalty, controller
        self.tcfg, self.total_steps = train_cfg, total_steps
        self.register_buffer("tokens_since_fired", torch.zeros(sae.d_sae, dtype=torch.long))
        # (step, batch index, count) of the first batch with non-finite activations; step −1: none yet
        self.register_buffer("_nonfinite", torch.tensor([-1, -1, 0]), persistent=False)

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.tcfg.dead_window_tokens

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's logs (its own rule: every ``log_every_n_steps`` steps)."""
        trainer = self._trainer
        every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        return (self.global_step + 1) % max(1, every) == 0

    def _watch_finite(self, x: torch.Tensor, batch_idx: int) -> None:
        """Record (on the device) the first batch whose activations hold NaN/inf; check it on the host now on
        the CPU, at logging steps elsewhere."""
        n_bad = x.numel() - torch.count_nonzero(torch.isfinite(x))
        first = (n_bad > 0) & (self._nonfinite[0] < 0)
        # full_like fills on the device (a host→device copy of a CPU tensor would wait for the device)
        now = torch.stack([torch.full_like(n_bad, self.global_step), torch.full_like(n_bad, batch_idx), n_bad])
        self._nonfinite.copy_(torch.where(first, now, self._nonfinite))
        if self._check_now(x):
            self.raise_if_nonfinite()

    def _check_now(self, x: torch.Tensor) -> bool:
        return x.device.type == "cpu" or self._logging_step()

    def raise_if_nonfinite(self) -> None:
        step, batch_idx, count = self._nonfinite.tolist()
        if step >= 0:
            root = self.trainer.default_root_dir if self._trainer is not None else "the run directory"
            raise SaefwError(f"non-finite activations (NaN/inf) in training batch {batch_idx} (step {step}, {count} "
                             f"values): not trained through; checkpoints so far are kept in {root}/checkpoints")

    def training_step(self, batch, batch_idx):
        x = batch.float() * self.sae.input_scale
        self._watch_finite(x, batch_idx)
        coeff = self.controller.coefficient_tensor(self.global_step)
        out = compose_loss(self.sae.train_forward(x, dead_mask=self.dead_mask()), self.penalty, coeff)
        with torch.no_grad():
            fired, l0 = firing_stats(out.f)
            self.tokens_since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
            self.controller.update(l0, self.global_step)
        if self._logging_step():
            logs = {"train/loss": out.loss.detach(), "train/l0": l0, "train/coefficient": coeff,
                    "train/dead_fraction": self.dead_mask().float().mean(),
                    **{f"train/{k}": v for k, v in out.terms.items()}}
            self.log_dict(logs, prog_bar=False, on_step=True)
            self.log("l0", l0, prog_bar=True, logger=False)
            self.log("mse", out.terms["mse_loss"], prog_bar=True, logger=False)
        return out.loss

    def on_save_checkpoint(self, checkpoint):
        self.raise_if_nonfinite()  # a checkpoint never holds weights trained on a non-finite batch

    def on_train_end(self):
        self.raise_if_nonfinite()

    def on_before_optimizer_step(self, optimizer):
        if self.sae.unit_norm_decoder:
            self.sae.remove_gradient_parallel_to_decoder_directions()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.sae.unit_norm_decoder:
            self.sae.set_decoder_norm_to_unit_norm()

    def configure_optimizers(self):
        t = self.tcfg
        groups = self.sae.param_groups(t.lr)
        # the fused kernel (one pass over each parameter instead of a dozen: 2x faster on a CPU) where torch has it
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        opt = torch.optim.Adam(groups, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), fused=fused or None)
        decay_start = int(self.total_steps * (1 - t.lr_decay_fraction))

        def factor(step):
            warm = min(1.0, (step + 1) / t.lr_warmup_steps) if t.lr_warmup_steps else 1.0
            if step >= decay_start and self.total_steps > decay_start:
                return warm * max(0.0, (self.total_steps - step) / (self.total_steps - decay_start))
            return warm

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EvalCallback(pl.Callback):
    """Runs the evaluators on the held-out split every ``every_n_steps`` optimizer steps."""

    def __init__(self, source, evaluators, every_n_steps: int, batch_size: int, on_result=None):
        self.source, self.evaluators, self.every = source, evaluators, every_n_steps
        self.batch_size, self.on_result = batch_size, on_result
        self.seconds = 0.0  # spent evaluating (reported apart from training in metrics.json's timings)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step % self.every == 0 and step > 0:
            t0 = time.perf_counter()
            result = run_evaluators(pl_module.sae, self.source, self.evaluators, self.batch_size, final=False)
            self.seconds += time.perf_counter() - t0
            if self.on_result:
                self.on_result(result, step)


class TokenProgressBar(TQDMProgressBar):
    """Lightning's bar (step/total, ETA) with the training throughput in tokens/s beside it."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        bar = self.train_progress_bar
        rate = bar.format_dict.get("rate") if bar is not None else None
        if rate:
            metrics["tok/s"] = f"{rate * self.batch_size:,.0f}"
        return metrics
