"""Harvest once, train many: the same 6-job multirun at layer 25 (3 archs × 2 sparsity targets, default budget)
with the activation store off, cold (an empty store: the prefetch callback harvests once for the whole sweep),
warm (a second sweep reading the same store), and as one pass (`hydra/launcher=one_pass`: the 6 SAEs train
together on one stream of batches), harvested live without a store (one_pass_live) or read from the warm store
(one_pass_store).

    python benchmarks/sweep_store.py [--layer 25] [--modes off cold warm one_pass_live one_pass_store]

Each mode is one `python -m saefw -m ...` process; its wall time, the harvest seconds its jobs report (plus the
prefetch's, from its log), the jobs' train/evaluate time and the peak RSS of the process are written to
benchmarks/results/sweep_store.{json,md}; rows of modes not run this time are kept from the earlier results (the
commit column says which). Targets: cold ≤ one harvest + 6 × (train + evaluate) + 10 %, warm harvests nothing,
one_pass_live ≤ the same bound with cold's harvest and jobs, at a peak RSS ≤ 1.5 × a single run's
(benchmarks/results/memory.json)."""
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
MODES = ("off", "cold", "warm", "one_pass_live", "one_pass_store")
PER_JOB = ("arch", "target_l0", "status", "l0", "explained_variance", "ce_loss_recovered", "wall_seconds", "timings")


def run_mode(mode: str, layer: int, store_dir: Path, work: Path) -> dict:
    sweep_dir = work / f"sweep_{mode}"
    shutil.rmtree(sweep_dir, ignore_errors=True)
    live = mode in ("off", "one_pass_live")
    store = ["source.store=false"] if live else [f"source.store_dir={store_dir}"]
    launcher = ["hydra/launcher=one_pass"] if mode.startswith("one_pass") else []
    cmd = [sys.executable, "-m", "saefw", "-m", *launcher, *SWEEP, f"layer={layer}", *store,
           f"hydra.sweep.dir={sweep_dir}",
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
            "harvest_seconds_prefetch": round(prefetch, 1) if not live else 0.0,
            "train_seconds": round(sum(j.get("train_seconds", 0) for j in jobs), 1),
            "evaluate_seconds": round(sum(j.get("timings", {}).get("evaluate", 0) for j in jobs), 1),
            "job_seconds": round(sum(j.get("wall_seconds", 0) for j in jobs), 1),
            "store": sorted({str(j.get("activation_store")) for j in jobs}), "peak_rss_mb": round(peak_kb / 1024),
            "commit": _commit(), "error": None if r.returncode == 0 else log[-800:],
            "per_job": [{k: j.get(k) for k in PER_JOB} for j in jobs]}


def _commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layer", type=int, default=25)
    ap.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    # each invocation has a store of its own: a mode that reads the store needs the cold sweep that fills it
    readers = sorted({"warm", "one_pass_store"} & set(args.modes))
    if readers and "cold" not in args.modes:
        one = len(readers) == 1
        ap.error(f"{' and '.join(readers)} {'reads' if one else 'read'} the store the cold sweep fills: run "
                 f"{'it' if one else 'them'} with cold")
    work = Path(tempfile.mkdtemp(prefix="saefw-sweep-store-"))
    store_dir = work / "stores"
    out = Path(args.out)
    earlier = json.loads((out / "sweep_store.json").read_text()) if (out / "sweep_store.json").is_file() else {}
    rows = {r["mode"]: r for r in earlier.get("rows", [])}
    # an earlier remark described the earlier rows: it is not carried over
    meta = {"sweep": SWEEP + [f"layer={args.layer}"], "machine": f"{os.cpu_count()}-core CPU, fp32",
            "store_bytes": earlier.get("meta", {}).get("store_bytes", 0)}
    for mode in sorted(args.modes, key=MODES.index):
        if mode == "cold":
            shutil.rmtree(store_dir, ignore_errors=True)
        print(f"== {mode}", flush=True)
        rows[mode] = run_mode(mode, args.layer, store_dir, work)
        print(json.dumps({k: v for k, v in rows[mode].items() if k != "per_job"}), flush=True)
        if mode == "cold":
            meta["store_bytes"] = sum(f.stat().st_size for f in store_dir.rglob("*") if f.is_file())
        write_results([rows[m] for m in MODES if m in rows], meta, out)  # what has finished survives a stop


def targets(rows: dict[str, dict]) -> list[str]:
    """The issue's targets, computed from the rows measured (the one-pass bound from cold's harvest and jobs)."""
    lines = []
    cold, live = rows.get("cold"), rows.get("one_pass_live")
    if cold:
        harvest = cold["harvest_seconds_jobs"] + cold["harvest_seconds_prefetch"]
        bound = 1.1 * (harvest + cold["train_seconds"] + cold["evaluate_seconds"])
        lines.append(f"Bound for cold and one_pass_live: 1.1 × (cold's harvest {harvest:.0f} s + its 6 × train "
                     f"{cold['train_seconds']:.0f} s + 6 × evaluate {cold['evaluate_seconds']:.0f} s) = {bound:.0f} s; "
                     f"cold measured {cold['wall_seconds']:.0f} s"
                     + (f", one_pass_live {live['wall_seconds']:.0f} s." if live else "."))
    memory = REPO / "benchmarks" / "results" / "memory.json"
    single = {r["run"]: r["peak_rss_mb"] for r in json.loads(memory.read_text())["rows"]} if memory.is_file() else {}
    if live and "card" in single:
        lines.append(f"Peak RSS bound for one_pass_live: 1.5 × a single layer-25 run's first-run peak "
                     f"({single['card']} MB, memory.md) = {1.5 * single['card']:.0f} MB; measured {live['peak_rss_mb']} MB.")
    return lines


def write_results(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_store.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# One harvest per sweep: `python -m saefw -m {' '.join(meta['sweep'])}`", "",
             f"{meta['machine']}. Store on disk after the cold sweep: {meta.get('store_bytes', 0) / 1e6:.0f} MB.",
             *targets({r["mode"]: r for r in rows}), *([meta["remark"]] if meta.get("remark") else []), "",
             "| mode | wall s | harvest s (jobs + prefetch) | jobs' own s | train s | final evaluations s | "
             "activation_store | peak RSS MB | commit |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['wall_seconds']:.0f} | {r['harvest_seconds_jobs'] + r['harvest_seconds_prefetch']:.0f} "
                     f"| {r['job_seconds']:.0f} | {r['train_seconds']:.0f} | {r.get('evaluate_seconds', 0):.0f} | "
                     f"{', '.join(map(str, r['store']))} | {r['peak_rss_mb']} | {r.get('commit', 'earlier')} |")
    lines += ["", "Per job (l0 / explained_variance / ce_loss_recovered):", "",
              "| mode | " + " | ".join(f"{j['arch']} {j['target_l0']}" for j in rows[0].get("per_job", [])) + " |",
              "|---|" + "---|" * len(rows[0].get("per_job", []))]
    for r in rows:
        lines.append(f"| {r['mode']} | " + " | ".join(
            f"{j['l0']:.1f} / {j['explained_variance']:.3f} / {j['ce_loss_recovered']:.3f}"
            if j.get("l0") is not None else str(j.get("status")) for j in r.get("per_job", [])) + " |")
    (out / "sweep_store.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
