"""The code stays ruff-clean (rules in pyproject.toml)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the dev extra")
def test_ruff_clean():
  proc = subprocess.run(["ruff", "check", "jaxformer", "tests", "experiments"], cwd=ROOT, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
