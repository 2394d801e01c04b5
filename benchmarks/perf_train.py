"""Training-loop throughput: saefw's real Lightning loop beside SAELens's training step and a matmul peak.

Three measurements of one (arch, d_in, d_sae, batch), meant to be taken back to back in one process so that their
ratios survive a noisy, shared machine:

* ``matmul_peak``: the five matmuls a dense SAE step cannot avoid (encoder and decoder forward; ∇W_dec, ∇f and
  ∇W_enc backward), 10·d_in·d_sae FLOP per token, timed as plain ``torch`` matmuls of the same shapes;
* ``saefw_loop``: the real loop of a run — :class:`saefw.training.module.SAEModule` in a ``pytorch_lightning.Trainer`` built
  by :func:`saefw.training.run._trainer` (CSV + offline W&B loggers, checkpoint callback, eval callback), reading batches
  through :class:`saefw.training.module.ActivationDataModule` from an activation source; timed from batch end to batch end,
  so data loading, dead-latent bookkeeping, decoder renormalisation, λ control and logging are all inside;
* ``saelens_step``: SAELens's ``TrainingSAE`` for the same architecture: ``training_forward_pass`` → backward →
  Adam step → ``zero_grad``, on batches already in memory (no data loading, no bookkeeping: that favours SAELens).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from saefw.app.allocator import keep_freed_memory
from saefw.sources.base import ActivationSource, RunSpec

DENSE_FLOP_PER_TOKEN = 10  # × d_in·d_sae: 2 forward matmuls + 3 backward (∇W_dec, ∇f, ∇W_enc), 2 FLOP per MAC


def median_seconds(fn, reps: int) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(d_in: int, d_sae: int, batch: int, reps: int = 4) -> float:
    """GFLOP/s of the five dense-step matmuls at these shapes, into preallocated outputs (so no allocation or page
    fault is timed: the machine's matmul alone); median of ``reps`` timings after one warm-up."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, d_in, generator=g)
    w_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    w_dec = torch.randn(d_sae, d_in, generator=g) / d_sae ** 0.5
    f, gf = torch.empty(batch, d_sae), torch.empty(batch, d_sae)
    x_hat, g_dec, g_enc = torch.empty(batch, d_in), torch.empty(d_sae, d_in), torch.empty(d_in, d_sae)

    def step():
        torch.mm(x, w_enc, out=f)
        torch.mm(f, w_dec, out=x_hat)
        torch.mm(f.t(), x_hat, out=g_dec)  # ∇W_dec = fᵀ·g
        torch.mm(x_hat, w_dec.t(), out=gf)  # ∇f = g·W_decᵀ
        torch.mm(x.t(), gf, out=g_enc)  # ∇W_enc = xᵀ·∇z

    return DENSE_FLOP_PER_TOKEN * batch * d_in * d_sae / median_seconds(step, reps) / 1e9


class MemorySource(ActivationSource):
    """An activation source serving batches from a pool of random activations held in memory (used where no
    activation store of the needed width exists); it plugs into the same ActivationDataModule as a real source."""

    def __init__(self, d_in: int, batch: int, pool: int = 4, seed: int = 0):
        super().__init__(None, RunSpec(seed=seed, train_tokens=0))
        g = torch.Generator().manual_seed(seed)
        self.d_in = d_in
        # a few latent directions plus noise: activations with some structure
        basis = torch.randn(64, d_in, generator=g)
        self.pool = [torch.relu(torch.randn(batch, 64, generator=g)) @ basis / 8 + torch.randn(batch, d_in, generator=g)
                     for _ in range(pool)]

    def train_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(self.spec.train_tokens // batch_size):
            yield self.pool[i % len(self.pool)][:batch_size]

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        yield from ()


def compose_run_config(arch: str, batch: int, d_sae: int, steps: int, overrides: list[str] = ()):
    """The run config a user gets from ``python -m saefw arch=<arch> ...`` (composed with Hydra's API)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from saefw.app.cli import conf_dir
    from saefw.registry import discover
    from saefw.training.config import register_schema

    register_schema()
    discover()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"arch={arch}", f"train.batch_size={batch}", f"d_sae={d_sae}", f"total_tokens={steps * batch}",
            "trainer.enable_progress_bar=false", "wandb.mode=offline", *overrides])


class _StepClock:
    """Wall-clock time at the end of every training batch."""

    def __new__(cls):
        import pytorch_lightning as pl

        class StepClock(pl.Callback):
            def __init__(self):
                self.times: list[float] = []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.times.append(time.perf_counter())

        return StepClock()


def saefw_loop(arch: str, source, batch: int, d_sae: int, steps: int, warmup: int,
               overrides: list[str] = ()) -> float:
    """Tokens/s of saefw's Lightning training loop over ``steps`` batches, the first ``warmup`` not timed."""
    import pytorch_lightning as pl

    from saefw.app.cli import _end_wandb_run
    from saefw.registry import build
    from saefw.training.module import ActivationDataModule, SAEModule
    from saefw.training.plan import RunPlan
    from saefw.training.reporting import Reporter
    from saefw.training.run import _trainer, build_sae, sparsity_control

    cfg = compose_run_config(arch, batch, d_sae, steps, overrides)
    plan = RunPlan.from_config(cfg)
    pl.seed_everything(0, verbose=False)
    source.spec = RunSpec(seed=0, train_tokens=plan.tokens)
    penalty = build("penalty", cfg.penalty)
    sae = build_sae(cfg, source.d_in, penalty)
    data = ActivationDataModule(source, plan.batch_size, plan.steps)
    sae.initialize_from_data(torch.cat([b.float() for b in data.peek(cfg.train.init_batches)]))
    _, controller = sparsity_control(cfg, sae, penalty, plan.steps)
    module = SAEModule(sae, penalty, controller, cfg.train, plan.steps)
    with tempfile.TemporaryDirectory(prefix="saefw-perf-") as run_dir:
        reporter = Reporter(cfg, Path(run_dir), {"arch": arch, "layer": None, "site": None})
        trainer = _trainer(cfg, plan, Path(run_dir), source, [], reporter, {"arch": arch})
        clock = _StepClock()
        trainer.callbacks.append(clock)
        try:
            trainer.fit(module, datamodule=data)
        finally:
            _end_wandb_run(False)
    t = clock.times
    return (len(t) - 1 - warmup) * batch / (t[-1] - t[warmup])


def saelens_sae(arch: str, d_in: int, d_sae: int, k: int):
    """SAELens's training SAE for our arch name (its own default options, k for the top-k archs)."""
    import sae_lens

    common = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu"}
    if arch == "l1":
        return sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(**common))
    if arch == "gated":
        return sae_lens.GatedTrainingSAE(sae_lens.GatedTrainingSAEConfig(**common))
    if arch == "topk":
        return sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(k=k, **common))
    if arch == "batchtopk":
        return sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(k=k, **common))
    if arch == "jumprelu":
        return sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(**common))
    raise ValueError(f"no SAELens counterpart for arch={arch}")


