"""Peak memory and true wall time of the README's two commands, each as a user runs it (a fresh process).

    python benchmarks/memory.py [--runs first warm card]

* ``first``: ``python -m saefw`` with an empty cache (``SAEFW_CACHE`` a fresh folder): the embedded model is
  converted, layer 6 harvested, an SAE trained and evaluated;
* ``warm``: the same command again (model converted, store filled);
* ``card``: ``python -m saefw +arch=gated layer=25`` in the same cache (its first run harvests layer 25; a second,
  warm one is measured too with ``card_warm``).

For each: the process's peak resident set (``ru_maxrss`` of that child and its descendants, from ``os.wait4``),
its elapsed wall time, metrics.json's ``wall_seconds`` and phase ``timings``, and the headline metrics. Writes
``benchmarks/results/memory.{json,md}``. Run it on an otherwise idle machine: the wall times are the point.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"first": [], "warm": [], "card": ["+arch=gated", "layer=25"], "card_warm": ["+arch=gated", "layer=25"]}
METRICS = ("l0", "explained_variance", "ce_loss_recovered", "kl_div")


def run(name: str, cache: Path, work: Path) -> dict:
    run_dir = work / name
    cmd = [sys.executable, "-m", "saefw", *COMMANDS[name], f"hydra.run.dir={run_dir}",
           "trainer.enable_progress_bar=false"]
    env = {**os.environ, "SAEFW_CACHE": str(cache), "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.time() - t0
    record = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    return {"run": name, "command": "python -m saefw " + " ".join(COMMANDS[name]),
            "exit": os.waitstatus_to_exitcode(status),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "elapsed_seconds": round(elapsed, 1),
            "wall_seconds": record.get("wall_seconds"), "timings": record.get("timings"),
            "activation_store": record.get("activation_store"),
            **{k: round(record[k], 4) for k in METRICS if k in record}}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# Peak memory and wall time of the README's commands", "",
             f"{meta['machine']}, torch {meta['torch']}, fp32; each command a fresh process, W&B offline. "
             "Peak RSS: `ru_maxrss` of the process and its children. elapsed: measured around the process; "
             "wall_seconds: what metrics.json says." + (f" {meta['note']}" if meta.get("note") else ""), "",
             "| run | command | peak RSS MB | elapsed s | wall_seconds | store | l0 | explained_variance | "
             "ce_loss_recovered | timings s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = ", ".join(f"{k} {v:.0f}" for k, v in (r["timings"] or {}).items() if v >= 0.5)
        lines.append(f"| {r['run']} | `{r['command']}` | {r['peak_rss_mb']:,} | {r['elapsed_seconds']:.0f} | "
                     f"{r['wall_seconds']} | {r['activation_store']} | {r.get('l0', '')} | "
                     f"{r.get('explained_variance', '')} | {r.get('ce_loss_recovered', '')} | {t} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=["first", "warm", "card", "card_warm"], choices=list(COMMANDS))
    ap.add_argument("--cache", default=None, help="a cache folder to use (default: a fresh temporary one)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="a line for the results (e.g. what else the machine was running)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="saefw-memory-") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        for name in args.runs:
            rows.append(run(name, cache, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": f"{os.cpu_count()}-core {platform.machine()} CPU", "torch": _torch_version(), "note": args.note}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "memory.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
