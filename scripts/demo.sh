#!/usr/bin/env bash
# The main job: set up (once), then train the default experiment offline and show its result.
# Extra arguments go to `jaxformer train`, e.g. --config.train.steps=100
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" ""
cd "$ROOT"
exec jaxformer train --config experiments/char_lm.py --workdir runs/char_lm "$@"
