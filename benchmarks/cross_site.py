"""Dictionaries across sites and layers on the default model, at the default budget (300 k training tokens):

* layer 6 MLP: a TopK SAE on mlp_out, a transcoder (mlp_in → mlp_out) and a skip-transcoder, all at k = 32, so
  their loss recovered compares at the same L0 (each splices its output in place of the MLP's output);
* layers 5–7 resid_post: a crosscoder (one dictionary, every layer's reconstruction spliced) beside three TopK
  SAEs, one per layer (each spliced alone).

Each row is one real `python -m saefw` run (a subprocess: wall times are what a user waits) reading the shared
activation store. For the crosscoder the script also writes its layer profile (which layers each latent's decoder
writes to: `saefw.relations.layer_profile`) and reads three latents off it (one shared by all layers, one of the
first layer only, one of the last layer only) with their top-activating held-out tokens.

    python benchmarks/cross_site.py [--only transcoder crosscoder ...] [--runs /tmp/saefw-cross-site]

Writes benchmarks/results/cross_site.{json,md} and benchmarks/results/cross_site_layer_profile.png."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from saefw.io.saved import load_sae, saved_run_config
from saefw.registry import build, discover
from saefw.relations.layer_profile import layer_profile, profile_summary, write_layer_profile
from saefw.sources.base import RunSpec

REPO = Path(__file__).resolve().parents[1]
XC_LAYERS = (5, 6, 7)
CASES = {  # name: (group, overrides)
    "sae_mlp_out": ("L6 MLP", ["arch=topk", "layer=6", "site=mlp_out"]),
    "transcoder": ("L6 MLP", ["arch=transcoder", "layer=6", "site=mlp_out", "source.input_site=mlp_in"]),
    "skip_transcoder": ("L6 MLP", ["arch=skip_transcoder", "layer=6", "site=mlp_out", "source.input_site=mlp_in"]),
    **{f"sae_L{layer}": ("L5-7 resid_post", ["arch=topk", f"layer={layer}", "site=resid_post"])
       for layer in XC_LAYERS},
    "crosscoder": ("L5-7 resid_post", ["arch=crosscoder", "site=resid_post",
                                       f"source.layers=[{','.join(map(str, XC_LAYERS))}]"]),
}
KEYS = ("arch", "l0", "explained_variance", "explained_variance_se", "ce_loss_recovered", "ce_loss_recovered_se",
        "ce_delta", "ce_delta_se", "kl_div", "dead_fraction", "d_sae", "final_coefficient", "activation_store",
        "wall_seconds")


def run_case(name: str, runs: Path, extra: list[str]) -> dict:
    group, overrides = CASES[name]
    run_dir = runs / name
    cmd = [sys.executable, "-m", "saefw", *overrides, f"hydra.run.dir={run_dir}", "resume=false",
           "wandb.mode=disabled", "trainer.enable_progress_bar=false", *extra]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.time() - t0
    row = {"name": name, "group": group, "command": "python -m saefw " + " ".join(overrides), "run_dir": str(run_dir)}
    if r.returncode != 0:
        return {**row, "status": "failed", "error": r.stderr[-800:]}
    m = json.loads((run_dir / "metrics.json").read_text())
    per_layer = {k: v for k, v in m.items() if k.startswith("explained_variance_layer")}
    return {**row, "status": "ok", "process_wall_seconds": round(wall, 1), **{k: m.get(k) for k in KEYS},
            **per_layer}


def heldout(run_dir: Path):
    """The run's SAE, its held-out rows and the token each row belongs to (plus its context and position)."""
    discover()
    sae = load_sae(run_dir)
    cfg = OmegaConf.create(saved_run_config(run_dir))
    source = build("source", cfg.source, spec=RunSpec(seed=cfg.seed, train_tokens=0))
    source.setup()
    rows = torch.cat(list(source.eval_batches(1 << 16)))
    return sae, source, rows


