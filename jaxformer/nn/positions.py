"""Positional encodings: sinusoidal, learned, RoPE and ALiBi.

Positions are explicit [B, T] integer arrays everywhere, so packed sequences
(positions restart per segment) and KV-cache decoding (positions continue
from the cache) need no special cases.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def sinusoidal(positions: jnp.ndarray, d_model: int) -> jnp.ndarray:
  """Vaswani et al. 2017, section 3.5, exactly:
  PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

  positions [...] -> [..., d_model] float32 (sin and cos interleaved, as in the paper).
  """
  dim = np.arange(d_model)
  inv_freq = jnp.asarray(1.0 / 10000.0 ** (2 * (dim // 2) / d_model), jnp.float32)  # [D]
  angles = positions[..., None].astype(jnp.float32) * inv_freq
  return jnp.where(dim % 2 == 0, jnp.sin(angles), jnp.cos(angles))


class LearnedPositions(nn.Module):
  """A trainable [max_len, D] table (GPT-2, BERT)."""
  max_len: int
  features: int
  init_std: float = 0.02
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, positions: jnp.ndarray) -> jnp.ndarray:
    table = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(self.init_std), ("position", "embed")),
        (self.max_len, self.features), jnp.dtype(self.param_dtype))
    return jnp.take(table, positions, axis=0)


def rope(x: jnp.ndarray, positions: jnp.ndarray, theta: float = 10000.0, fraction: float = 1.0):
  """Rotary position embedding (Su et al. 2021, eq. 34), "rotate-half" layout as in
  GPT-NeoX / HF Llama: dimension i pairs with i + d/2 among the first `fraction` of dims.

  x [B, T, N, H], positions [B, T] -> x rotated, same dtype.
  """
  rot = int(x.shape[-1] * fraction)
  half = rot // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / rot)  # [rot/2]
  angles = positions[:, :, None, None].astype(jnp.float32) * inv_freq  # [B, T, 1, rot/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  xf = x[..., :rot].astype(jnp.float32)
  x1, x2 = xf[..., :half], xf[..., half:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.concatenate([rotated.astype(x.dtype), x[..., rot:]], axis=-1)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Head slopes of ALiBi (Press et al. 2022, section 3): the geometric sequence
  2^(-8/n), 2^(-16/n), ... for n a power of two; otherwise the slopes of the closest
  smaller power of two m, followed by every other slope of 2m (the paper's recipe).
  """
  def power_of_two(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]
  m = 2 ** math.floor(math.log2(num_heads))
  slopes = power_of_two(m) + power_of_two(2 * m)[0::2][: num_heads - m]
  return np.asarray(slopes, np.float32)


def alibi_bias(q_positions: jnp.ndarray, kv_positions: jnp.ndarray, num_heads: int) -> jnp.ndarray:
  """-slope_n · |i - j| for positions [B, T] and [B, S] -> bias [B, N, T, S] float32.

  For causal attention this equals the paper's -slope · (i - j); BLOOM's slope · j
  differs from it only by a per-row constant, which softmax ignores.
  """
  slopes = jnp.asarray(alibi_slopes(num_heads))[None, :, None, None]
  dist = jnp.abs(q_positions[:, None, :, None] - kv_positions[:, None, None, :]).astype(jnp.float32)
  return -slopes * dist
