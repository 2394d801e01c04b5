"""The trade-off table as CSV and as the text printed to the terminal."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from saefw.app.atomic import write_text
from saefw.sweeps.tradeoff import Tradeoff, number

_NO_ERROR = {"interrupted": "stopped before the end of training", "failed": "(no error recorded)"}
_PRINTED = ("l0", "ce_loss_recovered", "explained_variance", "ce_delta", "kl_div", "dead_fraction")


def _csv_cell(v):
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return v


def write_csv(table: Tradeoff, path: Path) -> Path:
    """All columns, one row per job (failed jobs included, with their error line)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(table.columns)
    for r in table.rows:
        w.writerow([_csv_cell(r.get(c)) for c in table.columns])
    return write_text(path, buf.getvalue())


def _fmt(row: dict, key: str) -> str:
    v = number(row, key)
    if v is None:
        return "nan" if isinstance(row.get(key), float) else ""
    text = f"{v:.1f}" if key == "l0" else f"{v:.4f}"
    se = number(row, f"{key}_se")
    return f"{text}±{se:.4f}" if se is not None else text


def format_table(table: Tradeoff) -> str:
    """A fixed-width summary: identity, swept overrides, headline metrics (± se), frontier (*) and Optuna marks;
    failed jobs' error lines follow the table."""
    varying = [k for k in table.override_keys if len({r.get(k) for r in table.rows}) > 1]
    metrics = [m for m in _PRINTED if any(m in r and r[m] is not None for r in table.rows)]
    header = ["job", "status", "group", *varying, *metrics, "frontier"]
    if table.optuna:
        header.append("optuna")
    body = []
    for r in table.rows:
        line = [r["job"], r["status"], r["group"], *[str(r.get(k) or "") for k in varying],
                *[_fmt(r, m) for m in metrics], "*" if r["frontier"] else ""]
        if table.optuna:
            line.append("best" if r["optuna_best"] else "")
        body.append(line)
    if len({r["sweep"] for r in table.rows}) > 1:
        header.insert(0, "sweep")
        for line, r in zip(body, table.rows):
            line.insert(0, r["sweep"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths), *(fmt.format(*b) for b in body)]
    failed = table.failed_rows()
    if failed:
        lines.append("")
        lines += [f"{r['status']} {r['sweep']}/{r['job']}: {r.get('error') or _NO_ERROR.get(r['status'], '')}"
                  for r in failed]
    for result, names in table.optuna:
        lines.append("")
        lines += result.describe(names)
    return "\n".join(lines)
