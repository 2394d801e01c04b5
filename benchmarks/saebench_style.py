"""SAE quality beyond the proxies on the default model at layer 6: topk, batchtopk, jumprelu, gated, matryoshka at
target L0 32 and l1 at its default, each trained by a real `python -m saefw` run (L0, CE loss recovered from its
final evaluation), then scored in this process by the `absorption` and `sparse_probing` evaluators on the run's
own source. The evaluators cache what does not depend on the SAE beside the held-out store, so the first SAE
pays for it ("once per split") and the others only for their own part ("per SAE"); both are timed.

    python benchmarks/saebench_style.py [--runs /tmp/saefw-saebench-runs] [--out benchmarks/results]

Writes benchmarks/results/saebench_style.{json,md}, and per arch a metrics.json (training's record plus the new
metrics) under <runs>/scored/, which `python -m saefw.compare <runs>/scored` plots against L0."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("topk", "batchtopk", "jumprelu", "gated", "l1", "matryoshka")
EVALUATORS = ("absorption", "sparse_probing")
TRAIN_KEYS = ("l0", "ce_loss_recovered", "ce_loss_recovered_se", "explained_variance", "wall_seconds")


def train(arch: str, runs: Path) -> Path:
    """One real training run (skipped when its metrics.json is already there)."""
    run_dir = runs / arch
    if (run_dir / "metrics.json").is_file():
        return run_dir
    target = [] if arch == "l1" else ["target_l0=32"]
    cmd = [sys.executable, "-m", "saefw", f"arch={arch}", "layer=6", *target, f"hydra.run.dir={run_dir}",
           "resume=false", "wandb.mode=disabled", "trainer.enable_progress_bar=false"]
    print(f"== train {arch}: {' '.join(cmd[2:])}", flush=True)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode != 0:
        raise SystemExit(f"training {arch} failed:\n{r.stderr[-3000:]}")
    return run_dir


def score(run_dirs: dict[str, Path]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every evaluator on every SAE, on one source built as the runs' (their saved source settings)."""
    import torch
    from omegaconf import OmegaConf

    from saefw.evals.base import run_evaluators
    from saefw.io.saved import load_sae
    from saefw.registry import build, discover
    from saefw.sources.base import RunSpec

    discover()
    saved = OmegaConf.load(next(iter(run_dirs.values())) / ".hydra" / "config.yaml")
    src_cfg = OmegaConf.to_container(saved.source, resolve=False)
    src_cfg.update(model=saved.model, layer=saved.layer, site=saved.site)
    source = build("source", OmegaConf.create(src_cfg), spec=RunSpec(seed=0, train_tokens=0))
    source.setup()
    results, seconds = {}, {name: {} for name in EVALUATORS}
    for arch, run_dir in run_dirs.items():
        sae = load_sae(run_dir)
        results[arch] = {}
        for name in EVALUATORS:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            results[arch].update(run_evaluators(sae, source, [build("evaluator", {}, name=name)]))
            seconds[name][arch] = round(time.perf_counter() - t0, 1)
            print(f"   {arch} {name}: {seconds[name][arch]} s", flush=True)
    return results, seconds


def _f(v, nd=3):
    return "" if v is None else f"{v:.{nd}f}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# SAEBench-style quality on {meta['model']}, layer 6 resid_post ({meta['machine']})", "",
             meta["note"], "",
             "| arch | L0 | ce_loss_recovered ± se | absorption_rate ± se | absorption_fraction | "
             "section top-1 | section top-5 | region top-1 | region top-5 | mean top-1 | mean top-5 |",
             "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {_f(r['l0'], 1)} | {_f(r['ce_loss_recovered'])} ± {_f(r['ce_loss_recovered_se'])} | "
            f"{_f(r['absorption_rate'])} ± {_f(r['absorption_rate_se'])} | {_f(r['absorption_fraction'])} | "
            f"{_f(r['sparse_probing_factbook_section_sae_top_1_acc'])} | "
            f"{_f(r['sparse_probing_factbook_section_sae_top_5_acc'])} | "
            f"{_f(r['sparse_probing_factbook_region_sae_top_1_acc'])} | "
            f"{_f(r['sparse_probing_factbook_region_sae_top_5_acc'])} | "
            f"{_f(r['sparse_probing_sae_top_1_acc'])} | {_f(r['sparse_probing_sae_top_5_acc'])} |")
    ceiling = rows[0]
    lines += ["", f"Full-activation probe (the ceiling): section {_f(ceiling['sparse_probing_factbook_section_llm_acc'])}"
              f", region {_f(ceiling['sparse_probing_factbook_region_llm_acc'])}.", "",
              "Evaluator cost (seconds; the first SAE also computes the SAE-independent part, once per split):", "",
              "| evaluator | first SAE | later SAEs (mean) |", "|---|---|---|"]
    for name, by_arch in meta["seconds"].items():
        t = list(by_arch.values())
        lines.append(f"| {name} | {t[0]} | {sum(t[1:]) / max(len(t) - 1, 1):.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", default="/tmp/saefw-saebench-runs")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--train-only", action="store_true", help="train the runs and stop")
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    run_dirs = {arch: train(arch, runs) for arch in ARCHS}
    if args.train_only:
        return
    results, seconds = score(run_dirs)
    rows = []
    for arch, run_dir in run_dirs.items():
        trained = json.loads((run_dir / "metrics.json").read_text())
        new = {k: float(v) for k, v in results[arch].items()}
        rows.append({"arch": arch, **{k: trained.get(k) for k in TRAIN_KEYS}, **new})
        scored = runs / "scored" / arch
        scored.mkdir(parents=True, exist_ok=True)
        (scored / "metrics.json").write_text(json.dumps({**trained, **new}, indent=2))
    meta = {"model": "SmolLM2-135M-Instruct", "machine": f"{os.cpu_count()}-core CPU, fp32", "seconds": seconds,
            "note": "Each SAE: `python -m saefw arch=<arch> layer=6 target_l0=32` (l1: its default λ steering to "
                    "L0 ≈ 128) at the default 300 k training tokens; L0 and CE loss recovered from its final "
                    "evaluation. absorption: first-letter task over up to 2000 single-token vocabulary words "
                    "(± se across letters). sparse probing: held-out accuracy of a logistic probe on the k latents "
                    "whose class means differ most, Factbook section (9 classes) and region (13 classes)."}
    out.mkdir(parents=True, exist_ok=True)
    (out / "saebench_style.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "saebench_style.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
