"""``python -m saefw.explain run=<dir> explainer=<name> features=...``: explain features with an LLM and score the
explanations.

For each feature, from the run's feature store (``python -m saefw.features`` first): the explainer (a plugin of
the ``explainer`` family: ``local`` or ``openai``) reads its strongest contexts with the active tokens marked and
writes a one-sentence explanation; the scorers (:mod:`saefw.interp.scorers`: detection, fuzzing, simulation) then
ask the same LLM questions about held-out windows whose answers are known. Results go to ``<run>/explanations/``
(:mod:`saefw.interp.results`), the run's dashboard (an "Explanation" panel and index columns) and W&B (a table).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig, OmegaConf

from saefw.app.device import resolve_device
from saefw.app.wandb_settings import WandbSettings
from saefw.errors import SaefwError
from saefw.features import feature_store as store
from saefw.features.dashboard import decode_tokens
from saefw.interp import results as res
from saefw.interp.examples import random_windows, split_examples, store_examples
from saefw.interp.panel import write_explanations_panel
from saefw.interp.parsing import parse_explanation
from saefw.interp.prompts import explanation_messages
from saefw.interp.scorers import make_scorers
from saefw.interp.wandb_log import log_explanations
from saefw.lm.embedded import resolve_model
from saefw.registry import build

log = logging.getLogger("saefw.explain")


@dataclass
class ExplainConfig:
    run: str = MISSING  # a run directory with a feature store (python -m saefw.features run=<dir>)
    explainer: Any = None  # the explainer plugin (its config group): local | openai
    features: Any = 10  # a list of feature indices, or a number of live features drawn at random (seeded)
    scorers: list[str] = field(default_factory=lambda: ["detection", "fuzzing", "simulation"])
    n_explain: int = 10  # strongest contexts shown to the explainer ...
    n_explain_quantile: int = 4  # ... and quantile samples (one per activation range, from the highest)
    n_positive: int = 10  # held-out firing windows (detection, and twice each in fuzzing)
    n_negative: int = 10  # windows where the feature never fires (detection)
    n_sim_positive: int = 3  # held-out firing windows simulated ...
    n_sim_random: int = 2  # ... and random windows
    batch_items: int = 5  # excerpts per detection / fuzzing prompt
    highlight: float = 0.3  # a token is marked active at >= this x the max activation of the shown contexts
    random_contexts: int = 32  # contexts of the feature store the random windows are drawn from
    explanation_tokens: int = 80  # answer budget of the explanation
    chunk_features: int = 8  # features explained and scored between two saves
    seed: int = 0
    device: str = "auto"
    dashboard: bool = True  # add the explanation panel to the run's dashboard
    wandb: WandbSettings = field(default_factory=WandbSettings)


def register_schema() -> None:
    ConfigStore.instance().store(name="saefw_explain_schema", node=ExplainConfig)


def check_settings(cfg) -> None:
    for key in ("n_explain", "batch_items", "random_contexts", "explanation_tokens", "chunk_features"):
        if cfg[key] < 1:
            raise SaefwError(f"{key}={cfg[key]} must be at least 1")
    for key in ("n_explain_quantile", "n_positive", "n_negative", "n_sim_positive", "n_sim_random"):
        if cfg[key] < 0:
            raise SaefwError(f"{key}={cfg[key]} must be at least 0")
    if not 0 < cfg.highlight <= 1:
        raise SaefwError(f"highlight={cfg.highlight} must be in (0, 1]")
    scorers = list(cfg.scorers) if isinstance(cfg.scorers, (list, tuple, ListConfig)) else None
    if scorers is None:
        raise SaefwError(f"scorers={cfg.scorers!r} must be a list, e.g. scorers=[detection,fuzzing]")


def pick_features(spec, data, seed: int, need: int) -> list[int]:
    """The features to explain: a list (each must have fired in the scan), or a number of features drawn at
    random (seeded) among the live ones (not dense) with at least ``need`` top contexts."""
    from saefw.features.steering import check_features

    filled = (data.top["context"] >= 0).sum(1)
    if isinstance(spec, (list, tuple, ListConfig)):
        feats = check_features(list(spec), data.d_sae)
        for f in feats:
            if int(filled[f]) == 0:
                raise SaefwError(f"feature {f} never fired in the scanned text (it is dead): nothing to explain")
        return feats
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise SaefwError(f"features={spec!r} must be a list of feature indices or a number of features (>= 1)")
    dense = set(data.dense)
    eligible = [f for f in range(data.d_sae) if int(filled[f]) >= need and f not in dense]
    if not eligible:
        raise SaefwError(f"no live feature has {need} top contexts in the feature store: lower n_explain or scan "
                         f"more text with saefw.features")
    return sorted(random.Random(seed).sample(eligible, min(spec, len(eligible))))


@torch.no_grad()
def random_activations(run_dir: Path, data, feats: list[int], n_contexts: int, seed: int, device: str):
    """The activations [n, T, len(feats)] of ``feats`` on ``n_contexts`` contexts drawn from the store (BOS
    column 0), recomputed with the run's SAE and model; and the store rows drawn."""
    from saefw.features.feature_store import sae_digest
    from saefw.io.saved import load_sae
    from saefw.lm.model import LanguageModel

    meta = data.meta["sae"]
    sae = load_sae(run_dir, device=device)
    if sae_digest(sae) != meta["digest"]:
        raise SaefwError(f"the feature store of {run_dir} was computed for other SAE weights: rerun "
                         f"python -m saefw.features run={run_dir}")
    lm = LanguageModel(meta["model"], int(meta["layer"]), meta["site"], device=device)
    rows = sorted(random.Random(seed).sample(range(len(data.tokens)), min(n_contexts, len(data.tokens))))
    idx = torch.tensor(feats, dtype=torch.long, device=device)
    parts = []
    for start in range(0, len(rows), 8):
        toks = data.tokens[rows[start:start + 8]].long()
        f = sae.encode(lm.activations(toks).to(device, torch.float32))[..., idx].float().cpu()
        f[:, 0] = 0  # BOS is never scored
        parts.append(f)
    return torch.cat(parts), rows