def top_contexts(sae, source, rows, latent: int, n: int = 5, width: int = 8) -> list[dict]:
    """The ``n`` held-out tokens where ``latent`` fires most, each with ``width`` tokens of context before it."""
    with torch.no_grad():
        acts = torch.cat([sae.encode(sae.split_rows(b)[0])[:, latent] for b in rows.split(4096)])
    tokens = source.eval_tokens[:, 1:]
    per = tokens.shape[1]
    tok = source.lm.tokenizer
    out = []
    for v, i in zip(*acts.topk(n)):
        c, p = divmod(int(i), per)
        ctx = source.eval_tokens[c, max(1, p + 1 - width): p + 1].tolist()
        out.append({"activation": round(float(v), 3), "token": tok.decode(tokens[c, p:p + 1].tolist()),
                    "context": tok.decode(ctx[:-1]), "fires_on_fraction": None})
    firing = (acts > 0).float().mean().item()
    for o in out:
        o["fires_on_fraction"] = round(firing, 5)
    return out


def read_crosscoder(run_dir: Path, out: Path) -> dict:
    sae, source, rows = heldout(run_dir)
    layers = list(XC_LAYERS)
    paths = write_layer_profile(sae, layers, run_dir / "layer_profile",
                                title=f"crosscoder over layers {layers[0]}–{layers[-1]} resid_post, "
                                      f"{sae.d_sae} latents")
    shutil.copyfile(paths.figure, out / "cross_site_layer_profile.png")
    prof = layer_profile(sae)
    with torch.no_grad():
        firing = torch.cat([(sae.encode(sae.split_rows(b)[0]) > 0).float().sum(0, keepdim=True)
                            for b in rows.split(4096)]).sum(0) / len(rows)
    live = firing > 1e-4  # read only latents that fire on the held-out split
    picks = {}
    shares = prof["fractions"]
    # the most even latent, and the ones leaning most to the first and to the last layer (among live latents)
    cands = {"most even across layers": (live, shares.min(-1).values),
             f"leaning most to layer {layers[0]}": (live, shares[:, 0]),
             f"leaning most to layer {layers[-1]}": (live, shares[:, -1])}
    for label, (mask, score) in cands.items():
        if mask.any():
            i = int(torch.where(mask, score, torch.full_like(score, -1)).argmax())
            picks[label] = {"latent": i, "shares": [round(v, 3) for v in shares[i].tolist()],
                            "fires_on_fraction": round(float(firing[i]), 5),
                            "top": top_contexts(sae, source, rows, i)}
    # dead latents keep their init (equal norms at every layer): the live ones say what training found
    top_live = prof["top_share"][live]
    live_summary = {"n_live": int(live.sum()), "live_above": 1e-4,
                    "top_share_quantiles": {q: round(float(top_live.quantile(q)), 4) for q in (0.5, 0.9, 0.99, 1.0)},
                    "top_layer_counts": {f"L{layer}": int((prof["top"][live] == j).sum())
                                         for j, layer in enumerate(layers)}}
    return {"summary": profile_summary(prof, layers), "live": live_summary, "features": picks}


