"""The Lightning training step: a non-finite batch stops training with its step named (at once on the CPU; at
the next logging step, before a checkpoint and at the end on an accelerator), and metrics are logged at Lightning's
logging interval, not computed every step."""
import csv
import gc
import weakref

import pytest
import pytorch_lightning as pl
import torch

from saefw.errors import SaefwError
from saefw.registry import build, discover
from saefw.training.config import TrainConfig
from saefw.training.module import ActivationDataModule, SAEModule
from saefw.training.sparsity import SparsityConfig, SparsityController


class _Batches:
    """A source of ``steps`` random batches, NaN in batch ``bad`` (None: none)."""

    def __init__(self, d_in, bad=None):
        self.d_in, self.bad = d_in, bad

    def train_batches(self, batch_size):
        g = torch.Generator().manual_seed(0)
        for i in range(1000):
            x = torch.randn(batch_size, self.d_in, generator=g)
            if i == self.bad:
                x[3, 1] = float("nan")
            yield x


def _fit(tmp_path, steps=10, bad=None, log_every=5, deferred=False, monkeypatch=None):
    discover()
    torch.manual_seed(0)
    sae = build("arch", {"name": "l1"}, d_in=6, d_sae=24)
    penalty = build("penalty", {"name": "l1_decoder_norm"})
    controller = SparsityController(SparsityConfig(), 1.0, 8, steps)
    module = SAEModule(sae, penalty, controller, TrainConfig(batch_size=32, lr_warmup_steps=2), steps)
    if deferred:  # as on an accelerator: the host looks only at logging steps
        monkeypatch.setattr(SAEModule, "_check_now", lambda self, x: self._logging_step())
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, logger=pl.loggers.CSVLogger(tmp_path, name="csv", version=""),
                         log_every_n_steps=log_every, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=ActivationDataModule(_Batches(6, bad), 32, steps))
    return module, trainer


def test_nonfinite_batch_stops_at_its_step_on_the_cpu(tmp_path):
    with pytest.raises(SaefwError, match=r"training batch 3 \(step 3, 1 values\)") as err:
        _fit(tmp_path, bad=3)
    assert "not trained through" in str(err.value)


def test_nonfinite_batch_found_at_the_next_logging_step_when_deferred(tmp_path, monkeypatch):
    seen = []
    orig = SAEModule.training_step

    def spy(self, batch, batch_idx):
        seen.append(self.global_step)
        return orig(self, batch, batch_idx)

    monkeypatch.setattr(SAEModule, "training_step", spy)
    with pytest.raises(SaefwError, match=r"training batch 2 \(step 2, 1 values\)"):
        _fit(tmp_path, bad=2, log_every=5, deferred=True, monkeypatch=monkeypatch)
    assert seen[-1] == 4  # step 4 is the first logging step ((4 + 1) % 5 == 0) after the bad batch


def test_nonfinite_batch_in_the_last_steps_is_still_reported(tmp_path, monkeypatch):
    with pytest.raises(SaefwError, match=r"step 8"):
        _fit(tmp_path, steps=9, bad=8, log_every=5, deferred=True, monkeypatch=monkeypatch)


def test_metrics_logged_at_the_logging_interval(tmp_path):
    module, _ = _fit(tmp_path, steps=10, log_every=5)
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if r.get("train/l0")]
    assert [int(r["step"]) for r in rows] == [4, 9]
    for r in rows:
        assert 0 <= float(r["train/l0"]) <= 24 and float(r["train/coefficient"]) > 0
    # the dead-latent counters advanced every step (10 steps × 32 tokens for a latent that never fired)
    assert int(module.tokens_since_fired.max()) <= 320


def test_run_records_where_its_time_went(trained_runs):
    """metrics.json's ``timings``: seconds per phase of the real CLI run; in a multirun (these runs are one) they add
    up to the job's own wall time, not the process's."""
    import json

    for arch in ("l1", "topk"):
        record = json.loads((trained_runs[arch] / "metrics.json").read_text())
        t = record["timings"]
        assert set(t) == {"startup", "model_load", "data_setup", "harvest", "init", "train", "periodic_evaluate",
                          "evaluate", "save"}
        assert all(v >= 0 for v in t.values()) and t["train"] > 0 and t["model_load"] > 0
        assert record["wall_from"] == "job"
        assert abs(sum(t.values()) - record["wall_seconds"]) < 1.0, (t, record["wall_seconds"])
        assert t["startup"] < 1.0  # from the job's start: the process's start-up and imports belong to no job


class _Held:
    """Stands for the shuffle buffer a source's batch generator holds while it is open."""


def test_fitting_lets_go_of_the_training_stream(tmp_path):
    held = []

    class Source:
        def train_batches(self, batch_size):
            buffer = _Held()
            held.append(weakref.ref(buffer))
            g = torch.Generator().manual_seed(0)
            while buffer is not None:
                yield torch.randn(batch_size, 6, generator=g)

    discover()
    steps = 4
    sae = build("arch", {"name": "l1"}, d_in=6, d_sae=24)
    module = SAEModule(sae, build("penalty", {"name": "l1_decoder_norm"}),
                       SparsityController(SparsityConfig(), 1.0, 8, steps), TrainConfig(batch_size=32), steps)
    data = ActivationDataModule(Source(), 32, steps)
    data.peek(2)  # the data-dependent init opens the stream before fitting, as a run does
    trainer = pl.Trainer(max_steps=steps, max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    gc.collect()
    assert trainer.global_step == steps and len(held) == 1
    assert held[0]() is None, "the training stream (and its buffer) outlived fitting: the final evaluation pays for it"
