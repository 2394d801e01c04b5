"""When does the activation store beat harvesting live? Measures, on the default model at one hook point:

* live: training batches harvested on the fly (``source.store=false``: the model's forward for every batch);
* store, float32 and bfloat16: the same batches read back from the store (shards read, checksummed, converted to
  float32, shuffled), the store already filled;
* the store's bytes per token in each dtype.

From those, for a sweep of J runs that each read T tokens of the same hook point: the store costs one harvest
plus J reads, live costs J harvests, so the store wins from J = 2 on whenever reading is faster than harvesting
(and a single run, J = 1, pays the store's write for nothing unless it is rerun, resumed or evaluated again).

    python benchmarks/store_vs_live.py [--layer 6] [--tokens 300000] [--live-tokens 32768]

Writes benchmarks/results/store_vs_live.{json,md}."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from saefw.registry import build, discover
from saefw.sources.base import RunSpec
from saefw.store.activation_store import ActivationStore

REPO = Path(__file__).resolve().parents[1]


def source(layer: int, tokens: int, **over):
    discover()
    src = build("source", {"name": "hf", "model": "smollm2-135m", "layer": layer, "site": "resid_post", **over},
                spec=RunSpec(seed=0, train_tokens=tokens))
    src.setup()
    return src


def batches_per_second(src, batch_size: int = 4096) -> tuple[float, int]:
    """(tokens per second, tokens) of one pass over the source's training batches."""
    t0, n = time.perf_counter(), 0
    for b in src.train_batches(batch_size):
        n += len(b)
    return n / (time.perf_counter() - t0), n


def bfloat16_copy(src, root: Path) -> None:
    """The source's float32 stores (train and held-out) rewritten as bfloat16 stores under ``root``."""
    for split in ("train", "heldout"):
        old = src.stores(split)[0]
        new = ActivationStore(root, dataclasses.replace(old.key, dtype="bfloat16"))
        m = old.manifest()
        with new.lock:
            for i in range(len(m.shards)):
                new.write(i, old.read(i, m), old.read_tokens(i, m))
            if m.exhausted:
                new.mark_exhausted()


def live_harvest_counter(src) -> list[int]:
    """A one-element list counting the tokens ``src`` harvests from now on (its ``_harvest`` wrapped)."""
    count = [0]
    harvest = src._harvest

    def counted(contexts):
        rows = harvest(contexts)
        count[0] += len(rows)
        return rows

    src._harvest = counted
    return count


def store_bytes(store: ActivationStore) -> int:
    return sum(f.stat().st_size for f in store.path.glob("shard-*.npy") if not f.name.endswith(".tokens.npy"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=299_008)  # the default run: 292 steps of 1,024
    ap.add_argument("--live-tokens", type=int, default=32_768, help=(
        "the live run's budget (it harvests at least one shuffle buffer, source.buffer_tokens, before serving)"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    rows = {}
    fp32 = source(args.layer, args.tokens)  # fills the default store once if it is not there
    tokens_stored = fp32.stores("train")[0].manifest().shards
    n_stored = sum(s.n_tokens for s in tokens_stored)
    rows["store_float32"] = dict(zip(("tokens_per_s", "tokens"), batches_per_second(fp32)))
    rows["store_float32"]["bytes_per_token"] = store_bytes(fp32.stores("train")[0]) / n_stored
    with tempfile.TemporaryDirectory(prefix="saefw-bf16-") as tmp:
        bfloat16_copy(fp32, Path(tmp))
        bf16 = source(args.layer, args.tokens, store_dtype="bfloat16", store_dir=tmp)
        assert bf16.store_status == "hit", bf16.store_status
        rows["store_bfloat16"] = dict(zip(("tokens_per_s", "tokens"), batches_per_second(bf16)))
        rows["store_bfloat16"]["bytes_per_token"] = store_bytes(bf16.stores("train")[0]) / n_stored
    live = source(args.layer, args.live_tokens, store=False)
    harvested = live_harvest_counter(live)
    t0, seconds0 = time.perf_counter(), live.harvest_seconds
    for _ in live.train_batches(4096):
        pass
    # live mode harvests whole chunks and fills the shuffle buffer before it serves: the rate is per harvested
    # token (what a long live run pays per training token), beside the wall time of serving this short budget
    rows["live"] = {"tokens_per_s": harvested[0] / (live.harvest_seconds - seconds0), "tokens": harvested[0],
                    "wall_seconds_to_serve_budget": round(time.perf_counter() - t0, 1),
                    "budget_tokens": args.live_tokens}
    for r in rows.values():
        r["tokens_per_s"] = round(r["tokens_per_s"])
        if "bytes_per_token" in r:
            r["gb_per_million_tokens"] = round(r["bytes_per_token"] * 1e6 / 1e9, 2)
            r["bytes_per_token"] = round(r["bytes_per_token"], 1)
    h = rows["live"]["tokens_per_s"]
    for name in ("store_float32", "store_bfloat16"):
        rows[name]["times_faster_than_live"] = round(rows[name]["tokens_per_s"] / h, 1)
    meta = {"model": "SmolLM2-135M-Instruct", "layer": args.layer, "site": "resid_post",
            "machine": f"{os.cpu_count()}-core CPU, torch threads {torch.get_num_threads()}",
            "batch_size": 4096, "store_tokens": n_stored,
            # other processes on the cores slow both sides; the load says how much the machine was shared
            "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    (out / "store_vs_live.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Activation store vs live harvesting ({meta['model']}, layer {args.layer} resid_post, "
             f"{meta['machine']})", "",
             "Training batches of 4,096 tokens per second: live (`source.store=false`, a model forward to the hook "
             "per batch) against reading them back from a filled store (checksum, conversion to float32, shuffle "
             f"buffer included). Load average at the end: {meta['load_average_1min_at_end']} (other jobs shared "
             "the cores: absolute rates are lower bounds, the ratio is what the rule uses).", "",
             "| source | tokens/s | × live | bytes/token | GB per 10⁶ tokens | tokens timed (live: harvested) |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['tokens_per_s']:,} | {r.get('times_faster_than_live', 1.0)} | "
                     f"{r.get('bytes_per_token', '')} | {r.get('gb_per_million_tokens', '')} | {r['tokens']:,} |")
    lines += ["", "Rule: a sweep of J runs over the same hook point pays one harvest plus J reads with the store, J "
              "harvests live; with reading this much faster than harvesting the store wins from J = 2 on, and for "
              "a single run it costs one write it never repays unless the run is resumed, rerun or evaluated "
              "again. Live wins when the store would not fit on disk (bytes/token × tokens), or for a single "
              "run on a machine where the model's forward is faster than reading the disk.", ""]
    (out / "store_vs_live.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
