"""ListOps (Long Range Arena), generated in-process: nested MIN/MAX/MED/SUM_MOD expressions over digits 0-9.

The generator follows LRA's `lra_benchmarks/data/listops.py`: a node at depth < max_depth is an operator with
probability VALUE_P = 0.25 (else a digit; at max_depth always a digit), an operator takes 2..max_args
arguments (uniform) and one of the four operators (uniform), the root is at depth 1, and an example is kept
when `min_length < length < max_length` (strict, as LRA), length counting operators, digits and "]". Defaults
are LRA's: max_depth=10, max_args=10, min_length=500, max_length=2000. MED is the median rounded down
(LRA's `int(np.median(...))`), SUM_MOD the sum mod 10. The string is LRA's TSV format, e.g.

    ( ( ( [MAX 2 ) ( ( ( [SM 4 ) 7 ) ] ) ) ] )     ->  MAX(2, SM(4, 7)) = 2

Tokenisation is the fixed LRA `listops/input_pipeline.py` (the first release dropped every bracket, so the tree
structure was lost: LRA issue #14): parentheses are dropped and each remaining
word is a token (LRA renames "]" to "X" and strips "[" from operators, a one-to-one renaming), so the model
sees `[MAX 2 [SM 4 7 ] ]`: 15 tokens plus padding (LRA's encoder adds one never-used OOV id: 17 there, 16
here), truncated to `max_len` (LRA: 2000, so nothing is truncated by default) and 0-padded.

Speed: about 12 trees are drawn per kept example (three quarters are a single digit, most others too short),
so trees are generated depth-first in plain Python from uniforms drawn in blocks: about 1 ms per kept example
at the defaults. A tree is abandoned as soon as it reaches max_length tokens; it would be rejected anyway and
the next try uses fresh independent draws, so kept examples have exactly LRA's distribution.

Differences from LRA: examples are drawn on demand per (seed, step) instead of a fixed 96k/2k/2k de-duplicated
pool (duplicates of 500+ token trees are vanishingly rare); the random draws are made in a different order
(operator before its arguments), which does not change the distribution.
"""
from __future__ import annotations

import numpy as np

from jaxformer.data.recall import HELD_OUT_STREAM
from jaxformer.data.tokenizers import WordTokenizer

MIN, MAX, MED, SUM_MOD, END = "[MIN", "[MAX", "[MED", "[SM", "]"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
DIGITS = tuple(str(v) for v in range(10))
VALUE_P = 0.25  # LRA: a node below max_depth is an operator iff random() <= VALUE_P


def apply_op(op: str, args: list[int]) -> int:
  """LRA's operator semantics; MED of an even count is the mean of the middle two, rounded down."""
  if op == MIN:
    return min(args)
  if op == MAX:
    return max(args)
  if op == SUM_MOD:
    return sum(args) % 10
  s, m = sorted(args), len(args) // 2
  return s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2


class _Uniforms:
  """Uniform [0, 1) floats from `rng`, drawn in blocks (a Python float per call is the hot path)."""

  def __init__(self, rng: np.random.Generator, block: int = 8192):
    self.rng, self.block, self.buf, self.i = rng, block, [], 0

  def __call__(self) -> float:
    if self.i == len(self.buf):
      self.buf, self.i = self.rng.random(self.block).tolist(), 0
    self.i += 1
    return self.buf[self.i - 1]


def _try_tree(u: _Uniforms, max_depth: int, max_args: int, max_length: int):
  """One LRA tree, depth-first: (string words, label, length), or None once length reaches max_length."""
  words, stack, length, depth = [], [], 0, 1  # stack frames: [operator, number of args, depth, arg values]
  while True:
    if depth < max_depth and u() <= VALUE_P:
      n, op = 2 + int(u() * (max_args - 1)), OPERATORS[int(u() * 4)]
      words += ["("] * (n + 1)
      words.append(op)
      stack.append([op, n, depth, []])
      length, depth = length + 1, depth + 1
      if length >= max_length:
        return None
      continue
    value = int(u() * 10)
    words.append(DIGITS[value])
    length += 1
    while stack:  # close every operator this digit completes
      op, n, op_depth, args = stack[-1]
      args.append(value)
      words.append(")")
      if len(args) < n:
        break
      stack.pop()
      words += [END, ")"]
      value, length = apply_op(op, args), length + 1
    if length >= max_length:
      return None
    if not stack:
      return words, value, length
    depth = op_depth + 1


def _check_limits(max_depth: int, max_args: int, min_length: int, max_length: int) -> None:
  if max_depth < 2 or max_args < 2 or not 0 <= min_length < max_length - 1:
    raise ValueError(f"ListOps needs max_depth >= 2, max_args >= 2 and 0 <= min_length < max_length - 1 (lengths "
                     f"are strictly between them), got max_depth={max_depth}, max_args={max_args}, "
                     f"min_length={min_length}, max_length={max_length}")
  ops = sum(max_args**d for d in range(max_depth - 1))  # the largest tree: every node above max_depth an operator
  if 2 * ops + max_args ** (max_depth - 1) <= min_length:
    raise ValueError(f"ListOps trees with max_depth={max_depth}, max_args={max_args} have at most "
                     f"{2 * ops + max_args ** (max_depth - 1)} tokens, not more than min_length={min_length}")


def _sample(u: _Uniforms, max_depth: int, max_args: int, min_length: int, max_length: int) -> tuple[str, int]:
  while True:
    tree = _try_tree(u, max_depth, max_args, max_length)
    if tree is not None and tree[2] > min_length:
      return " ".join(tree[0]), tree[1]


def generate_listops(rng: np.random.Generator, max_depth: int = 10, max_args: int = 10, min_length: int = 500,
                     max_length: int = 2000) -> tuple[str, int]:
  """One LRA ListOps example (expression string in LRA's TSV format, its value 0-9), by rejection sampling."""
  _check_limits(max_depth, max_args, min_length, max_length)
  return _sample(_Uniforms(rng), max_depth, max_args, min_length, max_length)


class ListOps:
  """LRA ListOps classification: `inputs` [B, max_len] (0-padded), `label` [B] in 0-9."""
  kind = "classification"
  num_classes = 10

  def __init__(self, max_len: int = 2000, min_length: int = 500, max_length: int = 2000, max_depth: int = 10,
               max_args: int = 10, seed: int = 0):
    if max_len < 1:
      raise ValueError(f"ListOps needs max_len >= 1, got {max_len}")
    _check_limits(max_depth, max_args, min_length, max_length)
    self.max_len, self.min_length, self.max_length = max_len, min_length, max_length
    self.max_depth, self.max_args, self.seed = max_depth, max_args, seed
    self.seq_len = max_len
    self.tokenizer = WordTokenizer(OPERATORS + (END,) + DIGITS, ignore=("(", ")"))

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inputs = np.zeros((batch_size, self.max_len), np.int32)
    label = np.zeros(batch_size, np.int32)
    u = _Uniforms(rng)
    for i in range(batch_size):
      text, label[i] = _sample(u, self.max_depth, self.max_args, self.min_length, self.max_length)
      ids = self.tokenizer.encode(text)[: self.max_len]  # LRA truncates to max_length
      inputs[i, : len(ids)] = ids
    return {"inputs": inputs, "label": label}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self._batch(batch_size, np.random.default_rng([self.seed, step]))

  def eval_batches(self, num_batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng([self.seed, HELD_OUT_STREAM])
    return [self._batch(batch_size, rng) for _ in range(num_batches)]
