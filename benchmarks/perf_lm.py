"""Harvest and evaluation against the machine: the language-model side of a run, as a fraction of the matmul peak
of the model's own layers, measured in the same process.

    python benchmarks/perf_lm.py [--layers 6 25] [--harvest-tokens 20000]

* ``harvest``: the real harvest path (:func:`saefw.store.harvest.fill_stores`, into a fresh store folder): tokens/s of
  the forward that stops at the hooked layer, disk writes included; and the held-out split's harvest with the
  clean summary (its forwards run on to the logits, the default) and without;
* ``evaluation``: seconds of one final ``loss_recovered`` evaluation over the held-out split (a random TopK SAE:
  the cost does not depend on training), first with empty caches (ce_zero and the held-out states computed; the
  clean summary as the held-out harvest left it, or computed too), then as every later evaluation pays it (one
  SAE-spliced forward to logits: KL and ce_clean come from the cached clean summary, see
  :mod:`saefw.lm.clean_summary`) — each with every forward from the embeddings (``from_hook=false``) and from the
  stored residual stream at the hook (the default), and the largest difference between the paths' metrics;
* ``peak``: GFLOP/s of ``torch.mm`` at exactly the shapes of the model's linear layers (one block's, and the
  unembedding) and the forward's batch of tokens, into preallocated outputs.

FLOP per token: 2 × the parameters of the linear layers a forward runs (the blocks up to the hooked layer for a
harvest; every block plus the unembedding for a forward to logits; attention's T² terms, < 5 % at T = 128, are
left out, which slightly understates the achieved fraction). ``fraction_of_peak`` = the time those matmuls would
take at the measured peak ÷ the time taken. Writes ``benchmarks/results/perf_lm.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from perf_train import (
    median_seconds,  # benchmarks/ is on sys.path when a script here runs
)
from torch import nn

from saefw.app.allocator import keep_freed_memory
from saefw.evals.base import run_evaluators
from saefw.lm.model import block_list
from saefw.registry import build, discover
from saefw.sources.base import RunSpec


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def mm_seconds(shapes: list[tuple[int, int]], n_tokens: int, reps: int = 5) -> float:
    """Median seconds of one ``x @ Wᵀ`` per shape at ``n_tokens`` rows, outputs preallocated (one warm-up)."""
    g = torch.Generator().manual_seed(0)
    xs = {i: torch.randn(n_tokens, i, generator=g) for i, _ in shapes}
    ws = [torch.randn(o, i, generator=g) for i, o in shapes]
    outs = [torch.empty(n_tokens, o) for _, o in shapes]

    def run():
        for (i, _), w, out in zip(shapes, ws, outs):
            torch.mm(xs[i], w.t(), out=out)

    return median_seconds(run, reps)


class Peak:
    """The model's matmuls at the measured peak: ideal seconds per token of a block and of the unembedding."""

    def __init__(self, model: nn.Module, n_tokens: int):
        self.block = linear_shapes(block_list(model)[0])
        self.head = linear_shapes(model.get_output_embeddings())
        self.block_flop = 2 * sum(i * o for i, o in self.block)
        self.head_flop = 2 * sum(i * o for i, o in self.head)
        self.block_s = mm_seconds(self.block, n_tokens) / n_tokens
        self.head_s = mm_seconds(self.head, n_tokens) / n_tokens

    def gflops(self) -> dict:
        return {"block_gflops": round(self.block_flop / self.block_s / 1e9, 1),
                "unembed_gflops": round(self.head_flop / self.head_s / 1e9, 1)}


def _source(model: str, layer: int, harvest_tokens: int, work: Path, summarize: bool = True):
    src = build("source", {"name": "hf", "model": model, "layer": layer, "site": "resid_post",
                           "store_dir": str(work / f"L{layer}{'' if summarize else '-no-summary'}")},
                spec=RunSpec(seed=0, train_tokens=harvest_tokens))
    src.summarize_held_out = summarize
    src.setup()  # the first call harvests the training budget and the held-out split into the empty folder
    return src


def evaluations(src, sae, from_hook: bool, keep: tuple[str, ...] = (), later: int = 3) -> tuple[list[float], dict]:
    """Seconds of the first evaluation on the split (its caches removed first, but for those named in ``keep``)
    and of a later one (the median of ``later``: a shared 2-core host varies by a third from one to the next),
    and the metrics."""
    for f in src.eval_store.path.glob("cache-*"):
        if not f.name.startswith(tuple(f"cache-{k}" for k in keep)):
            f.unlink()
    ev = build("evaluator", {"from_hook": from_hook}, name="loss_recovered")
    times = []
    for _ in range(1 + later):  # first: caches empty (ce_zero, states, maybe the clean summary); then what later
        t = time.perf_counter()  # ones pay
        metrics = run_evaluators(sae, src, [ev])
        times.append(time.perf_counter() - t)
    return [times[0], statistics.median(times[1:])], {k: float(v) for k, v in metrics.items()}


