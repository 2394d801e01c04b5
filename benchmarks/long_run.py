"""A long run, on demand: TopK and L1 SAEs at layer 6 of the default model trained on ≥ 10 M tokens of a corpus any
user can rebuild offline (this machine's Debian documentation: ``benchmarks/debian_corpus.py``), with periodic
evaluations, so L0, CE loss recovered and explained variance can be read against the tokens trained on.

It answers three questions: how do the defaults scale past the 300 k-token default budget; does l1 reach
L0 ≤ 40 with CE loss recovered ≥ 0.9 given enough steps (at 300 k tokens, l1 steered to L0 32 gave CE 0.45, which
is why its default target is 128); and where the numbers sit against published ones.

Cases (``--only`` picks some):

* ``topk``: ``arch=topk`` at its defaults (k = 32);
* ``l1``: ``arch=l1 target_l0=32``: λ steered to the L0 of topk, the question the issue asks;
* ``l1_default``: ``arch=l1`` at its default target (L0 128), not run unless named.

Each case is one real ``python -m saefw`` subprocess (layer 6, ``source.corpus=<the corpus>``,
``total_tokens=<--tokens>``, ``train.eval_every_steps=<--eval-every>``,
``evaluators.loss_recovered.contexts_during_training=<--curve-contexts>`` (128: every periodic CE-recovered point on
the final evaluation's 128 held-out contexts; saefw scores 8 during training by default, too few and too easy a
subset for a curve), ``source.store_dtype=bfloat16`` (a 10 M-token float32 store at d 576 is 23 GB, bfloat16
halves it to 11.5 GB; training reads it back as float32, and since a bfloat16 store is not the model's exact state,
the evaluations compute the held-out layer-6 states once per split in float32 instead of reading them). Both cases
read the same activation store, so the first one harvests it (2,971 tokens/s on the idle 2-core CPU,
``benchmarks/results/perf_lm.md``; 640 to 770 with other jobs sharing the cores: 1 to 4 hours for 10 M tokens) and the second reads it.

Resumable: each case has a fixed run dir (``<runs>/<case>_<tokens>``); a case whose ``metrics.json`` says it
finished with this budget, the same overrides and the same corpus (``long_run_case.json`` in the run dir) is
reused, and an interrupted one continues from its checkpoints when rerun (saefw resumes
in its ``hydra.run.dir``), as does an interrupted harvest. Progress (the run's own progress bar and phase lines)
is printed every ``--poll`` seconds; the full log is ``<runs>/<case>_<tokens>.log``.

    python benchmarks/long_run.py [--tokens 10000000] [--eval-every N] [--only topk l1] [--out benchmarks/results]
                                  [--runs outputs/benchmarks/long_run] [--corpus DIR] [extra overrides ...]

Writes ``<out>/long_run.json``, ``<out>/long_run.md`` and ``<out>/long_run.png`` (L0 and CE loss recovered against
training tokens, both archs)."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import debian_corpus  # noqa: E402 - the sibling script

CASES = {"topk": ["arch=topk"], "l1": ["arch=l1", "target_l0=32"], "l1_default": ["arch=l1"]}
DEFAULT_CASES = ("topk", "l1")
BATCH = 1024  # train.batch_size's default: tokens per step
CURVE_KEYS = ("l0", "ce_loss_recovered", "ce_loss_recovered_se", "explained_variance", "explained_variance_se",
              "dead_fraction", "coefficient", "final_coefficient")
KEYS = ("arch", "l0", "explained_variance", "explained_variance_se", "ce_loss_recovered", "ce_loss_recovered_se",
        "ce_delta", "kl_div", "dead_fraction", "dead_fraction_heldout", "shrinkage", "final_coefficient", "d_sae",
        "steps", "tokens", "resumed_from", "activation_store", "harvest_seconds", "train_seconds", "wall_seconds", "timings")
# Published numbers we could check (the model cards / metrics files below); other models, corpora and widths,
# so they place our numbers, they do not rank them.
PUBLISHED = [
    # L0 is k by construction; the metrics file's CE and EV could not be read from a machine without network
    {"what": "OpenAI TopK SAE (v5, 128k latents, k = 32), GPT-2 small layer 10 resid_mid (CE and EV: see the "
             "source; not verified here)",
     "l0": 32.0, "ce_loss_recovered": None, "explained_variance": None,
     "source": "https://huggingface.co/jbloom/GPT2-Small-OAI-v5-128k-resid-mid-SAEs/raw/main/v5_128k_layer_10/"
               "metrics.json"},
    {"what": "L1 SAE (SAELens, 16,384 latents = 8×, Anthropic April-2024 recipe), Gemma-2b layer 6 resid_post",
     "l0": 53.0, "ce_loss_recovered": 0.9533, "explained_variance": None,
     "source": "https://huggingface.co/jbloom/Gemma-2b-Residual-Stream-SAEs (README, 'Resid Post 6'; "
               "up to 7k dead latents, 'likely under-trained')"},
    {"what": "L1 SAEs (SAELens, 24,576 latents = 32×), GPT-2 small resid_pre, trained on 300 M OpenWebText tokens",
     "l0": None, "ce_loss_recovered": None, "explained_variance": None,
     "source": "https://huggingface.co/jbloom/GPT2-Small-SAEs (training budget only: 30× ours)"},
]


def run_dir_of(runs: Path, case: str, tokens: int) -> Path:
    return runs / f"{case}_{tokens}"


def same_spec(run_dir: Path, spec: dict) -> bool:
    """Whether the run in ``run_dir`` was started with this ``spec`` (its overrides and the corpus's manifest,
    recorded in ``long_run_case.json`` when it started)."""
    case = run_dir / "long_run_case.json"
    return case.is_file() and json.loads(case.read_text()) == spec


def finished(run_dir: Path, tokens: int, spec: dict) -> dict | None:
    """The run's metrics.json if it finished with this budget and this ``spec``, else None."""
    path = run_dir / "metrics.json"
    if not path.is_file() or not same_spec(run_dir, spec):
        return None
    m = json.loads(path.read_text())
    if m.get("status") == "failed" or m.get("interrupted") or m.get("tokens", 0) < (tokens // BATCH) * BATCH:
        return None
    return m


def _last_line(log: Path) -> str:
    """The last progress-bar state or line the run printed."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1][-200:] if parts else ""


def run_case(case: str, corpus: Path, tokens: int, eval_every: int, runs: Path, extra: list[str],
             poll: float, curve_contexts: int, report: bool = False) -> dict:
    run_dir = run_dir_of(runs, case, tokens)
    overrides = [*CASES[case], "layer=6", f"source.corpus={corpus}", f"total_tokens={tokens}",
                 f"train.eval_every_steps={eval_every}", f"train.checkpoint_every_steps={eval_every}",
                 f"evaluators.loss_recovered.contexts_during_training={curve_contexts}",
                 "source.store_dtype=bfloat16", *extra]
    row = {"case": case, "command": "python -m saefw " + " ".join(overrides), "run_dir": str(run_dir)}
    manifest = json.loads(debian_corpus.manifest_path(corpus).read_text())
    spec = {"overrides": overrides, "corpus": {k: v for k, v in manifest.items() if k not in ("tokens", "tokenizer")}}
    done = finished(run_dir, tokens, spec)
    if done is not None:
        print(f"== {case}: finished earlier in {run_dir}, reused", flush=True)
        return {**row, "status": "ok", "reused": True, **collect(done)}
    if report:  # tables only: a run stopped part way (Ctrl-C saves its record and history) shows how far it got
        path = run_dir / "metrics.json"
        m = json.loads(path.read_text()) if path.is_file() else {}
        if m.get("interrupted") and same_spec(run_dir, spec):
            print(f"== {case}: interrupted at {m.get('tokens', 0):,} tokens in {run_dir}", flush=True)
            return {**row, "status": "interrupted", **collect(m)}
        return {**row, "status": "failed", "error": "not run (--report)"}
    cmd = [sys.executable, "-m", "saefw", *overrides, f"hydra.run.dir={run_dir}", "wandb.mode=disabled"]
    log = run_dir.with_suffix(".log")
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "long_run_case.json").is_file() and not same_spec(run_dir, spec):  # other corpus or settings
        cmd.append("resume=false")
    (run_dir / "long_run_case.json").write_text(json.dumps(spec, indent=1))
    print(f"== {case}: {' '.join(cmd[1:])}\n   log: {log}", flush=True)
    t0 = time.time()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        while True:
            try:
                proc.wait(timeout=poll)
                break
            except subprocess.TimeoutExpired:
                print(f"   [{case} {time.time() - t0:6.0f} s] {_last_line(log)}", flush=True)
    wall = round(time.time() - t0, 1)
    done = finished(run_dir, tokens, spec)
    if proc.returncode != 0 or done is None:
        tail = log.read_text(errors="replace")[-1500:]
        print(f"   {case} failed (exit {proc.returncode}):\n{tail}", flush=True)
        return {**row, "status": "failed", "returncode": proc.returncode, "error": tail[-600:]}
    print(f"   {case} done in {wall:.0f} s: L0 {done['l0']:.1f}, CE recovered {done['ce_loss_recovered']:.3f}, "
          f"EV {done['explained_variance']:.3f}", flush=True)
    return {**row, "status": "ok", "reused": False, "process_wall_seconds": wall, **collect(done)}


def collect(m: dict) -> dict:
    """The final metrics and the curve (periodic evaluations, then the final one) of a metrics.json record."""
    batch = m.get("batch_size") or BATCH
    curve = [{"step": int(h["step"]), "tokens": int(h["step"]) * batch,
              **{k: h[k] for k in CURVE_KEYS if k in h}} for h in m.get("history", [])]
    final = {"step": m.get("steps"), "tokens": m.get("tokens"), "final": True,
             **{k: m[k] for k in CURVE_KEYS if k in m}}
    if m.get("interrupted"):  # its record holds the last periodic evaluation's metrics: the curve ends there
        return {**{k: m.get(k) for k in KEYS}, "tokens": curve[-1]["tokens"] if curve else 0, "curve": curve}
    if not curve or curve[-1]["step"] != final["step"]:
        curve.append(final)
    else:
        curve[-1] = {**curve[-1], **final}
    return {**{k: m.get(k) for k in KEYS}, "curve": curve}


def first_reaching(curve: list[dict], l0_max: float, ce_min: float) -> dict | None:
    return next((p for p in curve if p.get("l0", math.inf) <= l0_max and p.get("ce_loss_recovered", -1) >= ce_min),
                None)


def reference_rows() -> dict:
    """This repo's 300 k-token numbers at layer 6 (benchmarks/results/defaults.json), for the scaling question."""
    path = REPO / "benchmarks" / "results" / "defaults.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text()).get("rows", [])
    return {r["arch"]: r for r in rows if r.get("layer") == 6 and r.get("site") == "resid_post"
            and r.get("status") == "ok" and r["arch"] in ("topk", "l1")}


def plot(rows: list[dict], path: Path, tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        if r["status"] not in ("ok", "interrupted") or not r.get("curve"):
            continue
        xs = [p["tokens"] / 1e6 for p in r["curve"]]
        label = f"{r['case']} ({' '.join(CASES[r['case']])})" + (
            f", stopped at {r['tokens'] / 1e6:.1f} M" if r["status"] == "interrupted" else "")
        a.plot(xs, [p.get("l0") for p in r["curve"]], marker="o", ms=3, label=label)
        ce = [p.get("ce_loss_recovered") for p in r["curve"]]
        se = [p.get("ce_loss_recovered_se") or 0 for p in r["curve"]]
        b.errorbar(xs, ce, yerr=se, marker="o", ms=3, capsize=2, label=label)
    a.axhline(40, color="grey", ls=":", lw=1, label="L0 = 40")
    b.axhline(0.9, color="grey", ls=":", lw=1, label="CE recovered = 0.9")
    a.set_yscale("log")
    a.set_xlabel("training tokens (M)")
    a.set_ylabel("L0 (held-out)")
    b.set_xlabel("training tokens (M)")
    b.set_ylabel("CE loss recovered (held-out, ± se)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M-Instruct layer 6 resid_post, Debian documentation corpus, {tokens / 1e6:g} M tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v, nd=3):
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def answers(rows: dict, meta: dict) -> list[str]:
    out = ["## Answers", ""]
    l1, topk = rows.get("l1"), rows.get("topk")
    out.append("**Does l1 reach L0 ≤ 40 with CE loss recovered ≥ 0.9 given enough steps?**")
    if l1 and l1["status"] == "ok":
        ok = l1["l0"] <= 40 and l1["ce_loss_recovered"] >= 0.9
        first = first_reaching(l1["curve"], 40, 0.9)
        out.append(f"{'Yes' if ok else 'No'}, at {meta['tokens']:,} tokens: l1 steered to L0 32 ends at L0 "
                   f"{l1['l0']:.1f} with CE loss recovered {l1['ce_loss_recovered']:.3f} ± "
                   f"{_f(l1['ce_loss_recovered_se'])} (EV {l1['explained_variance']:.3f}, dead fraction "
                   f"{_f(l1['dead_fraction'])}). "
                   + (f"The first evaluation meeting both was at {first['tokens']:,} tokens." if first else
                      "No periodic evaluation met both."))
        out.append("Caveat: λ's schedule stretches with the budget (the target descends over the first half, λ is "
                   "frozen for the last 20 %), so the periodic points of the first half are not yet at L0 32; the "
                   "curve is one run's trajectory, not a set of runs of shorter budgets.")
    elif l1 and l1["status"] == "interrupted":
        first = first_reaching(l1["curve"], 40, 0.9)
        out.append(f"Not answered at {meta['tokens']:,} tokens: the l1 run was stopped at {l1['tokens']:,} "
                   f"(resumable: rerun the script). Its last evaluation there: L0 {l1['l0']:.1f}, CE loss recovered "
                   f"{l1['ce_loss_recovered']:.3f} ± {_f(l1['ce_loss_recovered_se'])}, EV "
                   f"{l1['explained_variance']:.3f}; "
                   + (f"the first evaluation meeting both was at {first['tokens']:,} tokens." if first else
                      "no evaluation so far met both (λ is still descending to its target over the first half)."))
    else:
        out.append("Not run (or failed): see the table.")
    out += ["", "**How do the defaults scale?**"]
    ref = meta.get("reference_300k", {})
    for name, r in (("topk", topk), ("l1", l1)):
        if not r or r["status"] != "ok":
            continue
        c = r["curve"]
        first = c[0]
        line = (f"{name}: from the first evaluation ({first['tokens']:,} tokens: L0 {_f(first.get('l0'), 1)}, CE "
                f"{_f(first.get('ce_loss_recovered'))}, EV {_f(first.get('explained_variance'))}) to the end "
                f"({r['tokens']:,} tokens: L0 {r['l0']:.1f}, CE {r['ce_loss_recovered']:.3f}, EV "
                f"{r['explained_variance']:.3f})")
        if name in ref:
            d = ref[name]
            line += (f"; the 300 k-token default run on the Factbook (`benchmarks/results/defaults.json`, "
                     f"{'k 32' if name == 'topk' else 'target L0 128'}) gave L0 {_f(d['l0'], 1)}, CE "
                     f"{_f(d['ce_loss_recovered'])}, EV {_f(d['explained_variance'])}")
        out.append("- " + line + ".")
    if l1 and l1["status"] == "ok":
        out.append("- l1 at target L0 32 and 300 k Factbook tokens gave EV 0.55, CE 0.45 (README, 'Why these "
                   "defaults').")
    out.append("Different corpora (Debian documentation here, Factbook prose there) shift both metrics, so compare "
               "the shapes, not the third decimal.")
    out += ["", "**Against published numbers**", "",
            "Published numbers we could verify (model cards and metrics files on the Hugging Face hub); other "
            "models, corpora, widths and budgets, so they place ours, they do not rank them:", "",
            "| published SAE | L0 | CE loss recovered | EV | source |", "|---|---|---|---|---|"]
    for p in PUBLISHED:
        out.append(f"| {p['what']} | {_f(p['l0'], 1)} | {_f(p['ce_loss_recovered'])} | "
                   f"{_f(p['explained_variance'])} | {p['source']} |")
    for name, r in (("topk", topk), ("l1", l1)):
        if r and r["status"] == "ok":
            out.append(f"| **ours: {name}** ({' '.join(CASES[name])}, 4,608 latents = 8×, {r['tokens']:,} tokens) | "
                       f"{r['l0']:.1f} | {r['ce_loss_recovered']:.3f} | {r['explained_variance']:.3f} | this run |")
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    by = {r["case"]: r for r in rows}
    c = meta["corpus"]
    lines = [f"# Long run: {meta['tokens']:,} training tokens, layer 6 of {meta['model']} ({meta['machine']})", "",
             meta["note"], "",
             f"Corpus: `{c['path']}`, {c.get('documents', 0):,} documents, {c.get('characters', 0):,} characters, "
             f"{c.get('tokens', 0):,} tokens (smollm2-135m), rebuilt by `python benchmarks/debian_corpus.py`.", "",
             "| case | overrides | L0 | explained_variance ± se | ce_loss_recovered ± se | ce_delta | kl_div | "
             "dead_fraction | final λ | steps | harvest s | train s | wall s |", "|" + "---|" * 13]
    for r in rows:
        if r["status"] not in ("ok", "interrupted"):
            lines.append(f"| {r['case']} | failed: {r.get('error', '')[-160:]!r} |")
            continue
        stopped = f" (stopped; its last periodic evaluation, at {r['tokens']:,} tokens)" \
            if r["status"] == "interrupted" else ""
        lines.append(f"| {r['case']}{stopped} | `{' '.join(CASES[r['case']])}` | {r['l0']:.1f} | "
                     f"{_f(r['explained_variance'])} ± {_f(r['explained_variance_se'])} | "
                     f"{_f(r['ce_loss_recovered'])} ± {_f(r['ce_loss_recovered_se'])} | {_f(r['ce_delta'])} | "
                     f"{_f(r['kl_div'])} | {_f(r['dead_fraction'])} | "
                     f"{_f(r['final_coefficient'], 4) if r['case'] != 'topk' else '—'} | {r['steps']} | "
                     f"{_f(r['harvest_seconds'], 0)} | {_f(r['train_seconds'], 0)} | {_f(r['wall_seconds'], 0)} |")
    for r in rows:  # a resumed run's record times only the process that finished it
        if r.get("resumed_from"):
            lines += ["", f"{r['case']} was resumed from its step-{r['resumed_from']:,} checkpoint: its train s and "
                      "wall s are of the process that finished it; the steps before ran in an earlier process."]
    lines += ["", "![L0 and CE loss recovered against training tokens](long_run.png)", "", "## Curves", ""]
    for r in rows:
        if r["status"] not in ("ok", "interrupted"):
            continue
        lines += [f"### {r['case']}", "", "| tokens | L0 | ce_loss_recovered ± se | explained_variance |",
                  "|---|---|---|---|"]
        for p in r["curve"]:
            lines.append(f"| {p['tokens']:,}{' (final)' if p.get('final') else ''} | {_f(p.get('l0'), 1)} | "
                         f"{_f(p.get('ce_loss_recovered'))} ± {_f(p.get('ce_loss_recovered_se'))} | "
                         f"{_f(p.get('explained_variance'))} |")
        lines.append("")
    lines += answers(by, meta)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=10_000_000, help="training tokens per run")
    ap.add_argument("--eval-every", type=int, default=None,
                    help="steps between periodic evaluations (default: about 20 per run)")
    ap.add_argument("--only", nargs="*", choices=list(CASES), default=list(DEFAULT_CASES))
    ap.add_argument("--corpus", default=str(debian_corpus.default_out()))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--runs", default=str(REPO / "outputs" / "benchmarks" / "long_run"))
    ap.add_argument("--poll", type=float, default=60.0, help="seconds between progress lines")
    ap.add_argument("--curve-contexts", type=int, default=128, help=(
        "held-out contexts each periodic CE-recovered evaluation scores (saefw's default is 8; 128 = the final "
        "evaluation's contexts, so every point of a curve is measured on the same text)"))
    ap.add_argument("--case-eval-every", nargs="*", default=[], metavar="CASE=STEPS", help=(
        "steps between periodic evaluations for some cases (e.g. l1=1953: fewer points, a shorter run)"))
    ap.add_argument("--report", action="store_true", help=(
        "run nothing: write the results from the finished (or interrupted) runs already in --runs"))
    ap.add_argument("extra", nargs="*", help="overrides passed to every run")
    args = ap.parse_args()
    steps = args.tokens // BATCH
    eval_every = args.eval_every or max(1, steps // 20)
    per_case = {}
    for item in args.case_eval_every:
        case, _, n = item.partition("=")
        if case not in CASES or not n.isdigit() or int(n) < 1:
            ap.error(f"--case-eval-every {item!r}: want CASE=STEPS with CASE one of {', '.join(CASES)}")
        per_case[case] = int(n)
    corpus = Path(args.corpus).expanduser()
    stats = debian_corpus.ensure(corpus, min_tokens=args.tokens)
    print(f"corpus {corpus}: {stats['documents']:,} documents, {stats['tokens']:,} tokens; {steps:,} steps per run, "
          f"an evaluation every {eval_every} steps", flush=True)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = [run_case(case, corpus, args.tokens, per_case.get(case, eval_every), runs, args.extra, args.poll,
                     args.curve_contexts, args.report) for case in args.only]
    meta = {"model": "SmolLM2-135M-Instruct", "machine": f"{os.cpu_count()}-core CPU, fp32 model, bfloat16 store",
            "tokens": args.tokens, "eval_every_steps": {c: per_case.get(c, eval_every) for c in args.only},
            "batch_size": BATCH,
            "curve_contexts": args.curve_contexts,
            "corpus": {"path": str(corpus), **{k: stats.get(k) for k in ("documents", "characters", "tokens")}},
            "reference_300k": reference_rows(), "extra_overrides": args.extra, "published": PUBLISHED,
            "script_wall_seconds": round(time.time() - t0, 1),
            "note": "Each case: one `python -m saefw <overrides> layer=6 source.corpus=<corpus> total_tokens=<N> "
                    "train.eval_every_steps=<E> evaluators.loss_recovered.contexts_during_training=<C> "
                    "source.store_dtype=bfloat16` run (bfloat16 store: half the disk of float32; training reads it "
                    "as float32), every other setting at its default (8× expansion, batch 1024, lr 1e-3, 128 "
                    "held-out contexts of 127 tokens from the 5 % of documents held out by hash). Every periodic "
                    f"evaluation scores CE loss recovered on {args.curve_contexts} of those contexts (saefw's "
                    "default during training is 8, too few for a curve). Periodic evaluations score the SAE as "
                    "it is at that step (mid-schedule: lr warm, λ still moving); the last point of each curve is "
                    "the final evaluation. harvest s / train s / "
                    "wall s from metrics.json (wall: the whole process); the first case pays the harvest, the "
                    "next reads the shared store."}
    (out / "long_run.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "long_run.md").write_text(markdown(rows, meta))
    plot(rows, out / "long_run.png", args.tokens)
    print(f"wrote {out / 'long_run.json'}, {out / 'long_run.md'}, {out / 'long_run.png'}", flush=True)
    if any(r["status"] != "ok" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
