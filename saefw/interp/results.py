"""Explanations and scores saved in the run directory, ``<run>/explanations/`` (every file written atomically).

* ``explanations.json`` (``format`` ``saefw.explanations/1``)::

      {"format": ..., "run": <run dir>,
       "features": {"<fid>": {"feature", "explanation", "answer" (the explainer's raw reply), "explainer"
                              ({name, model, ...}), "threshold" (activation marking a token as active),
                              "examples" ({explain, positives, negatives, simulation}: [context, position, kind]),
                              "scores" ({"detection": {accuracy, precision, recall, f1, tp, fp, fn, tn, n,
                                        unparsed}, "fuzzing": {... the same}, "simulation": {correlation,
                                        constant, n_tokens, unparsed}}), "updated"}},
       "invocations": [{"started", "finished", "explainer", "settings", "features", "usage" ({requests,
                        prompt_tokens, completion_tokens, seconds, cost_usd})}]}

  A rerun replaces the features it explains and keeps the others.
* ``scores.csv`` — one row per feature: :data:`CSV_COLUMNS`.
* ``transcripts/<fid>.json`` — every prompt and answer of the feature's last explanation and scoring.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from saefw.app.atomic import write_json, write_text
from saefw.errors import SaefwError

FORMAT = "saefw.explanations/1"
FOLDER = "explanations"
CSV_COLUMNS = ("feature", "explanation", "detection_accuracy", "detection_f1", "fuzzing_accuracy", "fuzzing_f1",
               "simulation_correlation", "explainer", "model")


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


def load_results(run_dir: Path) -> dict:
    """The saved results of ``run_dir`` (an empty record when there are none yet)."""
    path = folder(run_dir) / "explanations.json"
    if not path.is_file():
        return {"format": FORMAT, "run": str(run_dir), "features": {}, "invocations": []}
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SaefwError(f"{path} is corrupt ({exc}): move it away to start afresh") from None
    if results.get("format") != FORMAT:
        raise SaefwError(f"{path} is not a saefw explanations file (format {results.get('format')!r})")
    return results


def merge(results: dict, records: list[dict]) -> dict:
    """``results`` with ``records`` (one per feature) replacing the features they name."""
    for rec in records:
        results["features"][str(rec["feature"])] = rec
    results["features"] = dict(sorted(results["features"].items(), key=lambda kv: int(kv[0])))
    return results


def flat_row(rec: dict) -> dict:
    """A feature's CSV row (empty cells for scorers that did not run)."""
    s = rec.get("scores", {})
    return {"feature": rec["feature"], "explanation": rec["explanation"],
            "detection_accuracy": s.get("detection", {}).get("accuracy"),
            "detection_f1": s.get("detection", {}).get("f1"),
            "fuzzing_accuracy": s.get("fuzzing", {}).get("accuracy"), "fuzzing_f1": s.get("fuzzing", {}).get("f1"),
            "simulation_correlation": s.get("simulation", {}).get("correlation"),
            "explainer": rec["explainer"].get("name"), "model": rec["explainer"].get("model")}


def csv_text(results: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for rec in results["features"].values():
        w.writerow({k: ("" if v is None else v) for k, v in flat_row(rec).items()})
    return buf.getvalue()


def write_results(run_dir: Path, results: dict) -> tuple[Path, Path]:
    """Write ``explanations.json`` and ``scores.csv``; returns their paths."""
    out = folder(run_dir)
    json_path = write_json(out / "explanations.json", results, indent=1)
    csv_path = write_text(out / "scores.csv", csv_text(results))
    return json_path, csv_path


def write_transcript(run_dir: Path, fid: int, transcript: list[dict]) -> Path:
    return write_json(folder(run_dir) / "transcripts" / f"{fid}.json", transcript, indent=1)
