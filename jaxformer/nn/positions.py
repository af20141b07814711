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


def _need(scaling: dict, key: str):
  if scaling.get(key) is None:
    raise ValueError(f"rope_scaling type {scaling['rope_type']!r} needs the key {key!r}; got {scaling}")
  return scaling[key]


def _linear(inv_freq, dim, theta, s):
  """Position interpolation (Chen et al. 2023): positions / factor, i.e. inv_freq / factor."""
  return inv_freq / _need(s, "factor"), 1.0


def _llama3(inv_freq, dim, theta, s):
  """Llama 3.1: divide low frequencies (wavelength > original context / low_freq_factor) by factor,
  keep high ones, and blend linearly in between (HF `_compute_llama3_parameters`)."""
  factor, low, high = _need(s, "factor"), _need(s, "low_freq_factor"), _need(s, "high_freq_factor")
  old_len = _need(s, "original_max_position_embeddings")
  wavelen = 2 * math.pi / inv_freq
  smooth = (old_len / wavelen - low) / (high - low)
  blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  out = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return np.where(medium, blended, out), 1.0


def _yarn(inv_freq, dim, theta, s):
  """YaRN (Peng et al. 2023): interpolate the low frequencies, keep (extrapolate) the high ones with a
  linear ramp between, and scale cos/sin by the attention factor 0.1 ln(factor) + 1 (HF `_compute_yarn_parameters`)."""
  factor, old_len = _need(s, "factor"), _need(s, "original_max_position_embeddings")
  mscale = lambda scale, m=1.0: 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0  # noqa: E731
  attention_factor = s.get("attention_factor")
  if attention_factor is None:
    if s.get("mscale") and s.get("mscale_all_dim"):
      attention_factor = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
    else:
      attention_factor = mscale(factor)
  # the dimension whose wavelength makes `rotations` turns over the original context
  corr_dim = lambda rotations: dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))  # noqa: E731
  low, high = corr_dim(s.get("beta_fast") or 32), corr_dim(s.get("beta_slow") or 1)
  if s.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  ramp = np.clip((np.arange(dim // 2) - low) / ((high - low) or 0.001), 0, 1)  # 0: keep, 1: interpolate
  return inv_freq / factor * ramp + inv_freq * (1 - ramp), float(attention_factor)


_ROPE_SCALINGS = {"linear": _linear, "llama3": _llama3, "yarn": _yarn}


def rope_frequencies(dim: int, theta: float = 10000.0, scaling=None) -> tuple[np.ndarray, float]:
  """RoPE inverse frequencies theta^(-2i/dim), i < dim/2, as float32 numpy, and the factor that scales
  cos and sin, for HF's `rope_scaling` types "default", "linear", "llama3" and "yarn".

  scaling: a dict or (key, value) pairs as in HF's `rope_scaling` / `rope_parameters`.
  """
  s = dict(scaling or {})
  s["rope_type"] = kind = s.get("rope_type", s.get("type", "default"))
  inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)  # [dim/2]
  if kind == "default":
    return inv_freq.astype(np.float32), 1.0
  if kind in ("dynamic", "longrope"):
    raise NotImplementedError(f"rope_scaling type {kind!r} changes the frequencies with the sequence length; "
                              f"jaxformer supports {['default', *_ROPE_SCALINGS]}")
  if kind not in _ROPE_SCALINGS:
    raise ValueError(f"unknown rope_scaling type {kind!r}; jaxformer supports {['default', *_ROPE_SCALINGS]}")
  inv_freq, attention_factor = _ROPE_SCALINGS[kind](inv_freq, dim, theta, s)
  return inv_freq.astype(np.float32), attention_factor


def rope(x: jnp.ndarray, positions: jnp.ndarray, theta: float = 10000.0, fraction: float = 1.0, scaling=None):
  """Rotary position embedding (Su et al. 2021, eq. 34), "rotate-half" layout as in
  GPT-NeoX / HF Llama: dimension i pairs with i + d/2 among the first `fraction` of dims.

  x [B, T, N, H], positions [B, T] -> x rotated, same dtype.
  scaling: HF-style rope_scaling (see `rope_frequencies`; TransformerConfig.rope_scaling). It is static,
  so the frequencies are numpy constants; YaRN also scales cos and sin, as HF does.
  """
  rot = int(x.shape[-1] * fraction)
  half = rot // 2
  inv_freq, attention_factor = rope_frequencies(rot, theta, scaling)  # [rot/2]
  angles = positions[:, :, None, None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [B, T, 1, rot/2]
  cos, sin = jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor
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
