# Sourced by demo.sh and test.sh: create .venv and install jaxformer with the given extras.
# Idempotent: reinstalls only when pyproject.toml, the constraints or the extras change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${JAXFORMER_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "jaxformer needs Python >= 3.11 (found $("$PY" --version))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# Exact pins for the Python version CI runs (3.11); other versions resolve from pyproject ranges.
PYVER=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
CONSTRAINTS="$ROOT/scripts/constraints-py$PYVER.txt"
STAMP="$VENV/.jaxformer-installed${EXTRAS:+-${EXTRAS//,/-}}"
WANT="$({ cat "$ROOT/pyproject.toml"; cat "$CONSTRAINTS" 2>/dev/null || true; } | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: installing jaxformer${EXTRAS:+[$EXTRAS]} into $VENV (first run only; log: $VENV/pip.log)" >&2
  ARGS=(-e "$ROOT${EXTRAS:+[$EXTRAS]}")
  [ -f "$CONSTRAINTS" ] && ARGS+=(-c "$CONSTRAINTS")
  if ! { "$VENV/bin/python" -m pip install --upgrade pip && "$VENV/bin/python" -m pip install "${ARGS[@]}"; } \
      > "$VENV/pip.log" 2>&1; then
    tail -n 30 "$VENV/pip.log" >&2
    echo "setup: pip install failed (full log: $VENV/pip.log)" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
