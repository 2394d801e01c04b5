"""The relations table: edges between features of SAEs at successive hook points, as CSV and JSON.

``relations.json`` (``format`` ``saefw.relations/1``)::

    {"format": ..., "settings": {...},
     "runs": [{"index", "folder", "label", "model", "layer", "site", "hook_name", "d_sae", "dashboard"}, ...],
     "pairs": [{"source_run", "target_run", "sources" (features ablated), "n_tokens", "n_contexts", "rows"}],
     "edges": [{"kind", "source_run", "source", "target_run", "target", "rank", "value", "fraction", "cosine",
                "target_fired", "source_density"}, ...]}

``relations.csv`` holds the same edges, one per line, with the runs' hook names beside their indices. Edge kinds:

* ``cosine`` — relations by weights: for every feature of the source run, its ``rank``-th best match in the
  target run; ``value`` = ``cosine`` = cos(d_source, d_target) of the decoder directions.
* ``effect`` — relations by effect (:mod:`saefw.relations.ablation`): for each ablated source feature, its
  strongest targets by |effect|; ``value`` = mean drop of the target where it fired (positive: the source
  excites the target), ``fraction`` = share of the target's activation removed, ``cosine`` of the pair,
  ``target_fired`` = clean firing tokens of the target.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from saefw.app.atomic import write_json, write_text
from saefw.errors import SaefwError
from saefw.relations.ablation import AblationEffects, SourceFiring
from saefw.relations.decoder_cosine import CosineMatches, cosine_matrix

FORMAT = "saefw.relations/1"
CSV_COLUMNS = ("kind", "source_run", "source_hook", "source", "target_run", "target_hook", "target", "rank",
               "value", "fraction", "cosine", "target_fired", "source_density")


@dataclass
class RunInfo:
    """One SAE of the chain: where it reads, its size, and its dashboard's index.html (None if it has none)."""

    index: int
    folder: str
    label: str
    model: str
    layer: int
    site: str
    hook_name: str
    d_sae: int
    dashboard: str | None = None


def _r(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def cosine_edges(matches: CosineMatches, source_run: int, target_run: int) -> list[dict]:
    """Every source feature's best matches (rank 1 = the largest cosine)."""
    edges = []
    for i, (vals, idx) in enumerate(zip(matches.values.tolist(), matches.indices.tolist())):
        for rank, (v, j) in enumerate(zip(vals, idx), start=1):
            edges.append({"kind": "cosine", "source_run": source_run, "source": i, "target_run": target_run,
                          "target": int(j), "rank": rank, "value": _r(v), "fraction": None, "cosine": _r(v),
                          "target_fired": None, "source_density": None})
    return edges


def effect_edges(effects: AblationEffects, firing: SourceFiring, source_run: int, target_run: int, k: int,
                 up_dirs: torch.Tensor | None = None, down_dirs: torch.Tensor | None = None) -> list[dict]:
    """Each ablated feature's ``k`` strongest targets by |effect| (targets with no effect are left out);
    the decoder cosine of each pair is added when both SAEs' directions are given."""
    effect, fraction = effects.effect(), effects.fraction()
    k = min(k, effect.shape[1])
    cos = cosine_matrix(up_dirs[effects.sources], down_dirs) if up_dirs is not None and down_dirs is not None \
        else None
    density = firing.density
    edges = []
    for m, src in enumerate(effects.sources):
        strength, order = effect[m].abs().topk(k)
        rank = 0
        for s, j in zip(strength.tolist(), order.tolist()):
            if s <= 0:
                break
            rank += 1
            edges.append({"kind": "effect", "source_run": source_run, "source": src, "target_run": target_run,
                          "target": int(j), "rank": rank, "value": _r(effect[m, j].item()),
                          "fraction": _r(fraction[m, j].item()),
                          "cosine": None if cos is None else _r(cos[m, j].item()),
                          "target_fired": int(effects.target_fired[j]), "source_density": _r(density[src].item())})
    return edges


def relations_record(runs: list[RunInfo], pairs: list[dict], edges: list[dict], settings: dict) -> dict:
    return {"format": FORMAT, "settings": settings, "runs": [asdict(r) for r in runs], "pairs": pairs,
            "edges": edges}


def csv_text(record: dict) -> str:
    hooks = {r["index"]: r["hook_name"] for r in record["runs"]}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for e in record["edges"]:
        w.writerow({**{k: ("" if e.get(k) is None else e.get(k)) for k in CSV_COLUMNS if k in e},
                    "source_hook": hooks[e["source_run"]], "target_hook": hooks[e["target_run"]]})
    return buf.getvalue()


def write_relations(out_dir: Path, record: dict) -> tuple[Path, Path]:
    """Write ``relations.json`` and ``relations.csv`` into ``out_dir`` (atomically); returns their paths."""
    out_dir = Path(out_dir)
    csv_path = write_text(out_dir / "relations.csv", csv_text(record))
    json_path = write_json(out_dir / "relations.json", record, indent=1)
    return json_path, csv_path


def read_relations(path: Path) -> dict:
    """A relations.json (or the folder holding it), with a clear error when it is missing or not ours."""
    path = Path(path)
    if path.is_dir():
        path = path / "relations.json"
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise SaefwError(f"cannot read relations from {path}: {exc}") from None
    if record.get("format") != FORMAT:
        raise SaefwError(f"{path} is not a saefw relations file (format {record.get('format')!r})")
    return record


def strongest(record: dict, kind: str = "effect", n: int = 10) -> list[dict]:
    """The ``n`` edges of ``kind`` with the largest |value|."""
    return sorted((e for e in record["edges"] if e["kind"] == kind), key=lambda e: -abs(e["value"]))[:n]


def cosine_effect_note(record: dict) -> str:
    """How often a source's strongest effect target is also among its best decoder-cosine matches."""
    matches = {(e["source_run"], e["source"], e["target"]) for e in record["edges"] if e["kind"] == "cosine"}
    if not matches:
        return ""
    firsts = [e for e in record["edges"] if e["kind"] == "effect" and e["rank"] == 1]
    if not firsts:
        return ""
    hit = sum((e["source_run"], e["source"], e["target"]) in matches for e in firsts)
    k = record["settings"].get("cosine_k")
    return (f"{hit} of {len(firsts)} ablated features have their strongest effect on one of their {k} best "
            f"decoder-cosine matches")