def explain_chunk(cfg, chunk: list[int], feats: list[int], data, token_text, randoms, chat, scorers
                  ) -> tuple[list[dict], dict[int, list[dict]]]:
    """Explain the features of ``chunk`` and score each explanation: (their result records, their transcripts).
    ``randoms``: (latent activations of the random contexts [n, T, len(feats)], their rows) or (None, [])."""
    f_random, rows = randoms
    window = data.meta["window"]
    sets, thresholds = {}, {}
    for fid in chunk:
        top, quantile = store_examples(data, fid, token_text)
        quiet, anywhere = [], []
        if f_random is not None:
            col = feats.index(fid)
            quiet, anywhere = random_windows(f_random[..., col], data.tokens[rows], rows, window["before"],
                                             window["after"], token_text, random.Random(cfg.seed * 7919 + fid),
                                             cfg.n_negative, cfg.n_sim_random)
        sets[fid] = split_examples(top, quantile, quiet, anywhere, cfg.n_explain, cfg.n_positive,
                                   cfg.n_negative, cfg.n_sim_positive, cfg.n_sim_random,
                                   cfg.n_explain_quantile)
        thresholds[fid] = cfg.highlight * max(e.max_act for e in sets[fid].explain)
    asked = [(explanation_messages(sets[f].explain, thresholds[f]), cfg.explanation_tokens) for f in chunk]
    answers = chat.complete_many(asked, desc=f"explaining {len(chunk)} features")
    explanations = {f: parse_explanation(a.text) for f, a in zip(chunk, answers)}
    transcripts = {f: [{"task": "explanation", "messages": m, "answer": a.text}]
                   for f, (m, _), a in zip(chunk, asked, answers)}
    jobs = [(f, s, s.tasks(sets[f], explanations[f], thresholds[f], random.Random(cfg.seed * 104729 + f)))
            for f in chunk for s in scorers]
    flat = [(t.messages, t.max_tokens) for _, _, tasks in jobs for t in tasks]
    replies = iter(chat.complete_many(flat, desc=f"scoring {len(chunk)} explanations"))
    scores: dict[int, dict] = {f: {} for f in chunk}
    for f, scorer, tasks in jobs:
        texts = [next(replies).text for _ in tasks]
        scores[f][scorer.name] = scorer.score(tasks, texts) if tasks else None
        transcripts[f] += [{"task": scorer.name, "messages": t.messages, "answer": a, "truth": t.truth,
                            "items": t.items} for t, a in zip(tasks, texts)]
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    records = [{"feature": f, "explanation": explanations[f], "answer": a.text, "explainer": chat.describe(),
                "threshold": thresholds[f], "examples": sets[f].refs(),
                "scores": {k: v for k, v in scores[f].items() if v is not None}, "updated": now}
               for f, a in zip(chunk, answers)]
    return records, transcripts


