"""Every arch at its defaults on the default model: layers 6 and 25 (resid_post), plus topk and gated at layer 15
mlp_out and attn_out. Each row is one real `python -m saefw` run (a subprocess, so wall times are what a user
waits), reading the shared activation store (harvest it first with `python -m saefw.store harvest
layers=[6,15,25] ...`, or let the first run of each hook point pay for it: the `activation_store` column says).

    python benchmarks/defaults.py [--only gated@25 ...] [--out benchmarks/results]

Writes benchmarks/results/defaults.{json,md}."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("l1", "gated", "topk", "jumprelu", "batchtopk")
CASES = [(arch, layer, "resid_post") for layer in (6, 25) for arch in ARCHS] + \
        [(arch, 15, site) for site in ("mlp_out", "attn_out") for arch in ("topk", "gated")]
KEYS = ("l0", "explained_variance", "explained_variance_se", "ce_loss_recovered", "ce_loss_recovered_se",
        "ce_delta", "ce_delta_se", "kl_div", "dead_fraction", "dead_fraction_heldout", "shrinkage",
        "final_coefficient", "activation_store", "harvest_seconds", "train_seconds", "wall_seconds")


def run_case(arch: str, layer: int, site: str, out: Path, extra: list[str]) -> dict:
    run_dir = out / f"{arch}_L{layer}_{site}"
    cmd = [sys.executable, "-m", "saefw", f"arch={arch}", f"layer={layer}", f"site={site}",
           f"hydra.run.dir={run_dir}", "resume=false", "wandb.mode=disabled", "trainer.enable_progress_bar=false",
           *extra]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.time() - t0
    if r.returncode != 0:
        return {"arch": arch, "layer": layer, "site": site, "status": "failed", "error": r.stderr[-500:]}
    m = json.loads((run_dir / "metrics.json").read_text())
    return {"arch": arch, "layer": layer, "site": site, "status": "ok", "process_wall_seconds": round(wall, 1),
            **{k: m.get(k) for k in KEYS}}


def _f(v, nd=3):
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| arch | layer | site | L0 | explained_variance | ce_loss_recovered ± se | ce_delta | kl_div | "
            "dead_fraction | shrinkage | store | wall s |")
    lines = [f"# saefw defaults on {meta['model']} ({meta['machine']})", "", meta["note"], "", head,
             "|" + "---|" * 12]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['arch']} | {r['layer']} | {r['site']} | failed: {r['error'][-120:]!r} |")
            continue
        lines.append(f"| {r['arch']} | {r['layer']} | {r['site']} | {_f(r['l0'], 1)} | "
                     f"{_f(r['explained_variance'])} | {_f(r['ce_loss_recovered'])} ± {_f(r['ce_loss_recovered_se'])} | "
                     f"{_f(r['ce_delta'])} | {_f(r['kl_div'])} | {_f(r['dead_fraction'])} | {_f(r['shrinkage'])} | "
                     f"{r['activation_store']} | {_f(r['process_wall_seconds'], 0)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", help="cases as arch@layer or arch@layer@site")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--runs", default="/tmp/saefw-defaults-runs")
    ap.add_argument("extra", nargs="*", help="overrides passed to every run")
    args = ap.parse_args()
    cases = CASES
    if args.only:
        want = {tuple(o.split("@")) for o in args.only}
        cases = [c for c in CASES if (c[0], str(c[1])) in want or (c[0], str(c[1]), c[2]) in want]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "defaults.json"
    old = json.loads(json_path.read_text())["rows"] if json_path.is_file() else []
    rows = {(r["arch"], r["layer"], r["site"]): r for r in old}
    for arch, layer, site in cases:
        print(f"== {arch} layer {layer} {site}", flush=True)
        rows[(arch, layer, site)] = run_case(arch, layer, site, Path(args.runs), args.extra)
        print(json.dumps(rows[(arch, layer, site)]), flush=True)
        ordered = [rows[c] for c in CASES if c in rows]
        meta = {"model": "SmolLM2-135M-Instruct", "machine": f"{os.cpu_count()}-core CPU, fp32",
                "note": "Each row: `python -m saefw arch=<arch> layer=<layer> site=<site>` with every other "
                        "setting at its default (300 k training tokens, held-out Factbook contexts). "
                        "dead_fraction: latents silent over the last 100 k training tokens. wall s: the whole "
                        "process; `store` = whether the activations were read from the store (hit) or harvested "
                        "by this run (miss).",
                "extra_overrides": args.extra}
        json_path.write_text(json.dumps({"meta": meta, "rows": ordered}, indent=2))
        (out / "defaults.md").write_text(markdown(ordered, meta))


if __name__ == "__main__":
    main()
