"""Character-level language-modelling data: a corpus as one token array, random windows.

Batches are a pure function of (seed, step), so a run restarted at step k sees
exactly the batches it would have seen (no iterator state to save).
"""
from __future__ import annotations

import logging
import sysconfig
from pathlib import Path

import numpy as np

from jaxformer.data.tokenizers import CharTokenizer

log = logging.getLogger("jaxformer.data")


def stdlib_corpus(max_chars: int = 2_000_000) -> str:
  """Python's own standard-library sources (top-level modules, sorted by name), ASCII only.

  Every Python installation has them, so this corpus needs no network.
  Non-ASCII characters become "?" so the alphabet stays small.
  """
  root = Path(sysconfig.get_paths()["stdlib"])
  parts, total = [], 0
  for path in sorted(root.glob("*.py")):
    text = path.read_text(encoding="utf-8", errors="replace")
    text = text.encode("ascii", errors="replace").decode("ascii")
    parts.append(text)
    total += len(text)
    if total >= max_chars:
      break
  if total == 0:
    raise FileNotFoundError(f"no Python sources found under {root}; use data.name='text_file'")
  return "".join(parts)[:max_chars]


def text_file_corpus(path: str) -> str:
  p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"data.path={path!r} does not exist; point it at a UTF-8 text file")
  return p.read_text(encoding="utf-8")


class CharLMData:
  """A character corpus split into train/validation (the last `val_fraction`, as nanoGPT)."""
  kind = "lm"

  def __init__(self, text: str, seq_len: int, seed: int = 0, val_fraction: float = 0.1):
    self.tokenizer = CharTokenizer.from_text(text)
    ids = np.asarray(self.tokenizer.encode(text), np.int32)
    n_val = int(len(ids) * val_fraction)
    self.train_ids, self.val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    if min(len(self.train_ids), len(self.val_ids)) <= seq_len + 1:
      raise ValueError(f"corpus of {len(ids)} characters is too short for data.seq_len={seq_len}")
    self.seq_len, self.seed = seq_len, seed
    log.info("char LM corpus: %d train / %d val tokens, vocabulary %d",
             len(self.train_ids), len(self.val_ids), self.tokenizer.vocab_size)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _windows(self, ids, batch_size, rng):
    starts = rng.integers(0, len(ids) - self.seq_len - 1, size=batch_size)
    x = np.stack([ids[s: s + self.seq_len + 1] for s in starts])
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self._windows(self.train_ids, batch_size, np.random.default_rng([self.seed, step]))

  def eval_batches(self, num_batches: int, batch_size: int):
    rng = np.random.default_rng([self.seed, 2**31 - 1])
    return [self._windows(self.val_ids, batch_size, rng) for _ in range(num_batches)]
