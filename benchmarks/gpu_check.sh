#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a session that is lent the GPU machine (one H200,
# Python 3.12 + jax 0.11, no network). Sections (default: all three, ~13 minutes at most; one `run` call
# allows 10, so when the limit matters run `tests attention` and then `train` as two calls):
#   tests      the attention tests, with pallas_gpu compiled natively (Triton) and cudnn live, against the
#              reference (<= 4 min);
#   attention  the GPU benchmark table (benchmarks/attention.py --gpu-preset, bf16, D=128, N=16, B·S=16k, <= 8 min);
#   train      training throughput and MFU of GPT-2 small (benchmarks/train.py --preset gpt2-124m: bf16, T=1024,
#              batch 16) with the library's choice of attention (cudnn expected) and pallas_gpu, 20 timed steps each,
#              plus the async checkpoint save stall of its 124M-parameter train state (<= 5 min).
# The GPU machine has no pytest/hypothesis: prepare wheels here first and carry them:
#   .venv/bin/pip download -q -d benchmarks/.wheels pytest hypothesis
#   run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/.wheels"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
sections="${*:-tests attention train}"
want() { [[ " $sections " == *" $1 "* ]]; }
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
if want tests; then
  if ! python3 -c "import pytest, hypothesis" 2>/dev/null; then
    python3 -m pip install -q --no-index --find-links benchmarks/.wheels pytest hypothesis || echo "no pytest: skipping tests"
  fi
  if python3 -c "import pytest, hypothesis" 2>/dev/null; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/attention/test_pallas_gpu.py tests/attention/test_parity.py \
      tests/attention/test_selection.py 2>&1 | tail -40
  fi
fi
if want attention; then
  timeout 450 python3 benchmarks/attention.py --gpu-preset --total-budget-s 400
fi
if want train; then
  # Needs flax, optax and orbax-checkpoint (in the GPU image); not the data stack (grain, tfds), which it skips.
  timeout 300 python3 benchmarks/train.py --preset gpt2-124m --attention auto,pallas_gpu --steps 20 --checkpoint
fi
