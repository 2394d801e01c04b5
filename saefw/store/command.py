"""``python -m saefw.store`` — list, harvest and delete activation stores.

    python -m saefw.store list
    python -m saefw.store harvest layers=[6,25] sites=[resid_post,mlp_out] total_tokens=300000
    python -m saefw.store delete <store folder name or path> ...   (or: delete all)

``harvest`` fills the stores of every (layer, site) pair with ONE pass of the model per batch, using the same
source options as training (``source.corpus=...``, ``model=...``), so a later sweep over those layers or sites
reads them all and harvests nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

from saefw.app.run_spec import RunSpec
from saefw.errors import SaefwError


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def list_stores(root: Path | None = None) -> list[dict]:
    """One row per store: folder, key fields, tokens, size on disk."""
    from saefw.store.activation_store import ActivationStore, StoreKey, iter_stores

    rows = []
    for folder, raw in iter_stores(root):
        if raw is None:
            rows.append({"store": folder.name, "status": "unreadable manifest"})
            continue
        key = StoreKey(**raw["key"])
        size = ActivationStore(folder.parent, key).size_bytes()
        tokens = sum(s["n_tokens"] for s in raw["shards"])
        rows.append({"store": folder.name, "model": key.model, "layer": key.layer, "site": key.site,
                     "split": key.split, "corpus": key.corpus, "dtype": key.dtype, "tokens": tokens,
                     "complete": raw["exhausted"], "size": _fmt_bytes(size),
                     "bytes_per_million_tokens": round(size / tokens * 1e6) if tokens else None})
    return rows


def _print_rows(rows: list[dict], root: Path) -> None:
    print(f"activation stores in {root}")
    if not rows:
        print("  (none)")
    for r in rows:
        if "model" not in r:
            print(f"  {r['store']}: {r['status']}")
            continue
        print(f"  {r['store']}\n      {r['model']} layer {r['layer']} {r['site']} · {r['split']} · {r['corpus']} · "
              f"{r['dtype']} · {r['tokens']:,} tokens{' (whole split)' if r['complete'] else ''} · {r['size']}")


def harvest_points(source_cfg: dict, points: list[tuple[int, str]], train_tokens: int) -> list:
    """Fill the train and held-out stores of every (layer, site) in ``points`` — one model pass for all of them
    per split — with the options of the HF source config ``source_cfg``. Returns the two harvest reports."""
    from saefw.registry import build, discover
    from saefw.store.harvest import fill_stores

    discover()
    deepest = max(points)
    source = build("source", {**source_cfg, "layer": deepest[0], "site": deepest[1]},
                   spec=RunSpec(seed=0, train_tokens=train_tokens))
    if not hasattr(source, "stores"):
        raise SaefwError(f"source={source_cfg.get('name')} has no activation store")
    source.prepare_keys()
    c = source.cfg
    reports = []
    for split, heldout, n in (("train", False, train_tokens),
                              ("heldout", True, c.eval_contexts * (c.context_size - 1))):
        reports.append(fill_stores(source.lm, source.stores(split, points), source.documents(heldout), n,
                                   c.shard_contexts, c.forward_batch_size, desc=f"harvesting {split} split"))
    return reports


def harvest(cfg) -> None:
    """``python -m saefw.store harvest``: every (layer, site) in ``cfg.layers`` × ``cfg.sites``."""
    from omegaconf import OmegaConf

    from saefw.store.activation_store import default_root

    points = [(layer, site) for layer in (list(cfg.layers) if cfg.layers else [cfg.layer])
              for site in (list(cfg.sites) if cfg.sites else [cfg.site])]
    src_cfg = OmegaConf.to_container(cfg.source, resolve=True)
    for split, report in zip(("train", "heldout"), harvest_points(src_cfg, points, cfg.total_tokens)):
        print(f"{split}: {report.tokens:,} tokens harvested at {len(points)} hook point(s) in {report.seconds:.0f} s"
              + (f", {report.repaired} corrupt shard(s) repaired" if report.repaired else ""))
    root = Path(cfg.source.store_dir).expanduser() if cfg.source.store_dir else default_root()
    _print_rows([r for r in list_stores(root) if r.get("model") == cfg.model], root)


def main(argv: list[str] | None = None) -> None:
    from saefw.store.activation_store import default_root, delete_store

    argv = sys.argv[1:] if argv is None else argv
    verb, rest = (argv[0], argv[1:]) if argv else ("list", [])
    try:
        if verb == "list":
            root = Path(rest[0]) if rest else default_root()
            _print_rows(list_stores(root), root)
        elif verb == "delete":
            if not rest:
                raise SaefwError("delete needs store folder names (see `python -m saefw.store list`) or `all`")
            root = default_root()
            targets = [p for p in root.glob("*") if p.is_dir()] if rest == ["all"] else \
                [Path(r) if Path(r).is_dir() else root / r for r in rest]
            for t in targets:
                if not (t / "manifest.json").is_file() and not t.is_dir():
                    raise SaefwError(f"no activation store {t} (see `python -m saefw.store list`)")
                delete_store(t)
                print(f"deleted {t}")
        elif verb == "harvest":
            from saefw.app.cli import command

            command("store", lambda cfg, _out: harvest(cfg), rest)
        else:
            raise SaefwError(f"unknown verb {verb!r}; verbs: list, harvest, delete")
    except SaefwError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
