"""``python -m saefw.features run=<dir>``: scan text with a trained SAE, store what each feature does in
``<dir>/features/`` (see :mod:`saefw.features.feature_store`) and write the HTML dashboard ``<dir>/dashboard/``.

A rerun with the same settings (and the same SAE weights) reuses the store and only rewrites the dashboard.

A transcoder (``arch=transcoder``/``skip_transcoder``) is scanned at the site it reads (its input, e.g. mlp_in): its
latents are computed from that site's activations; its logit lens reads the decoder rows W_dec [d_sae, d_out] in the
site it writes (mlp_out, which adds into the residual stream); the dashboard names both
(:mod:`saefw.features.sites`). Crosscoders are refused with a clear error.

The scan reads the hook activations of the contexts that a float32 activation store of the same text already
holds (:func:`activation_store`; training harvested the held-out split's first ``eval_contexts`` and the train
split's first ``total_tokens``) instead of running the model for them; the model runs for the rest.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from saefw.app.device import resolve_device
from saefw.errors import SaefwError
from saefw.features.scan import StoredActivations
from saefw.features.sites import DictionaryPoints, dictionary_points
from saefw.lm.corpus import SPLITS, Corpus, documents_of_split
from saefw.lm.model import model_digest
from saefw.store.activation_store import ActivationStore, StoreKey, default_root

log = logging.getLogger("saefw.features")


@dataclass
class DashboardConfig:
    contexts: int = 10  # top contexts shown per feature
    quantile_samples: int = 2  # samples shown per activation range
    chunk_size: int = 64  # features per data file


@dataclass
class FeaturesConfig:
    run: str = MISSING  # a run directory (or any saved SAE directory)
    corpus: str | None = None  # default: the corpus the SAE was trained on
    corpus_text_field: str = "text"
    split: str = "heldout"  # heldout | train | all (documents of the corpus)
    heldout_fraction: float = 0.05  # the hf source's eval_doc_fraction: the same held-out documents as evaluation
    context_size: int | None = None  # default: the SAE's training context size
    n_tokens: int = 100_000  # tokens scanned (BOS positions not counted); fewer if the split is smaller
    batch_contexts: int = 16
    top_n: int = 20  # top activating contexts kept per feature
    window_before: int = 24  # tokens kept before / after the max token of a context
    window_after: int = 8
    quantiles: int = 5  # equal-count activation ranges
    quantile_samples: int = 4  # samples kept per range
    quantile_pool: int = 64  # random firing tokens (with windows) the quantile samples are drawn from
    histogram_sample: int = 512  # random firing activations for quantile edges and the histogram
    histogram_bins: int = 30
    logit_lens_k: int = 10
    dense_threshold: float = 0.1  # dense: fires on more than this fraction of tokens
    seed: int = 0
    device: str = "auto"
    force: bool = False  # recompute even when the store matches the settings
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)


def register_schema() -> None:
    ConfigStore.instance().store(name="saefw_features_schema", node=FeaturesConfig)


def check_settings(cfg) -> None:
    if cfg.split not in SPLITS:
        raise SaefwError(f"split={cfg.split!r} is not a split; choices: {', '.join(SPLITS)}")
    if not 0 < cfg.heldout_fraction < 1:
        raise SaefwError(f"heldout_fraction={cfg.heldout_fraction} must be in (0, 1)")
    for key in ("n_tokens", "batch_contexts", "top_n", "quantiles", "quantile_samples", "quantile_pool",
                "histogram_sample", "histogram_bins", "logit_lens_k"):
        if cfg[key] < 1:
            raise SaefwError(f"{key}={cfg[key]} must be at least 1")
    if cfg.window_before < 0 or cfg.window_after < 0:
        raise SaefwError(f"window_before={cfg.window_before} and window_after={cfg.window_after} must be >= 0")
    if not 0 < cfg.dense_threshold <= 1:
        raise SaefwError(f"dense_threshold={cfg.dense_threshold} must be in (0, 1]")


def scan_settings(cfg, meta: dict, corpus: str, context_size: int, digest: str) -> dict:
    """Everything the stored scan depends on; a rerun with an equal dict reuses it."""
    return {"sae_digest": digest, "model": meta["model"], "layer": meta["layer"], "site": meta["site"],
            "corpus": corpus, "corpus_text_field": cfg.corpus_text_field, "split": cfg.split,
            "heldout_fraction": cfg.heldout_fraction, "context_size": context_size, "n_tokens": cfg.n_tokens,
            "top_n": cfg.top_n, "window_before": cfg.window_before, "window_after": cfg.window_after,
            "quantiles": cfg.quantiles, "quantile_samples": cfg.quantile_samples,
            "quantile_pool": cfg.quantile_pool, "histogram_sample": cfg.histogram_sample,
            "histogram_bins": cfg.histogram_bins, "seed": cfg.seed}


def store_root(run_dir: Path | None) -> Path:
    """Where the run's activation stores live: its ``source.store_dir`` (from the ``config.yaml`` training wrote),
    else the default root."""
    path = run_dir / "config.yaml" if run_dir is not None else None
    if path is not None and path.is_file():
        try:
            store_dir = OmegaConf.select(OmegaConf.load(path), "source.store_dir", default=None)
        except (OSError, yaml.YAMLError):
            store_dir = None
        if store_dir:
            return Path(str(store_dir)).expanduser()
    return default_root()


def activation_store(cfg, settings: dict, run_dir: Path | None = None) -> ActivationStore | None:
    """The float32 activation store of the scanned text, if one was harvested: its key built as
    :meth:`saefw.sources.hf.HFActivationSource.store_key` builds it, from the scan's own model, hook point,
    corpus, context size, split and held-out fraction (the fraction the hf source calls ``eval_doc_fraction``).
    Finding it costs the model's weight digest (memoised) and one read of the corpus. None for ``split=all``
    (no store holds it), when no store has the key, or when its manifest cannot be read (with a warning)."""
    if cfg.split == "all":
        return None
    try:
        corpus = Corpus(settings["corpus"], text_field=cfg.corpus_text_field)
        key = StoreKey(model=settings["model"], model_digest=model_digest(settings["model"]),
                       layer=int(settings["layer"]), site=settings["site"], corpus=settings["corpus"],
                       corpus_digest=corpus.fingerprint(), context_size=settings["context_size"], split=cfg.split,
                       heldout_fraction=cfg.heldout_fraction, dtype="float32")
        store = ActivationStore(store_root(run_dir), key)
        return store if store.manifest() is not None else None
    except SaefwError as exc:
        log.warning("not reading the activation store (%s): every scanned context runs the model", exc)
        return None


def scan_text(cfg, lm, sae, settings: dict, run_dir: Path | None = None) -> tuple:
    """Scan ``settings['corpus']`` and derive what the store keeps: (tokens, stats, top, quantiles, scan meta).
    The contexts a float32 activation store holds (:func:`activation_store`) are read from it, not run."""
    from saefw.features.firing import feature_statistics
    from saefw.features.quantiles import (
        histogram,
        quantile_edges,
        quantile_samples,
        sample_values,
    )
    from saefw.features.scan import ScanSettings, context_batches, scan

    corpus = Corpus(settings["corpus"], text_field=cfg.corpus_text_field)
    T = settings["context_size"]
    n_contexts = math.ceil(cfg.n_tokens / (T - 1))
    batches = context_batches(lm, documents_of_split(corpus, cfg.split, cfg.heldout_fraction), T, n_contexts,
                              cfg.batch_contexts)
    ss = ScanSettings(top_n=cfg.top_n, before=cfg.window_before, after=cfg.window_after, pool=cfg.quantile_pool,
                      sample=cfg.histogram_sample, seed=cfg.seed)
    store = activation_store(cfg, settings, run_dir)
    stored = StoredActivations(store, lm) if store is not None else None
    result = scan(lm, sae, batches, ss, n_contexts=n_contexts, device=resolve_device(cfg.device), activations=stored)
    if stored is not None:
        log.info("read %d of %d contexts from the activation store %s", stored.from_store, len(result.tokens),
                 store.path)
    if result.n_tokens == 0:
        raise SaefwError(f"corpus={settings['corpus']!r} split={cfg.split} has fewer tokens than one context of {T}")
    if len(result.tokens) < n_contexts:
        log.warning("the %s split of %s has only %d tokens (n_tokens=%d asked)", cfg.split, settings["corpus"],
                    result.n_tokens, cfg.n_tokens)
    stats = feature_statistics(result.fired, result.act_sum, result.max_act, result.n_tokens)
    values = sample_values(result.sample)
    counts, hist_edges = histogram(values, stats["max_act"], stats["fired"], cfg.histogram_bins)
    stats.update(hist_counts=counts, hist_edges=hist_edges, hist_sampled=(~torch.isnan(values)).sum(1))
    qs = quantile_samples(result.pool, quantile_edges(values, stats["max_act"], cfg.quantiles), cfg.quantile_samples)
    quant = {"edges": qs.edges, "value": qs.value, "context": qs.context, "position": qs.position, "acts": qs.acts}
    scan_meta = {"n_contexts": len(result.tokens), "n_tokens": result.n_tokens, "context_size": T,
                 "corpus": settings["corpus"], "split": cfg.split, "heldout_fraction": cfg.heldout_fraction,
                 "from_store": stored.from_store if stored is not None else 0}
    return result.tokens, stats, result.top.feature_major(), quant, scan_meta


def compute(cfg, run_dir: Path, lm, sae, meta: dict, settings: dict, lens_settings: dict, old,
            points: DictionaryPoints | None = None):
    """The feature data: the stored scan and logit lens of ``old`` where their settings match, new ones
    otherwise, with dead / dense lists for ``cfg.dense_threshold``. ``points``: where the SAE reads and writes
    (default: ``meta``'s one site); a transcoder's are recorded in the store's ``sae`` block (``hook_name``/``site``
    the input, ``hook_name_out``/``site_out`` the output its decoder rows, and so the logit lens, live in)."""
    from saefw.features.feature_store import FeatureData
    from saefw.features.firing import dead_and_dense
    from saefw.features.logit_lens import logit_lens, unembedding

    if old is not None and old.meta["settings"]["scan"] == settings:
        log.info("reusing the stored scan in %s", run_dir / "features")
        tokens, stats, top, quant, scan_meta = old.tokens, old.stats, old.top, old.quantiles, old.meta["scan"]
    else:
        tokens, stats, top, quant, scan_meta = scan_text(cfg, lm, sae, settings, run_dir)
    if old is not None and old.meta["settings"].get("logit_lens") == lens_settings:
        lens = old.logit_lens
    else:
        ll = logit_lens(unembedding(lm.model), sae.decoder_directions, cfg.logit_lens_k)
        lens = {k: getattr(ll, k) for k in ("promoted_ids", "promoted_values", "suppressed_ids", "suppressed_values")}
    dead, dense = dead_and_dense(stats["fired"], scan_meta["n_tokens"], cfg.dense_threshold)
    points = points or DictionaryPoints(int(meta["layer"]), meta["site"], meta["site"])
    sae_meta = {"folder": str(run_dir), "model": meta["model"], "layer": meta["layer"], "site": meta["site"],
                "hook_name": meta.get("hook_name") or lm.hook_name, "d_in": sae.d_in, "d_sae": sae.d_sae,
                "digest": settings["sae_digest"]}
    if points.is_pair:
        sae_meta.update(site_out=points.write_site, hook_name_out=points.write_hook, d_out=sae.d_out)
    new_meta = {"settings": {"scan": settings, "logit_lens": lens_settings},
                "sae": sae_meta,
                "scan": scan_meta,
                "window": {"before": cfg.window_before, "after": cfg.window_after, "max_index": cfg.window_before},
                "quantile_levels": [k / cfg.quantiles for k in range(cfg.quantiles + 1)],
                "dense_threshold": cfg.dense_threshold, "dead": dead, "dense": dense}
    return FeatureData(meta=new_meta, tokens=tokens, stats=stats, top=top, quantiles=quant, logit_lens=lens)


def features(cfg, output_dir: Path | None = None) -> dict:
    """The command: load the SAE and its model, compute or reuse the store, write the dashboard."""
    from saefw.features import feature_store as store
    from saefw.features.dashboard import decode_tokens, write_dashboard
    from saefw.io.saved import hooked_sae_metadata, load_sae
    from saefw.lm.model import LanguageModel

    check_settings(cfg)
    run_dir = Path(cfg.run).expanduser()
    meta = hooked_sae_metadata(run_dir, "run")
    corpus = cfg.corpus or meta.get("corpus")
    if corpus is None:
        raise SaefwError(f"{run_dir} does not name the corpus its SAE was trained on: pass corpus=<name>")
    context_size = cfg.context_size or meta.get("context_size")
    if context_size is None:
        context_size = 128
        log.warning("%s does not record its context size: using context_size=128", run_dir)
    if context_size < 2:
        raise SaefwError(f"context_size={context_size} must be at least 2 (BOS + one token)")
    device = resolve_device(cfg.device)
    sae = load_sae(run_dir, device=device)
    points = dictionary_points(run_dir, meta, sae, "saefw.features")
    digest = store.sae_digest(sae)
    settings = scan_settings(cfg, meta, corpus, context_size, digest)
    lens_settings = {"sae_digest": digest, "model": meta["model"], "k": cfg.logit_lens_k}
    folder = store.store_dir(run_dir)
    old_meta = None if cfg.force else store.read_meta(folder)
    reusable = old_meta is not None and (old_meta["settings"]["scan"] == settings
                                         or old_meta["settings"].get("logit_lens") == lens_settings)
    old = store.load(run_dir) if reusable else None
    fresh = old is None or old.meta["settings"] != {"scan": settings, "logit_lens": lens_settings}
    scan_reused = old is not None and old.meta["settings"]["scan"] == settings
    # the scan hooks the site the SAE reads (a transcoder's input: its latents are a function of it alone)
    lm = LanguageModel(meta["model"], points.layer, points.read_site, device=device)
    data = compute(cfg, run_dir, lm, sae, meta, settings, lens_settings, old, points)
    if fresh or old.meta["dense_threshold"] != cfg.dense_threshold:
        store.save(folder, data)
    hook = data.meta["sae"]["hook_name"]
    run_info = {"model": meta["model"], "hook_name": hook, "hooks": points.describe(hook), "corpus": corpus,
                "split": cfg.split, "folder": str(run_dir)}
    if points.is_pair:
        run_info["hook_name_out"] = points.write_hook
    page = write_dashboard(data, run_dir / "dashboard", decode_tokens(lm.tokenizer), run_info,
                           contexts=cfg.dashboard.contexts, samples=cfg.dashboard.quantile_samples,
                           chunk_size=cfg.dashboard.chunk_size)
    summary = {"store": str(folder), "dashboard": str(page), "reused": scan_reused, "d_sae": data.d_sae,
               "hooks": run_info["hooks"],
               "n_tokens": data.meta["scan"]["n_tokens"], "dead": len(data.dead), "dense": len(data.dense),
               "from_store": data.meta["scan"].get("from_store", 0), "n_contexts": data.meta["scan"]["n_contexts"]}
    print_summary(summary, data)
    return summary


def print_summary(summary: dict, data) -> None:
    live = summary["d_sae"] - summary["dead"] - len(set(data.dense) - set(data.dead))
    read = (f" ({summary['from_store']:,} of {summary['n_contexts']:,} contexts read from the activation store)"
            if summary["from_store"] and not summary["reused"] else "")
    rows = [("tokens scanned", f"{summary['n_tokens']:,}" + (" (stored scan reused)" if summary["reused"] else read)),
            ("hook point", summary["hooks"]),
            ("features", f"{summary['d_sae']:,}: {live:,} live, {summary['dense']:,} dense "
                         f"(> {data.meta['dense_threshold']:.0%} of tokens), {summary['dead']:,} dead"),
            ("feature store", summary["store"]), ("dashboard", summary["dashboard"])]
    width = max(len(k) for k, _ in rows)
    print("\n".join(["", "saefw features", "-" * 40] + [f"{k:<{width}}  {v}" for k, v in rows]), flush=True)


def main(argv: list[str] | None = None) -> None:
    from saefw.app.cli import command

    register_schema()
    command("features", features, argv)
