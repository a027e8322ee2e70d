#!/usr/bin/env bash
# The GPU checks in one go, on a machine without internet: python3 with torch/transformers/peft,
# plus wheels carried in .whl/ (diffusers, open_clip_torch, ftfy, wcwidth, importlib_metadata, zipp).
#   bash bench/gpu_run.sh OUTDIR
set -u
out=${1:-/tmp/carlos-gpu}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 CARLOS_REG_HOME=/tmp/carlos-home HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
[ -n "${SKIP_SIGNER:-}" ] || timeout 480 python3 bench/signer_gpu.py --compile --out "$out/signer_gpu.json" 2>&1 | tail -25 | tee "$out/signer_gpu.log"
timeout 150 python3 bench/search.py --device cuda --queries 5 --sizes "" 2>&1 | tee "$out/search_gpu.txt" | tail -10
