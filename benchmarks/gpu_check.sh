#!/usr/bin/env bash
# GPU check (run on a CUDA machine from the repo root): the CLI through Lightning's accelerator/precision
# settings on a tiny Llama (the sync-free training step, the sparse TopK path, bf16-mixed, a NaN batch found at
# the next logging step), plus SAE-step throughput fp32 vs bf16.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] ; offline machines: WHEELS=<dir of wheels> for missing deps.
set -uo pipefail
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD WANDB_MODE=offline HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 SAEFW_CACHE=/tmp/saefw-cache
if [ -n "${WHEELS:-}" ]; then python3 -m pip install -q --no-index --find-links "$WHEELS" hydra-core omegaconf wandb gguf filelock 2>&1 | tail -3; fi
python3 - <<'PY'
import sys, torch, transformers, pytorch_lightning as pl
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "", "transformers", transformers.__version__,
      "lightning", pl.__version__)
sys.path.insert(0, "tests")
from pathlib import Path
from helpers import build_tiny_model
build_tiny_model("llama", Path("/tmp/gpu_tiny_llama"), hidden=64)
PY
run() { echo "== $*"; /usr/bin/time -f "wall %e s" python3 -m saefw model=/tmp/gpu_tiny_llama layer=1 \
        trainer.accelerator=gpu trainer.enable_progress_bar=false "$@" 2>&1 | grep -v Warning | tail -16; }
run arch=topk total_tokens=400000 train.batch_size=4096 trainer.precision=bf16-mixed hydra.run.dir=$OUT/topk_bf16
run arch=gated total_tokens=400000 train.batch_size=4096 hydra.run.dir=$OUT/gated_fp32
run arch=batchtopk total_tokens=400000 train.batch_size=4096 trainer.precision=bf16-mixed hydra.run.dir=$OUT/batchtopk_bf16
run arch=l1 total_tokens=200000 train.batch_size=1024 train.lr=1e30 hydra.run.dir=$OUT/l1_diverges
python3 benchmarks/sae_step_throughput.py --device cuda --dtype fp32 --steps 20
python3 benchmarks/sae_step_throughput.py --device cuda --dtype bf16 --steps 20
for d in "$OUT"/*/; do [ -f "$d/metrics.json" ] && python3 -c "import json; m=json.load(open('$d/metrics.json')); print('$d', {k: m.get(k) for k in ('status','l0','explained_variance','ce_loss_recovered','dead_fraction','wall_seconds','timings')})"; done
