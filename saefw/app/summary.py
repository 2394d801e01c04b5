"""The summary a command prints at its end: the run's headline metrics (± standard errors) and its wall time."""
from __future__ import annotations

from pathlib import Path

SUMMARY_KEYS = ("l0", "explained_variance", "ce_loss_recovered", "ce_delta", "kl_div", "dead_fraction",
                "shrinkage", "mmcs")


def _fmt(record: dict, key: str) -> str:
    se = record.get(f"{key}_se")
    return f"{record[key]:.4f}" + (f" ± {se:.4f}" if se is not None else "")


WALL_PHASES = ("startup", "harvest", "train", "evaluate")  # the phases the summary's wall time line names


def wall_time(record: dict) -> str:
    """``161 s (process; startup 9 s, harvest 0 s, train 92 s, evaluate 60 s)``: the record's wall_seconds, what
    they count from (see :class:`WallClock`) and the main phases of its ``timings``."""
    parts = [f"{k} {record['timings'][k]:.0f} s" for k in WALL_PHASES if k in record.get("timings", {})]
    head = "; ".join(x for x in (record.get("wall_from"), ", ".join(parts)) if x)
    return f"{record['wall_seconds']:.0f} s" + (f" ({head})" if head else "")


def print_summary(record: dict, run_dir: Path, title: str = "saefw run summary") -> None:
    rows = [("arch", record.get("arch")), ("penalty", record.get("penalty"))]
    if record.get("layers"):
        rows.append(("layers / site", f"{', '.join(map(str, record['layers']))} / {record['site']}"))
    elif record.get("input_site"):
        rows.append(("layer / sites", f"{record['layer']} / {record['input_site']} → {record['site']}"))
    elif record.get("layer") is not None:
        rows.append(("layer / site", f"{record['layer']} / {record['site']}"))
    rows += [(label, f"{record[k]:,}") for k, label in (("tokens", "tokens"), ("eval_tokens", "held-out tokens"))
             if k in record]
    rows += [(k, _fmt(record, k)) for k in SUMMARY_KEYS if k in record]
    if "activation_store" in record:
        rows.append(("activation store", record["activation_store"]))
    rows += [("wall time", wall_time(record)), ("run dir", str(run_dir))]
    rows = [(k, v) for k, v in rows if v is not None]
    width = max(len(k) for k, _ in rows)
    print("\n".join(["", title, "-" * 40] + [f"{k:<{width}}  {v}" for k, v in rows]), flush=True)
