"""Harvest once, train many: the same 6-job multirun at layer 25 (3 archs × 2 sparsity targets, default budget)
with the activation store off, cold (an empty store: the prefetch callback harvests once for the whole sweep)
and warm (a second sweep reading the same store).

    python benchmarks/sweep_store.py [--layer 25] [--modes off cold warm]

Each mode is one `python -m saefw -m ...` process; its wall time, the harvest seconds its jobs report (plus the
prefetch's, from its log), the jobs' train/evaluate time and the peak RSS of the process are written to
benchmarks/results/sweep_store.{json,md}. Target: cold ≤ one harvest + 6 × (train + evaluate) + 10 %, warm
harvests nothing."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = ["arch=l1,gated,topk", "target_l0=32,64"]


def run_mode(mode: str, layer: int, store_dir: Path, work: Path) -> dict:
    sweep_dir = work / f"sweep_{mode}"
    shutil.rmtree(sweep_dir, ignore_errors=True)
    store = ["source.store=false"] if mode == "off" else [f"source.store_dir={store_dir}"]
    cmd = [sys.executable, "-m", "saefw", "-m", *SWEEP, f"layer={layer}", *store, f"hydra.sweep.dir={sweep_dir}",
           "wandb.mode=disabled", "trainer.enable_progress_bar=false", "hydra.callbacks.compare.enabled=false"]
    # a fresh wrapper process per mode, so ru_maxrss of its children is this sweep's peak alone
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(r.returncode)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.time() - t0
    peak_kb = int(re.findall(r"PEAK_RSS_KB (\d+)", r.stderr)[-1])
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    log = r.stdout + r.stderr
    prefetch = sum(float(s) for s in re.findall(r"harvested \d+ tokens at \d+ hook point\(s\) in ([\d.]+) s", log))
    return {"mode": mode, "returncode": r.returncode, "wall_seconds": round(wall, 1), "jobs": len(jobs),
            "harvest_seconds_jobs": round(sum(j.get("harvest_seconds", 0) for j in jobs), 1),
            "harvest_seconds_prefetch": round(prefetch, 1) if mode != "off" else 0.0,
            "train_seconds": round(sum(j.get("train_seconds", 0) for j in jobs), 1),
            "evaluate_seconds": round(sum(j.get("timings", {}).get("evaluate", 0) for j in jobs), 1),
            "job_seconds": round(sum(j.get("wall_seconds", 0) for j in jobs), 1),
            "store": sorted({j.get("activation_store") for j in jobs}), "peak_rss_mb": round(peak_kb / 1024),
            "error": None if r.returncode == 0 else log[-800:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layer", type=int, default=25)
    ap.add_argument("--modes", nargs="*", default=["off", "cold", "warm"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="saefw-sweep-store-"))
    store_dir = work / "stores"
    rows = []
    for mode in args.modes:
        if mode == "cold":
            shutil.rmtree(store_dir, ignore_errors=True)
        print(f"== {mode}", flush=True)
        rows.append(run_mode(mode, args.layer, store_dir, work))
        print(json.dumps(rows[-1]), flush=True)
    size = sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file()) if store_dir.exists() else 0
    meta = {"sweep": SWEEP + [f"layer={args.layer}"], "machine": f"{os.cpu_count()}-core CPU, fp32",
            "store_bytes": size}
    write_results(rows, meta, Path(args.out))


def write_results(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_store.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# One harvest per sweep: `python -m saefw -m {' '.join(meta['sweep'])}`", "",
             f"{meta['machine']}. Store on disk after the cold sweep: {meta['store_bytes'] / 1e6:.0f} MB.",
             *([meta["remark"]] if meta.get("remark") else []), "",
             "| store | wall s | harvest s (jobs + prefetch) | jobs' own s | train s | final evaluations s | "
             "activation_store | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['wall_seconds']:.0f} | {r['harvest_seconds_jobs'] + r['harvest_seconds_prefetch']:.0f} "
                     f"| {r['job_seconds']:.0f} | {r['train_seconds']:.0f} | {r.get('evaluate_seconds', 0):.0f} | "
                     f"{', '.join(map(str, r['store']))} | {r['peak_rss_mb']} |")
    (out / "sweep_store.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
