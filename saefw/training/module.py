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

from saefw.app.allocator import release_freed_memory
from saefw.app.distributed import check_global_batch
from saefw.arch.base import compose_loss
from saefw.arch.ops import batch_firing
from saefw.errors import SaefwError
from saefw.evals.base import run_evaluators
from saefw.sources.base import train_batches_from
from saefw.training import shared_batches
from saefw.training.sparsity import SparsityController

log = logging.getLogger(__name__)
# the stream is read in the main process (num_workers=0), so a length on an IterableDataset is exact here
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
# a resumed run's stream does resume: it skips the restored global_step's batches (ActivationDataModule.batches)
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")


class _Stream(IterableDataset):
    """An iterable of ``length`` batches: the length gives Lightning's progress bar its total and ETA."""

    def __init__(self, make_iter, length: int):
        self.make_iter, self.length = make_iter, length

    def __iter__(self):
        return self.make_iter()

    def __len__(self):
        return self.length


class ActivationDataModule(pl.LightningDataModule):
    """Serves ``steps`` global batches of ``source.train_batches``. ``peek(n)`` hands the first batches out early
    for data-dependent init without losing them from the stream.

    A resumed run (the Trainer restored ``global_step`` from a checkpoint) skips the batches already trained on;
    under data parallelism each rank gets its ``batch_size / world_size`` rows of every global batch. Both come
    from the Trainer when the dataloader is built, so the same module serves every case."""

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
        if (shared := shared_batches.current()) is not None:  # a one-pass group: the group's first batches
            self._head = shared.head(self.source, self.batch_size, n)
            return self._head[:n]
        while len(self._head) < n:
            batch = next(self._stream(), None)
            if batch is None:
                break
            self._head.append(batch)
        return self._head[:n]

    def batches(self, skip: int = 0, part: tuple[int, int] = (0, 1)):
        """The training batches after the first ``skip``, this rank's ``part=(rank, world)`` of each."""
        world = part[1]
        check_global_batch(self.batch_size, world)
        if (shared := shared_batches.current()) is not None and world == 1:  # read once for the whole group
            self._head = []
            return shared.stream(self.source, self.batch_size, skip, self.steps)
        if skip == 0 and world == 1:  # the peeked head, then the same stream
            head, self._head = self._head, []
            return itertools.islice(itertools.chain(head, self._stream()), self.steps)
        return itertools.islice(train_batches_from(self.source, self.batch_size, skip, part), self.steps - skip)

    def train_dataloader(self):
        trainer = self.trainer
        skip = trainer.global_step if trainer is not None else 0
        part = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # the length stays `steps`: Lightning's restored batch counter continues from `skip`
        return DataLoader(_Stream(lambda: self.batches(skip, part), self.steps), batch_size=None, num_workers=0)

    def teardown(self, stage: str) -> None:
        """After fitting, let go of the training stream: its shuffle buffer (567 MB at the default 131,072 rows
        of d 576) must not sit under the final evaluation's logits."""
        if stage == "fit":
            self._iter, self._head = None, []
            release_freed_memory()


