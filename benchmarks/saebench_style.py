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


def _pm(r, key, nd=3):
    return f"{_f(r.get(key), nd)} ± {_f(r.get(key + '_se'), nd)}"


def findings(rows: list[dict]) -> list[str]:
    """What the table says, computed: Matryoshka against TopK, and whether the orderings agree (Kendall's τ)."""
    from scipy.stats import kendalltau

    by = {r["arch"]: r for r in rows}
    m, t = by["matryoshka"], by["topk"]
    diff = t["absorption_rate"] - m["absorption_rate"]
    se = (t["absorption_rate_se"] ** 2 + m["absorption_rate_se"] ** 2) ** 0.5
    order = {name: [r["arch"] for r in sorted(rows, key=key)] for name, key in (
        ("CE loss recovered (best first)", lambda r: -r["ce_loss_recovered"]),
        ("absorption rate (least first)", lambda r: r["absorption_rate"]),
        ("sparse probing, mean top-1 (best first)", lambda r: -r["sparse_probing_sae_top_1_acc"]))}
    ce = [r["ce_loss_recovered"] for r in rows]
    tau_abs = kendalltau(ce, [-r["absorption_rate"] for r in rows]).statistic
    tau_probe = kendalltau(ce, [r["sparse_probing_sae_top_1_acc"] for r in rows]).statistic
    return [f"- Matryoshka {'absorbs less' if diff > 0 else 'does not absorb less'} than TopK here: absorption rate "
            f"{_pm(m, 'absorption_rate')} against {_pm(t, 'absorption_rate')} (difference {diff:.3f} ± {se:.3f}), "
            f"absorption fraction {_f(m['absorption_fraction'])} against {_f(t['absorption_fraction'])}.",
            *[f"- Ordered by {name}: {', '.join(archs)}." for name, archs in order.items()],
            f"- Agreement with the CE-loss-recovered ordering (Kendall's τ, 1 = same order): absorption {tau_abs:.2f}, "
            f"sparse probing top-1 {tau_probe:.2f}."]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# SAEBench-style quality on {meta['model']}, layer 6 resid_post ({meta['machine']})", "",
             meta["note"], "",
             "| arch | L0 | ce_loss_recovered | absorption_rate | absorption_fraction | section top-1 | "
             "section top-5 | region top-1 | region top-5 | mean top-1 | mean top-5 |",
             "|" + "---|" * 11]
    for r in rows:
        cells = [_pm(r, "ce_loss_recovered"), _pm(r, "absorption_rate"), _pm(r, "absorption_fraction"),
                 *(_pm(r, f"sparse_probing_{task}_sae_top_{k}_acc")
                   for task in ("factbook_section", "factbook_region") for k in (1, 5)),
                 _pm(r, "sparse_probing_sae_top_1_acc"), _pm(r, "sparse_probing_sae_top_5_acc")]
        lines.append(f"| {r['arch']} | {_f(r['l0'], 1)} | " + " | ".join(cells) + " |")
    ceiling = rows[0]
    lines += ["", f"Full-activation probe (the ceiling): section {_pm(ceiling, 'sparse_probing_factbook_section_llm_acc')}"
              f", region {_pm(ceiling, 'sparse_probing_factbook_region_llm_acc')}.", "", *findings(rows), "",
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
