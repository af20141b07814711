"""Synthetic sequence-to-sequence tasks generated in-process (no download).

copy:    y = x
reverse: y = x reversed
sort:    y = x sorted ascending
Sources have random lengths in [min_len, max_len] over `num_symbols` digits.
"""
from __future__ import annotations

import numpy as np

from jaxformer.data.tokenizers import BOS, EOS, PAD, CharTokenizer

TASKS = {"copy": lambda x: x, "reverse": lambda x: x[::-1], "sort": np.sort}
SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"


class Seq2SeqTask:
  kind = "seq2seq"

  def __init__(self, task: str, min_len: int, max_len: int, num_symbols: int = 10, seed: int = 0,
               num_eval: int = 512):
    if task not in TASKS:
      raise ValueError(f"unknown synthetic task {task!r}; expected one of {sorted(TASKS)}")
    if not 1 <= min_len <= max_len:
      raise ValueError(f"need 1 <= data.min_len <= data.max_len, got {min_len}, {max_len}")
    if not 1 <= num_symbols <= len(SYMBOLS):
      raise ValueError(f"data.num_symbols must be in [1, {len(SYMBOLS)}]")
    self.fn, self.min_len, self.max_len, self.seed = TASKS[task], min_len, max_len, seed
    self.tokenizer = CharTokenizer(SYMBOLS[:num_symbols], specials=(PAD, BOS, EOS))
    self.bos_id, self.eos_id = self.tokenizer.special_id(BOS), self.tokenizer.special_id(EOS)
    self.num_symbols, self.num_eval = num_symbols, num_eval

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  @property
  def target_len(self) -> int:
    return self.max_len + 1  # + EOS

  def _batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    first = len(self.tokenizer.specials)
    inputs = np.zeros((batch_size, self.max_len), np.int32)
    targets = np.zeros((batch_size, self.target_len), np.int32)
    lengths = rng.integers(self.min_len, self.max_len + 1, size=batch_size)
    for i, n in enumerate(lengths):
      x = rng.integers(first, first + self.num_symbols, size=n)
      inputs[i, :n] = x
      targets[i, :n] = self.fn(x)
      targets[i, n] = self.eos_id
    decoder_inputs = np.concatenate([np.full((batch_size, 1), self.bos_id, np.int32), targets[:, :-1]], 1)
    return {"inputs": inputs, "decoder_inputs": decoder_inputs, "targets": targets}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self._batch(batch_size, np.random.default_rng([self.seed, step]))

  def eval_batches(self, num_batches: int, batch_size: int):
    rng = np.random.default_rng([self.seed, 2**31 - 1])
    return [self._batch(batch_size, rng) for _ in range(num_batches)]
