#!/usr/bin/env bash
# GPU check (run on a CUDA machine from the repo root): the CLI through Lightning's accelerator/precision
# settings, on a tiny Llama and on the synthetic source, plus SAE-step throughput fp32 vs bf16.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR] ; offline machines: set WHEELS=dir of wheels for missing deps.
set -uo pipefail
OUT=${1:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD WANDB_MODE=offline HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then python3 -m pip install -q --no-index --find-links "$WHEELS" hydra-core omegaconf wandb gguf; fi
python3 - <<'PY'
import torch, transformers, pytorch_lightning as pl
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "",
      "transformers", transformers.__version__, "lightning", pl.__version__)
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from conftest import _build
_build("llama", Path("/tmp/gpu_tiny_llama"))
PY
run() { echo "== $*"; /usr/bin/time -f "wall %e s" python3 -m saefw "$@" 2>&1 | tail -18; }
run model=/tmp/gpu_tiny_llama layer=1 arch=topk arch.k=8 total_tokens=400000 train.batch_size=4096 \
    trainer.accelerator=gpu trainer.precision=bf16-mixed train.eval_every_steps=50 hydra.run.dir=$OUT/tiny_topk_bf16
run +experiment=synthetic arch=batchtopk trainer.accelerator=gpu hydra.run.dir=$OUT/synthetic_batchtopk
run +experiment=synthetic arch=gated trainer.accelerator=gpu trainer.precision=bf16-mixed hydra.run.dir=$OUT/synthetic_gated_bf16
python3 benchmarks/sae_step_throughput.py --device cuda --dtype fp32 --steps 20
python3 benchmarks/sae_step_throughput.py --device cuda --dtype bf16 --steps 20
for d in "$OUT"/*/; do [ -f "$d/metrics.json" ] && python3 -c "import json,sys; m=json.load(open('$d/metrics.json')); print('$d', {k: m.get(k) for k in ('l0','explained_variance','ce_loss_recovered','mmcs','wall_seconds')})"; done
