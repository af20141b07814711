"""Algorithmic tasks over a small finite universe, split once into train and test examples (no download).

MinGPTSort: Karpathy's minGPT demo (`SortDataset` in karpathy/minGPT, demo.ipynb). Sort `length` digits of
{0, ..., num_digits - 1}: the row is the digits then their sorted copy, next-token targets, and only the sorted
half is scored, so a row is right exactly when greedy decoding sorts the prompt. minGPT assigns each of the
num_digits ** length inputs to test when a hash of it is 0 mod 4; here a fixed permutation puts a quarter of
them in test. As minGPT's sampler, inputs with at most length // 2 distinct digits are drawn twice as often as the
others (runs of repeats are what the model learns last; with 3 digits and length 6 that is every input, so the
demo's draws are uniform). Ids: 0 pad, digit d is id d + 1.

ModularArithmetic: the grokking task of Power et al. 2022 as set up by Nanda et al. 2023 ("Progress measures for
grokking via mechanistic interpretability"): every pair (a, b) of residues mod p, written "a b =", with
(a + b) mod p (or a - b, a * b) scored at "=". A fixed fraction of the p**2 pairs is the training set and
the rest the test set; a batch size equal to the training set gives the paper's full-batch training. Ids: 0 pad
(only in the padding rows that fill the last evaluation batch), residue r is r + 1, "=" is p + 1; no real token
is padding, so set model.pad_id to None.

Both tasks are "lm" datasets: `inputs`, `targets`, `weights` (1 only where scored); `eval_batches(0, n)` is the
whole test split (config: train.eval_batches=0), the last batch filled with rows of weight 0.
"""
from __future__ import annotations

import numpy as np

from jaxformer.data.tokenizers import PAD, CharTokenizer, WordTokenizer

SPLIT_STREAM = 2**31 - 2  # the rng key of the train/test split: [seed, SPLIT_STREAM]


def _batches(rows: dict[str, np.ndarray], batch_size: int, num_batches: int = 0) -> list[dict[str, np.ndarray]]:
  """`rows` in batches of `batch_size` (the last one padded with rows of weight 0); all of them if num_batches=0."""
  n = len(rows["inputs"])
  starts = list(range(0, n, batch_size))[:num_batches or None]
  out = []
  for s in starts:
    batch = {k: v[s:s + batch_size] for k, v in rows.items()}
    short = batch_size - len(batch["inputs"])
    if short:
      batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    out.append(batch)
  return out


class _SplitTask:
  kind = "lm"

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def eval_batches(self, num_batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    return _batches(self._rows(self.test), batch_size, num_batches)


class MinGPTSort(_SplitTask):

  def __init__(self, length: int = 6, num_digits: int = 3, test_fraction: float = 0.25, seed: int = 0):
    if length < 2 or not 2 <= num_digits <= 9:
      raise ValueError(f"MinGPTSort needs length >= 2 and 2 <= num_digits <= 9, got {length}, {num_digits}")
    if num_digits ** length > 10**6:
      raise ValueError(f"num_digits ** length = {num_digits ** length} inputs is too many to enumerate (max 1e6)")
    if not 0 < test_fraction < 1:
      raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
    self.length, self.num_digits, self.seed = length, num_digits, seed
    self.tokenizer = CharTokenizer("".join(str(d) for d in range(num_digits)), specials=(PAD,))
    universe = np.indices((num_digits,) * length).reshape(length, -1).T  # every input, lexicographic
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(universe))
    n_test = max(1, round(test_fraction * len(universe)))
    self.test, self.train = universe[np.sort(order[:n_test])], universe[np.sort(order[n_test:])]
    # minGPT's "boost": half of its draws reject inputs with more than length // 2 distinct digits, so an input with
    # few distinct digits is drawn twice as often as one with many (with 3 digits and length 6, every input is "few")
    few = np.array([len(np.unique(x)) <= length // 2 for x in self.train])
    self.train_p = (1.0 + few) / (1.0 + few).sum()

  def _rows(self, digits: np.ndarray) -> dict[str, np.ndarray]:
    seq = np.concatenate([digits, np.sort(digits, axis=1)], axis=1).astype(np.int32) + 1  # ids: digit + 1
    weights = np.zeros((len(seq), 2 * self.length - 1), np.float32)
    weights[:, self.length - 1:] = 1.0  # the targets that are the sorted digits
    return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "weights": weights}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, step])
    return self._rows(self.train[rng.choice(len(self.train), size=batch_size, p=self.train_p)])


OPERATIONS = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply}


class ModularArithmetic(_SplitTask):

  def __init__(self, p: int = 113, operation: str = "add", train_fraction: float = 0.3, seed: int = 0):
    if operation not in OPERATIONS:
      raise ValueError(f"data.operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    if p < 2 or not 0 < train_fraction < 1:
      raise ValueError(f"need p >= 2 and 0 < data.train_fraction < 1, got {p}, {train_fraction}")
    self.p, self.seed = p, seed
    self.op = OPERATIONS[operation]
    self.tokenizer = WordTokenizer([str(i) for i in range(p)] + ["="])
    pairs = np.indices((p, p)).reshape(2, -1).T  # (a, b) for every a, b
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(pairs))
    n_train = int(train_fraction * len(pairs))  # as Nanda et al.: 3830 of 12769 pairs at p=113
    self.train, self.test = pairs[order[:n_train]], pairs[order[n_train:]]

  def _rows(self, pairs: np.ndarray) -> dict[str, np.ndarray]:
    n = len(pairs)
    targets = np.zeros((n, 3), np.int32)
    targets[:, 2] = self.op(pairs[:, 0], pairs[:, 1]) % self.p + 1
    weights = np.zeros((n, 3), np.float32)
    weights[:, 2] = 1.0
    inputs = np.concatenate([pairs + 1, np.full((n, 1), self.p + 1)], axis=1).astype(np.int32)
    return {"inputs": inputs, "targets": targets, "weights": weights}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    if batch_size == len(self.train):  # full batch: the whole training set every step
      return self._rows(self.train)
    if batch_size > len(self.train):
      raise ValueError(f"train.batch_size={batch_size} exceeds the {len(self.train)} training pairs; set it to "
                       f"{len(self.train)} for full-batch training")
    pick = np.random.default_rng([self.seed, step]).choice(len(self.train), batch_size, replace=False)
    return self._rows(self.train[pick])


__all__ = ["MinGPTSort", "ModularArithmetic"]
