"""In-context linear regression (Garg et al. 2022, "What Can Transformers Learn In-Context? A Case Study of Simple
Function Classes", section 2; `LinearRegression` and `GaussianSampler` in dtsip/in-context-learning), generated
in-process.

Every prompt draws its own function: w ~ N(0, I_d), then x_1 .. x_n ~ N(0, I_d) and y_i = w . x_i (no noise).
The prompt is the 2n vectors x_1, y_1, x_2, y_2, ..., x_n, y_n of size d, each y written as [y, 0, ..., 0]
(Garg's `_combine`); the model predicts y_i at the position of x_i, so the prediction of y_i has seen i - 1
examples of the function (k = i - 1 "in-context examples").

    inputs  [B, 2n, d] float32   x_1, y_1, ..., x_n, y_n     (x_i = inputs[:, 2i - 2], y_i = inputs[:, 2i - 1, 0])
    targets [B, n]     float32   y_1 .. y_n
    weights [B, n]     float32   ones: every prediction is scored, as in Garg's training loss

The task has no tokens: `tokenizer` is None and `vocab_size` 0. Batches are a pure function of (seed, step);
held-out batches come from an independent random stream, as in `jaxformer.data.recall`.
"""
from __future__ import annotations

import numpy as np

from jaxformer.data.recall import HELD_OUT_STREAM  # the rng key of the held-out batches: [seed, it]


class LinearRegressionTask:
  """Noiseless linear functions in `dim` dimensions, `num_points` (x, y) examples per prompt (Garg et al. 2022)."""
  kind = "regression"
  tokenizer = None
  vocab_size = 0

  def __init__(self, dim: int = 5, num_points: int = 11, seed: int = 0):
    if dim < 1 or num_points < 1:
      raise ValueError(f"linear regression needs dim >= 1 and num_points >= 1, got dim={dim}, num_points={num_points}")
    self.dim, self.num_points, self.seed = dim, num_points, seed
    self.seq_len = 2 * num_points  # the model's positions: set model.max_len to at least this

  def batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`batch_size` prompts drawn from `rng` (see the module docstring for the layout)."""
    xs = rng.standard_normal((batch_size, self.num_points, self.dim)).astype(np.float32)  # [B, n, d]
    w = rng.standard_normal((batch_size, self.dim)).astype(np.float32)  # [B, d], one function per prompt
    ys = np.einsum("bnd,bd->bn", xs, w)  # [B, n]
    inputs = np.zeros((batch_size, self.seq_len, self.dim), np.float32)  # [B, 2n, d]
    inputs[:, 0::2] = xs
    inputs[:, 1::2, 0] = ys
    return {"inputs": inputs, "targets": ys, "weights": np.ones_like(ys)}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self.batch(batch_size, np.random.default_rng([self.seed, step]))

  def eval_batches(self, num_batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng([self.seed, HELD_OUT_STREAM])
    return [self.batch(batch_size, rng) for _ in range(num_batches)]


def split_prompts(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A batch's `inputs` [B, 2n, d] back into xs [B, n, d] and ys [B, n]."""
  inputs = np.asarray(inputs)
  return inputs[:, 0::2], inputs[:, 1::2, 0]
