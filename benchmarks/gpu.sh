#!/usr/bin/env bash
# Issue 16 item 5 on a GPU machine, a few minutes end to end: benchmarks/bench_gpu.py (bf16 vs fp32 accuracy,
# train efficiency vs the bare model, --nproc). The device machine has torch, timm, typer, rich and safetensors;
# posetune's other needs travel as wheels in .whl (see /work/.library/device/README.md), installed here first.
# Usage: bash benchmarks/gpu.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 benchmarks/bench_gpu.py "$@"