def saelens_step(arch: str, batches: list[torch.Tensor], d_sae: int, steps: int, warmup: int, k: int = 32) -> float:
    """Tokens/s of SAELens's training step (forward + loss + backward + Adam + zero_grad) over ``steps`` batches."""
    from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput

    torch.manual_seed(0)
    d_in, batch = batches[0].shape[1], batches[0].shape[0]
    sae = saelens_sae(arch, d_in, d_sae, k)
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.9, 0.999))
    coeffs = {name: c.value if isinstance(c, TrainCoefficientConfig) else c
              for name, c in sae.get_coefficients().items()}
    dead = torch.zeros(d_sae, dtype=torch.bool)  # as at the start of a run: no latent dead yet
    times = []
    for step in range(steps):
        x = batches[step % len(batches)]
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead,
                                                       n_training_steps=step, is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return (len(times) - 1 - warmup) * batch / (times[-1] - times[warmup])


ARCHS = ("l1", "gated", "topk", "jumprelu", "batchtopk")
CASES = [(arch, 576, 4608) for arch in ARCHS] + [(arch, 768, 16384) for arch in ("l1", "topk", "batchtopk")]


def measure(arch: str, d_in: int, d_sae: int, batch: int, steps: int, warmup: int) -> dict:
    """One row: matmul peak, saefw's loop and SAELens's step at one shape, back to back."""
    peak = matmul_peak(d_in, d_sae, batch)
    source = MemorySource(d_in, batch)
    ours = saefw_loop(arch, source, batch, d_sae, steps, warmup)
    theirs = saelens_step(arch, source.pool, d_sae, steps, warmup)
    achieved = DENSE_FLOP_PER_TOKEN * d_in * d_sae * ours / 1e9
    return {"arch": arch, "d_in": d_in, "d_sae": d_sae, "batch": batch, "saefw_tokens_per_s": round(ours),
            "saelens_tokens_per_s": round(theirs), "ratio_vs_saelens": round(ours / theirs, 3),
            "matmul_gflops": round(peak, 1), "saefw_gflops_dense_equivalent": round(achieved, 1),
            "fraction_of_peak": round(achieved / peak, 3)}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Training-loop throughput ({meta['machine']}, torch {meta['torch']}, {meta['date']})", "",
             "saefw: the real Lightning loop (SAEModule + Trainer + loggers + callbacks) reading an in-memory "
             "source; SAELens: its training step alone on the same batches. fraction_of_peak counts 10·d_in·d_sae "
             "FLOP per token for every arch (dense-equivalent: the top-k archs can exceed 1).", "",
             "| arch | d_in × d_sae | batch | saefw tok/s | SAELens tok/s | ratio | matmul GFLOP/s | fraction of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['d_in']} × {r['d_sae']} | {r['batch']} | {r['saefw_tokens_per_s']:,} | "
                     f"{r['saelens_tokens_per_s']:,} | {r['ratio_vs_saelens']:.2f} | {r['matmul_gflops']:.0f} | "
                     f"{r['fraction_of_peak']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="cases as arch@d_in@d_sae")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    keep_freed_memory()  # as every saefw command does (SAELens's step, in this process, gets it too)
    cases = [c for c in CASES if not args.only or "@".join(map(str, c)) in args.only]
    meta = {"machine": f"{os.cpu_count()}-core {platform.machine()} CPU, fp32", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
            "warmup": args.warmup}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch, d_in, d_sae in cases:
        rows.append({**measure(arch, d_in, d_sae, args.batch, args.steps, args.warmup), **meta})
        print(json.dumps(rows[-1]), flush=True)
        (out / "performance.json").write_text(json.dumps(rows, indent=2))  # a list of rows, one per case
        (out / "performance.md").write_text(markdown(rows, meta))


if __name__ == "__main__":
    main()
