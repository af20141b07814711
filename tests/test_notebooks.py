"""Execute the notebooks headless with their tiny settings (JAXFORMER_NOTEBOOK_TINY=1) and check what each one
shows. Every notebook needs an entry in CHECKS; nothing may be downloaded (HF_HUB_OFFLINE=1)."""
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def quickstart(out: str) -> None:
  assert "40 steps in" in out and "validation:" in out


def attention_kernels(out: str) -> None:
  assert "parity ok" in out
  max_error = float(re.search(r"max abs error, float32 backends vs reference: (\S+)", out).group(1))
  assert max_error < 1e-4
  for backend in ("blockwise", "pallas_gpu", "pallas_tpu"):  # on CPU the Pallas kernels run in interpret mode
    assert len(re.findall(rf"^causal.*? {backend} +(?:native|interpret) +float32 ", out, re.M)) == 2, backend
  for backend in ("reference", "blockwise"):  # speed and memory at both tiny lengths
    assert re.search(rf"^{backend}: from T=128 to 256, time x\d+\.\d+, temp memory x\d+\.\d+$", out, re.M), backend


def attention_variants(out: str) -> None:
  assert "attention maps ok" in out
  for kind in ("softmax", "linear"):
    assert re.search(rf"^ *{kind}: recall accuracy \d\.\d+ in \d+ s$", out, re.M), kind
  assert re.search(r"^softmax decoder/layers_1/self_attention: entropy per head ", out, re.M)


def translation(out: str) -> None:
  assert "40 steps in" in out
  bleu = re.search(r"^BLEU: (\d+\.\d+) on 32 validation sentences, beam 4", out, re.M)
  assert bleu and 0.0 <= float(bleu.group(1)) <= 100.0  # tiny training: the score itself means nothing
  assert re.search(r"^greedy BLEU: \d+\.\d+$", out, re.M) and out.count("\nbeam:") == 4


def pretrained_generation(out: str) -> None:
  assert "greedy deterministic: True" in out
  assert "greedy matches transformers: True" in out
  greedy = re.findall(r"^(?:greedy|transformers greedy): '(.*)'$", out, re.M)
  assert len(greedy) == 2 and greedy[0] == greedy[1] and len(greedy[0]) > len("The meaning of life is")
  assert re.search(r"^beam 1: '.*'  \(score -\d+\.\d+\)$", out, re.M)
  assert len(re.findall(r"^sampled \(seed \d\): ", out, re.M)) == 3


# notebook -> (its check of the printed text, how many figures it shows (None: not counted), modules it needs beyond
# the base install)
CHECKS = {
  "01_quickstart.ipynb": (quickstart, 1, ()),
  "02_attention_kernels.ipynb": (attention_kernels, 1, ()),
  "03_attention_variants.ipynb": (attention_variants, 2, ()),  # learning curves, attention maps
  "04_translation.ipynb": (translation, 1, ()),
  "05_pretrained_generation.ipynb": (pretrained_generation, 0, ("torch", "transformers")),  # the "hf" extra
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
  assert path.name in CHECKS, f"add what {path.name} must show to CHECKS in {__file__}"
  check, figures, needs = CHECKS[path.name]
  for module in needs:
    pytest.importorskip(module)
  nb = nbformat.read(path, as_version=4)
  # Committed without outputs (CI executes them), with the Colab badge of their own path, and the tiny switch.
  assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
  assert f"colab.research.google.com/github/jaxformer/jaxformer/blob/main/notebooks/{path.name}" in nb.cells[0].source
  assert any("JAXFORMER_NOTEBOOK_TINY" in c.source for c in nb.cells if c.cell_type == "code")

  monkeypatch.setenv("JAXFORMER_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("QUICKSTART_STEPS", "40")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' temporary directories go away with the test's
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, so figures become outputs
  # One CPU device, as a user has (conftest gives the test process 8 simulated ones).
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
  NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  errors = [o for o in outputs if o.get("output_type") == "error"]
  assert not errors, errors
  check("".join(o.get("text", "") for o in outputs if o.get("name") == "stdout"))
  if figures is not None:
    assert sum("image/png" in o.get("data", {}) for o in outputs) == figures