def measure(model: str, layer: int, harvest_tokens: int, work: Path) -> dict:
    src = _source(model, layer, harvest_tokens, work)
    tokens = sum(store.manifest().n_tokens for store in (src.train_store, src.eval_store))
    lm = src.lm
    peak = Peak(lm.model, src.cfg.forward_batch_size * src.cfg.context_size)
    blocks = layer + 1  # resid_post of layer L: blocks 0..L
    harvest_ideal = tokens * blocks * peak.block_s
    # the same harvest without the held-out split's clean summary (forwards that stop at the hook): what the
    # summary adds to the harvest, which then spares the first evaluation its clean forward
    plain = _source(model, layer, harvest_tokens, work, summarize=False)
    row = {"layer": layer, "n_layers": lm.n_layers, **peak.gflops(),
           "harvest_tokens": tokens, "harvest_seconds": round(plain.harvest_seconds, 2),
           "harvest_tokens_per_s": round(tokens / plain.harvest_seconds),
           "harvest_fraction_of_peak": round(harvest_ideal / plain.harvest_seconds, 3),
           "heldout_harvest_seconds": round(src.split_harvest_seconds["heldout"], 2),
           "heldout_harvest_seconds_no_summary": round(plain.split_harvest_seconds["heldout"], 2)}

    torch.manual_seed(0)
    sae = build("arch", {"name": "topk", "k": 32}, d_in=src.d_in, d_sae=8 * src.d_in)
    eval_tokens = src.eval_tokens.numel()
    row.update({"eval_contexts": len(src.eval_tokens), "eval_tokens": eval_tokens})
    metrics = {}
    # full: from the embeddings, every cache empty (the path before 12-04); hook: the default, the clean summary
    # from the harvest; hook_own_summary: from the hook, the first evaluation computing the clean summary itself
    # (a store harvested before 12-08, or live mode)
    for mode, from_hook, keep in (("hook", True, ("clean_summary",)), ("hook_own_summary", True, ()),
                                  ("full", False, ())):
        # a fresh source per mode (the store is filled: a hit), so neither reuses the other's in-memory caches
        times, metrics[mode] = evaluations(_source(model, layer, harvest_tokens, work), sae, from_hook, keep)
        remaining = lm.n_layers - (layer + 1) if from_hook else lm.n_layers
        forward = remaining * peak.block_s + peak.head_s  # one forward to logits, per token
        row.update({f"eval_{mode}_seconds_first": round(times[0], 2), f"eval_{mode}_seconds": round(times[1], 2),
                    f"eval_{mode}_fraction_of_peak": round(eval_tokens * forward / times[1], 3)})
    row["eval_hook_vs_full"] = round(row["eval_hook_seconds"] / row["eval_full_seconds"], 3)
    row["eval_hook_first_vs_later"] = round(row["eval_hook_seconds_first"] / row["eval_hook_seconds"], 3)
    row["eval_hook_own_summary_first_vs_later"] = round(
        row["eval_hook_own_summary_seconds_first"] / row["eval_hook_own_summary_seconds"], 3)
    keys = ("ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "kl_div", "explained_variance")
    row["max_abs_metric_diff"] = max(abs(metrics[mode][k] - metrics["full"][k]) for k in keys
                                     if k in metrics["full"] for mode in ("hook", "hook_own_summary"))
    row["metrics"] = {mode: {k: m[k] for k in keys if k in m} for mode, m in metrics.items()}
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Harvest and evaluation against the matmul peak of the model's own layers", "",
             f"{meta['model']}, {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, fp32. "
             "Fraction of peak = ideal matmul time at the peak measured in the same run ÷ time taken.", "",
             "Evaluation: one final `loss_recovered` evaluation of a random TopK SAE over the held-out split, "
             "every forward from the embeddings (`from_hook=false`, the path before 12-04) or from the stored "
             "residual stream at the hook (the default); first = the split's first evaluation, its caches empty "
             "but for the clean summary that the held-out harvest computes (from hook, own summary: that one "
             "empty too, as with a store harvested before 12-08 or live mode). Held-out harvest: seconds with the "
             "clean summary (forwards run on to the logits) / without (forwards stop at the hook).", "",
             "| layer | peak GFLOP/s (block / unembed) | harvest tokens/s | harvest fraction | held-out harvest s | "
             "full: eval s first / later | from hook: eval s first / later | from hook, own summary: first / "
             "later | hook ÷ full (later) | hook first ÷ later | own summary first ÷ later | "
             "fraction of peak (hook, later) | max metric diff |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['block_gflops']:.0f} / {r['unembed_gflops']:.0f} | "
                     f"{r['harvest_tokens_per_s']:,} | {r['harvest_fraction_of_peak']:.2f} | "
                     f"{r['heldout_harvest_seconds']:.1f} / {r['heldout_harvest_seconds_no_summary']:.1f} | "
                     f"{r['eval_full_seconds_first']:.1f} / {r['eval_full_seconds']:.1f} | "
                     f"{r['eval_hook_seconds_first']:.1f} / {r['eval_hook_seconds']:.1f} | "
                     f"{r['eval_hook_own_summary_seconds_first']:.1f} / {r['eval_hook_own_summary_seconds']:.1f} | "
                     f"{r['eval_hook_vs_full']:.2f} | {r['eval_hook_first_vs_later']:.2f} | "
                     f"{r['eval_hook_own_summary_first_vs_later']:.2f} | "
                     f"{r['eval_hook_fraction_of_peak']:.2f} | {r['max_abs_metric_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", type=int, nargs="*", default=[6, 25])
    ap.add_argument("--harvest-tokens", type=int, default=20_000)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    keep_freed_memory()  # as every saefw command does
    discover()
    rows = []
    with tempfile.TemporaryDirectory(prefix="saefw-perf-lm-") as work:
        for layer in args.layers:
            rows.append(measure(args.model, layer, args.harvest_tokens, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"model": args.model, "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf_lm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "perf_lm.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