def _f(v, nd=3):
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(rows: list[dict], meta: dict, profile: dict | None) -> str:
    lines = [f"# Dictionaries across sites and layers on {meta['model']} ({meta['machine']})", "", meta["note"], "",
             "| group | dictionary | L0 | explained_variance ± se | per-layer EV | ce_loss_recovered ± se | ce_delta | "
             "kl_div | dead_fraction | d_sae | wall s |", "|" + "---|" * 11]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['group']} | {r['name']} | failed: {r['error'][-160:]!r} |")
            continue
        per = " / ".join(f"{r[k]:.3f}" for k in sorted(r) if k.startswith("explained_variance_layer")
                         and not k.endswith("_se"))
        lines.append(f"| {r['group']} | {r['name']} (`{r['command'][len('python -m saefw '):]}`) | {_f(r['l0'], 1)} | "
                     f"{_f(r['explained_variance'])} ± {_f(r['explained_variance_se'])} | {per} | "
                     f"{_f(r['ce_loss_recovered'])} ± {_f(r['ce_loss_recovered_se'])} | {_f(r['ce_delta'])} | "
                     f"{_f(r['kl_div'])} | {_f(r['dead_fraction'])} | {r['d_sae']} | "
                     f"{_f(r['process_wall_seconds'], 0)} |")
    if profile:
        s = profile["summary"]
        lines += ["", f"## Crosscoder layer profile ({s['n_latents']} latents, shared = no layer holds more than "
                      f"{s['shared_above']} of Σ_l ‖W_dec^l‖)", "",
                  "| " + " | ".join(s["counts"]) + " | median top share |", "|" + "---|" * (len(s["counts"]) + 1),
                  "| " + " | ".join(str(v) for v in s["counts"].values()) + f" | {s['median_top_share']:.3f} |", "",
                  "![layer profile](cross_site_layer_profile.png)", ""]
        if profile.get("live"):
            lv = profile["live"]
            lines += [f"Live latents (firing on more than {lv['live_above']:g} of held-out tokens): {lv['n_live']}; "
                      f"their largest layer share, quantiles {lv['top_share_quantiles']} (1/{len(XC_LAYERS)} = "
                      f"equal at every layer); largest layer: {lv['top_layer_counts']}.", ""]
        for label, feat in profile["features"].items():
            lines.append(f"- **{label}**: latent {feat['latent']}, decoder shares {feat['shares']} over layers "
                         f"{list(XC_LAYERS)}, fires on {100 * feat['fires_on_fraction']:.2f} % of held-out tokens; "
                         "top tokens: " + "; ".join(f"…{t['context']}[**{t['token']}**] ({t['activation']})"
                                                    for t in feat["top"][:4]).replace("\n", "⏎"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", choices=list(CASES))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--runs", default="/tmp/saefw-cross-site")
    ap.add_argument("--profile-only", action="store_true", help="reread the crosscoder's run, train nothing")
    ap.add_argument("extra", nargs="*", help="overrides passed to every run")
    args = ap.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "cross_site.json"
    old = json.loads(json_path.read_text()) if json_path.is_file() else {}
    rows = {r["name"]: r for r in old.get("rows", [])}
    profile = old.get("crosscoder_profile")
    meta = {"model": "SmolLM2-135M-Instruct", "machine": f"{os.cpu_count()}-core CPU, fp32",
            "note": "Each row: one `python -m saefw` run at the default budget (300 k training tokens, "
                    "expansion_factor 8, held-out Factbook contexts), every other setting at its default. "
                    "ce_loss_recovered splices the dictionary's output in place of what it reconstructs: the "
                    "MLP's output at layer 6 for the SAE and both transcoders (zero baseline: the MLP ablated), "
                    "every layer's reconstruction at once for the crosscoder (zero baseline: all three zeroed), "
                    "one layer for each single-layer SAE. explained_variance is of the target (mlp_out; for the "
                    "crosscoder all layers jointly, per layer beside it). wall s: the whole process, while "
                    "other jobs shared the 2 cores (upper bounds).",
            "extra_overrides": args.extra}
    for name in ([] if args.profile_only else (args.only or list(CASES))):
        print(f"== {name}", flush=True)
        rows[name] = run_case(name, runs, args.extra)
        print(json.dumps(rows[name]), flush=True)
    if rows.get("crosscoder", {}).get("status") == "ok" and (args.profile_only or "crosscoder" in (args.only or CASES)):
        profile = read_crosscoder(Path(rows["crosscoder"]["run_dir"]), out)
        print(json.dumps(profile, indent=1), flush=True)
    ordered = [rows[c] for c in CASES if c in rows]
    json_path.write_text(json.dumps({"meta": meta, "rows": ordered, "crosscoder_profile": profile}, indent=2))
    (out / "cross_site.md").write_text(markdown(ordered, meta, profile))


if __name__ == "__main__":
    main()
