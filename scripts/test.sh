#!/usr/bin/env bash
# The whole test suite: set up (once, with the test extras), then pytest.
# Extra arguments go to pytest, e.g. -k attention, or -m slow for the long reproductions.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" "dev,notebooks,hf"
cd "$ROOT"
exec python -m pytest --durations=30 "$@"  # the 30 slowest tests are listed at the end
