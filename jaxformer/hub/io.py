"""Finding and reading HF checkpoints: a local directory or a Hub repo id.

Weights are read lazily, one tensor at a time: `model.safetensors`, a sharded
`model.safetensors.index.json`, or (with torch installed) `pytorch_model.bin` and its
sharded index. Safetensors are read as numpy, with no torch.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers numpy's bfloat16, so safetensors can read bf16 tensors)
import numpy as np

log = logging.getLogger("jaxformer.hub")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# What a snapshot download fetches: configs, tokenizer files and safetensors weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt"]


def read_json(path: Path) -> dict:
  """A JSON file as a dict, or {} if it does not exist."""
  path = Path(path)
  return json.loads(path.read_text()) if path.is_file() else {}


def _looks_like_path(name: str) -> bool:
  """Hub repo ids are `name` or `owner/name`; anything else is meant as a local path."""
  return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".json")


def resolve(name_or_path: str | Path, *, revision: str | None = None) -> Path:
  """A local checkpoint directory, or the local snapshot of a Hub repo id (downloaded if needed)."""
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  name = str(name_or_path)
  if path.exists() or _looks_like_path(name):
    raise FileNotFoundError(f"{name!r} is not a checkpoint directory; pass a directory holding config.json and "
                            f"model.safetensors, or a Hugging Face Hub repo id such as 'openai-community/gpt2'")
  return _download(name, revision)


def _download(repo_id: str, revision: str | None) -> Path:
  try:
    from huggingface_hub import snapshot_download
  except ImportError:
    raise ImportError(f"{repo_id!r} is not a local directory, and fetching it from the Hub needs huggingface_hub: "
                      f"`pip install huggingface_hub`, or pass a local checkpoint directory") from None
  try:
    path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    if not any((path / f).exists() for f in WEIGHT_FILES):  # an older repo with only PyTorch pickles
      path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["pytorch_model*.bin*"]))
  except Exception as e:  # offline, unknown repo, gated repo, ...
    raise OSError(f"{repo_id!r} is not a local directory, and fetching it from the Hugging Face Hub failed "
                  f"({type(e).__name__}: {e}). If this machine is offline, download it elsewhere (`huggingface-cli "
                  f"download {repo_id} --local-dir DIR`), copy DIR here and pass its path; for a gated repo, log in "
                  f"with `huggingface-cli login`") from e
  return path


class Checkpoint:
  """The weights of a checkpoint directory: `keys()`, `shape(name)` and `get(name)` (numpy), read lazily."""

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    self._files: dict[str, Path] = {}  # tensor name -> file
    self._shapes: dict[str, tuple[int, ...]] = {}
    self._torch: dict[Path, dict] = {}  # loaded .bin state dicts
    found = next((f for f in WEIGHT_FILES if (self.directory / f).is_file()), None)
    if found is None:
      raise FileNotFoundError(f"no weights in {self.directory}: expected one of {list(WEIGHT_FILES)}")
    self.source = self.directory / found
    if found.endswith(".index.json"):
      weight_map = read_json(self.source).get("weight_map", {})
      files = sorted({self.directory / f for f in weight_map.values()})
    else:
      files = [self.source]
    for file in files:
      if not file.is_file():
        raise FileNotFoundError(f"{self.source} lists the shard {file.name}, which is not in {self.directory}")
      self._scan(file)

  def _scan(self, file: Path):
    if file.suffix == ".safetensors":
      from safetensors import safe_open
      with safe_open(file, framework="np") as f:
        for name in f.keys():
          self._files[name], self._shapes[name] = file, tuple(f.get_slice(name).get_shape())
    else:
      for name, tensor in self._load_torch(file).items():
        self._files[name], self._shapes[name] = file, tuple(tensor.shape)

  def _load_torch(self, file: Path) -> dict:
    if file not in self._torch:
      try:
        import torch
      except ImportError:
        raise ImportError(f"{file} is a PyTorch pickle and reading it needs torch: `pip install torch` (CPU is "
                          f"enough), or convert the checkpoint to model.safetensors") from None
      self._torch[file] = torch.load(file, map_location="cpu", weights_only=True)
    return self._torch[file]

  def keys(self):
    return self._files.keys()

  def shape(self, name: str) -> tuple[int, ...]:
    return self._shapes[name]

  def get(self, name: str) -> np.ndarray:
    file = self._files[name]
    if file.suffix == ".safetensors":
      from safetensors import safe_open
      with safe_open(file, framework="np") as f:
        return f.get_tensor(name)
    import torch
    tensor = self._load_torch(file)[name]
    # numpy has no bridge for torch's bfloat16; float32 holds it exactly
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