class SAEModule(pl.LightningModule):
    """Trains ``sae``: loss = ‖x − x̂‖² + Σ aux + λ_t·P (see :mod:`saefw.training.sparsity`; the controller owns λ_t).

    Learning rate: linear warmup, constant, linear decay to 0 over the last ``lr_decay_fraction`` of steps.
    A latent is dead when it has not fired for ``dead_window_tokens`` training tokens.

    Under data parallelism every rank trains on its part of the global batch; the latents that fired, the batch
    L0 the controller reads and the logged terms are summed over ranks in one all-reduce per step, so the dead-
    latent counters and λ_t are identical on every rank (checked when training ends: :meth:`rank_state`).

    A single process never waits for the device: the dead-latent counters, λ_t and the non-finite check live in
    device tensors, and metrics are logged every ``trainer.log_every_n_steps`` steps (the steps Lightning writes
    anyway). A batch with NaN/inf activations or a non-finite loss stops training with an error naming its step: on
    the CPU at that step (asking costs nothing there), on an accelerator at the next logging step, before any
    checkpoint and at the end. Under data parallelism the check rides on the per-step all-reduce."""

    def __init__(self, sae, penalty, controller: SparsityController, train_cfg, total_steps: int):
        super().__init__()
        self.sae, self.penalty, self.controller = sae, penalty, controller
        self.tcfg, self.total_steps = train_cfg, total_steps
        self.register_buffer("tokens_since_fired", torch.zeros(sae.d_sae, dtype=torch.long))
        self.register_buffer("tokens_trained", torch.zeros((), dtype=torch.long))
        self.rank_states: list[dict] | None = None
        # per-rank numbers rank 0 reports for the whole job (e.g. which rank harvested the store): set by run()
        self.rank_facts = lambda: [0.0]
        self.gathered_facts: list[list[float]] | None = None
        # (step, batch index, #non-finite activations, loss non-finite) of the first bad batch; step −1: none yet
        self.register_buffer("_nonfinite", torch.tensor([-1, -1, 0, 0]), persistent=False)

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.tcfg.dead_window_tokens

    def _world(self) -> int:
        trainer = self._trainer
        return trainer.world_size if trainer is not None else 1

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's logs (its own rule: every ``log_every_n_steps`` steps)."""
        trainer = self._trainer
        every = getattr(trainer, "log_every_n_steps", 1) if trainer is not None else 1
        return (self.global_step + 1) % max(1, every) == 0

    def _watch_finite(self, n_bad: torch.Tensor, loss_bad: torch.Tensor, batch_idx: int) -> None:
        """Record (on the device) the first batch with NaN/inf activations or loss."""
        first = ((n_bad > 0) | loss_bad) & (self._nonfinite[0] < 0)
        # full_like fills on the device (a host→device copy of a CPU tensor would wait for the device)
        now = torch.stack([torch.full_like(n_bad, self.global_step), torch.full_like(n_bad, batch_idx), n_bad,
                           loss_bad.to(n_bad.dtype)])
        self._nonfinite.copy_(torch.where(first, now, self._nonfinite))

    def _check_now(self, x: torch.Tensor) -> bool:
        """Whether to ask the device about the recorded check now: always on the CPU, at logging steps elsewhere."""
        return x.device.type == "cpu" or self._logging_step()

    def raise_if_nonfinite(self, terms: dict | None = None) -> None:
        step, batch_idx, count, loss_bad = self._nonfinite.tolist()
        if step < 0:
            return
        where = f"{self.trainer.default_root_dir if self._trainer is not None else 'the run directory'}/checkpoints"
        if count:
            raise SaefwError(f"non-finite activations (NaN/inf) in training batch {batch_idx} (step {step}, {count} "
                             f"values): not trained through; checkpoints so far are kept in {where}")
        shown = f" ({', '.join(f'{k}={float(v):.4g}' for k, v in terms.items())})" if terms else ""
        raise SaefwError(f"training diverged at step {step}: the loss is not finite{shown}; not trained through "
                         f"(try a lower train.lr or sparsity coefficient); checkpoints so far are kept in {where}")

    def training_step(self, batch, batch_idx):
        x = self.sae.scale_rows(batch.float())
        n_bad = x.numel() - torch.count_nonzero(torch.isfinite(x))
        coeff = self.controller.coefficient_tensor(self.global_step)
        out = compose_loss(self.sae.train_forward(x, dead_mask=self.dead_mask()), self.penalty, coeff)
        world = self._world()
        with torch.no_grad():
            fired, l0 = batch_firing(out.f)
            stats = {"l0": l0, "loss": out.loss.detach(), **out.terms}
            loss_bad = ~torch.isfinite(out.loss.detach())
            if world > 1:
                bad = torch.stack([n_bad.float(), loss_bad.float()])
                fired, stats, bad = self._all_reduce(fired, stats, bad, world)
                # the ranks synchronise here anyway: all raise together, naming whose batch it was
                if bool(bad.any()):
                    self._refuse(x, batch_idx, bad, out.terms)
            else:
                self._watch_finite(n_bad, loss_bad, batch_idx)
                if self._check_now(x):
                    self.raise_if_nonfinite(out.terms)
            n = x.shape[0] * world
            self.tokens_since_fired.add_(n).masked_fill_(fired, 0)
            self.tokens_trained += n
            self.controller.update(stats["l0"], self.global_step)
        if self._logging_step():
            logs = {"train/loss": stats["loss"], "train/l0": stats["l0"], "train/coefficient": coeff,
                    "train/dead_fraction": self.dead_mask().float().mean(),
                    **{f"train/{k}": stats[k] for k in out.terms}}
            self.log_dict(logs, prog_bar=False, on_step=True)
            self.log("l0", stats["l0"], prog_bar=True, logger=False)
            self.log("mse", stats["mse_loss"], prog_bar=True, logger=False)
        return out.loss

    def on_save_checkpoint(self, checkpoint):
        self.raise_if_nonfinite()  # a checkpoint never holds weights trained on a non-finite batch

    def _all_reduce(self, fired, stats: dict, bad, world: int):
        """Sum ``fired`` (any rank), the per-rank means in ``stats`` (→ global means: every rank trains on the
        same number of rows) and the non-finite counts over all ranks, in one collective."""
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=fired.device).reshape(())
                              for v in stats.values()])
        packed = torch.cat([fired.float(), values, bad.to(fired.device)])
        packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        d, k = fired.numel(), len(stats)
        means = packed[d: d + k] / world
        return packed[:d] > 0, dict(zip(stats, means)), packed[d + k:]

    def _refuse(self, x, batch_idx: int, bad, terms: dict) -> None:
        """Raise for a step in which some rank saw non-finite activations or loss."""
        n_here = int(x.numel() - torch.count_nonzero(torch.isfinite(x)))
        if int(bad[0]) and not n_here:  # another rank's batch
            where = f"{self.trainer.default_root_dir}/checkpoints"
            raise SaefwError(f"non-finite activations (NaN/inf) in another rank's part of training batch "
                             f"{batch_idx} (step {self.global_step}): not trained through; checkpoints so far "
                             f"are kept in {where}")
        self._nonfinite.copy_(torch.tensor([self.global_step, batch_idx, n_here, 1], device=self._nonfinite.device))
        self.raise_if_nonfinite(terms)

    def rank_state(self) -> torch.Tensor:
        """What every rank must agree on: the dead-latent counters (sum, a position-weighted sum, dead count),
        the controller's state and the tokens trained on."""
        tsf = self.tokens_since_fired.double()
        weights = torch.arange(1, tsf.numel() + 1, dtype=torch.float64, device=tsf.device)
        c = self.controller
        return torch.stack([tsf.sum(), (tsf * weights).sum(), self.dead_mask().sum().double(),
                            c.log_coefficient.double(), c.l0_ema.double(), c.l0_start.double(),
                            self.tokens_trained.double()])

    RANK_STATE_KEYS = ("tokens_since_fired_sum", "tokens_since_fired_weighted", "dead", "log_coefficient",
                       "l0_ema", "l0_start", "tokens_trained")

    def on_train_end(self) -> None:
        self.raise_if_nonfinite()
        if self._world() == 1:
            return
        facts = torch.tensor(self.rank_facts(), dtype=torch.float64, device=self.tokens_trained.device)
        self.gathered_facts = self.all_gather(facts).cpu().tolist()
        gathered = self.all_gather(self.rank_state()).cpu()  # [world, k]
        self.rank_states = [dict(zip(self.RANK_STATE_KEYS, row.tolist())) for row in gathered]
        rows = torch.nan_to_num(gathered, nan=-1.0)
        if not all(torch.equal(rows[0], r) for r in rows[1:]):
            raise SaefwError(f"the ranks disagree on the training state at the end: {self.rank_states}")

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
    """Runs the evaluators on the held-out split every ``every_n_steps`` optimizer steps (on global rank 0 only:
    the other ranks go on to the next step and wait for it there)."""

    def __init__(self, source, evaluators, every_n_steps: int, batch_size: int, on_result=None):
        self.source, self.evaluators, self.every = source, evaluators, every_n_steps
        self.batch_size, self.on_result = batch_size, on_result
        self.seconds = 0.0  # spent evaluating (reported apart from training in metrics.json's timings)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step % self.every == 0 and step > 0 and trainer.is_global_zero:
            with shared_batches.evaluation_turn():
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
