"""SAE training-step throughput (tokens/s) per architecture, on synthetic activations at SmolLM2's width.

    python benchmarks/sae_step_throughput.py [--device cuda] [--dtype bf16] [--d-in 576] [--expansion 8]

Times forward + backward + Adam step (what the Lightning module does per batch, minus logging) after warm-up,
and reports achieved GFLOP/s against the dense estimate of 6·B·d·m·2 FLOP per step (encoder and decoder
matmuls, forward and backward). Appends one JSON line per arch to benchmarks/results/sae_step_throughput.jsonl.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from saefw.arch.base import compose_loss
from saefw.registry import build, discover, entry, names

OUT = Path(__file__).parent / "results" / "sae_step_throughput.jsonl"


def bench(arch: str, d_in: int, d_sae: int, batch: int, device: str, dtype: torch.dtype, steps: int) -> dict:
    torch.manual_seed(0)
    k = {"k": 32} if "k" in entry("arch", arch).config_cls.__dataclass_fields__ else {}  # top-k archs: k as the default run
    sae = build("arch", {"name": arch, **k}, d_in=d_in, d_sae=d_sae).to(device)
    penalty = build("penalty", {"name": entry("arch", arch).cls.default_penalty})
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, d_in, device=device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[: d_sae // 10] = True  # exercise AuxK where the arch has it

    def step():
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            out = compose_loss(sae.train_forward(x, dead_mask=dead), penalty, 1.0)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    return {"arch": arch, "d_in": d_in, "d_sae": d_sae, "batch": batch, "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine(),
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "tokens_per_s": round(batch / dt), "ms_per_step": round(dt * 1e3, 2),
            "gflops": round(12 * batch * d_in * d_sae / dt / 1e9, 1), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--archs", default=None, help="comma list; default: every registered arch")
    args = ap.parse_args()
    discover()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    for arch in (args.archs.split(",") if args.archs else names("arch")):
        row = bench(arch, args.d_in, args.d_in * args.expansion, args.batch, args.device, dtype, args.steps)
        print(json.dumps(row), flush=True)
        with OUT.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