def explain(cfg, output_dir: Path | None = None) -> dict:
    """The command (see the module docstring)."""
    check_settings(cfg)
    wandb = WandbSettings(**OmegaConf.to_container(cfg.wandb, resolve=True))
    wandb.check_mode()
    run_dir = Path(cfg.run).expanduser()
    if not run_dir.is_dir():
        raise SaefwError(f"run={cfg.run!r} is not a directory")
    data = store.load(run_dir)
    scorers = make_scorers(list(cfg.scorers), cfg.batch_items)
    feats = pick_features(OmegaConf.to_object(cfg.features) if isinstance(cfg.features, ListConfig) else cfg.features,
                          data, cfg.seed, cfg.n_explain + 1)
    chat = build("explainer", cfg.explainer)  # a missing key fails here, before anything is loaded
    chat.check()  # an unreachable endpoint fails here
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(data.meta["sae"]["model"]), local_files_only=True)
    token_text = decode_tokens(tokenizer)
    need_random = any(s.name in ("detection", "simulation") for s in scorers) and (cfg.n_negative or cfg.n_sim_random)
    device = resolve_device(cfg.device)
    f_random, rows = (random_activations(run_dir, data, feats, cfg.random_contexts, cfg.seed, device)
                      if need_random else (None, []))
    results = res.load_results(run_dir)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for start in range(0, len(feats), cfg.chunk_features):
        chunk = feats[start:start + cfg.chunk_features]
        records, transcripts = explain_chunk(cfg, chunk, feats, data, token_text, (f_random, rows), chat, scorers)
        res.merge(results, records)
        for f in chunk:
            res.write_transcript(run_dir, f, transcripts[f])
        res.write_results(run_dir, results)  # after every chunk: an interruption loses at most one chunk
    settings = {k: cfg[k] for k in ("scorers", "n_explain", "n_explain_quantile", "n_positive", "n_negative",
                                    "n_sim_positive", "n_sim_random", "batch_items", "highlight", "random_contexts", "seed")}
    settings = OmegaConf.to_container(OmegaConf.create(settings))
    usage = chat.usage.as_dict()
    results["invocations"].append({"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "explainer": chat.describe(), "settings": settings, "features": feats,
                                   "usage": usage})
    json_path, csv_path = res.write_results(run_dir, results)
    page = None
    if cfg.dashboard and (run_dir / "dashboard" / "index.html").is_file():
        page = write_explanations_panel(run_dir / "dashboard", results)
    wandb_dir = log_explanations(results, feats, res.folder(run_dir), wandb, usage, chat.describe())
    summary = {"features": feats, "json": str(json_path), "csv": str(csv_path),
               "dashboard": None if page is None else str(page), "wandb": None if wandb_dir is None else str(wandb_dir),
               "usage": usage}
    print_summary(summary, results, chat.describe())
    return summary


def print_summary(summary: dict, results: dict, explainer: dict) -> None:
    from saefw.interp.results import flat_row

    def f(x):
        return "  –  " if x is None else f"{x:5.2f}"

    lines = ["", f"saefw explain ({explainer['name']}: {explainer['model']})", "-" * 40,
             "feature  det.acc det.F1 fuzz.acc fuzz.F1  sim.r  explanation"]
    for fid in summary["features"]:
        r = flat_row(results["features"][str(fid)])
        lines.append(f"#{fid:<7} {f(r['detection_accuracy'])}  {f(r['detection_f1'])}  {f(r['fuzzing_accuracy'])}   "
                     f"{f(r['fuzzing_f1'])}  {f(r['simulation_correlation'])}  {r['explanation'] or '(none)'}")
    u = summary["usage"]
    cost = "" if u["cost_usd"] is None else f", ${u['cost_usd']:.4f}"
    lines += ["", f"explainer usage: {u['requests']} requests, {u['prompt_tokens']:,} prompt + "
                  f"{u['completion_tokens']:,} completion tokens, {u['seconds']:.1f} s{cost}",
              f"results: {summary['json']}  {summary['csv']}"]
    if summary["dashboard"]:
        lines.append(f"dashboard: {summary['dashboard']}")
    if summary["wandb"]:
        lines.append(f"W&B: {summary['wandb']}")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> None:
    from saefw.app.cli import command

    register_schema()
    command("explain", explain, argv)
