#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a session that is lent the GPU machine (one H200,
# Python 3.12 + jax 0.11, no network). Budget: ~10 minutes.
#   1. the attention tests, with pallas_gpu compiled natively (Triton) and cudnn live, against the reference;
#   2. the GPU benchmark table (benchmarks/attention.py --gpu-preset, bf16, D=128, N=16, B·S=16k, <= 8 min).
# The GPU machine has no pytest/hypothesis: prepare wheels here first and carry them:
#   .venv/bin/pip download -q -d benchmarks/.wheels pytest hypothesis
#   run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/.wheels"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
if ! python3 -c "import pytest, hypothesis" 2>/dev/null; then
  python3 -m pip install -q --no-index --find-links benchmarks/.wheels pytest hypothesis || echo "no pytest: skipping tests"
fi
if python3 -c "import pytest, hypothesis" 2>/dev/null; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/attention/test_pallas_gpu.py tests/attention/test_parity.py \
    tests/attention/test_selection.py 2>&1 | tail -40
fi
timeout 450 python3 benchmarks/attention.py --gpu-preset --total-budget-s 400
