"""Attention diagnostics: per-row entropy, largest logit and weight, attention-sink mass and lse.

For looking at what heads do (per-layer per-head scalars for logging, attention maps of short inputs), never for
training: inputs are cast to float32 and wrapped in `stop_gradient`, so nothing here carries a gradient.

  * `attention_stats` makes one pass over key blocks with an online softmax (running max m, l = Σ exp(s − m),
    u = Σ exp(s − m)·(s − m)), so the largest intermediate is [B, N, T', block]: memory O(B·N·T'·block), never
    O(T·S); compute is one q·kᵀ, O(B·N·T'·S·H). T' is T, or the number of sampled query rows (`rows=`), which
    bounds the cost for long sequences.
  * `attention_probs` is the dense [B, N, T, S] softmax (memory O(B·N·T·S)), for attention maps of short inputs.
  * `summarize` reduces stats to per-head means [N], ignoring rows that see no key.

Arguments follow `jaxformer.attention.attention`: q [B,T,N,H], k [B,S,K,H] with N a multiple of K (GQA/MQA; query
head n reads kv head n // (N // K)); segment_ids [B,T] (T == S) or a pair ([B,T], [B,S]); window (left, right);
q_lengths / kv_lengths [B]; q_offset scalar or [B]; bias broadcastable to [B,N,T,S]; softcap; scale (default H^-½).
Logits are s = softcap·tanh(q·k·scale / softcap) + bias (no softcap: q·k·scale + bias), as in the backends.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.attention.api import check_bias
from jaxformer.attention.blockwise import _pad_axis
from jaxformer.attention.masks import MaskSpec

STAT_KEYS = ("entropy", "max_logit", "max_prob", "sink_mass", "lse")


# ---------------------------------------------------------------------------------------------------------------------
# Argument checks and shared pieces


def _mask_spec(name: str, q, k, *, causal, segment_ids, window, q_lengths, kv_lengths, q_offset, bias) -> MaskSpec:
  """Checks shapes (ValueError naming the problem) and builds the MaskSpec, as `attention` does."""
  if q.ndim != 4 or k.ndim != 4:
    raise ValueError(f"{name} expects q [B,T,N,H] and k [B,S,K,H]; got ranks {q.ndim} and {k.ndim}")
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  if k.shape[0] != B:
    raise ValueError(f"batch sizes differ: q {q.shape}, k {k.shape}")
  if k.shape[3] != H:
    raise ValueError(f"q head dim {H} != k head dim {k.shape[3]}")
  if K == 0 or N % K:
    raise ValueError(f"query heads N={N} must be a multiple of kv heads K={K}")
  if window is not None and not (isinstance(window, (tuple, list)) and len(window) == 2):
    raise ValueError(f"window must be a (left, right) pair, got {window!r}")
  q_seg = kv_seg = None
  if segment_ids is not None:
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
    q_seg, kv_seg = jnp.asarray(q_seg), jnp.asarray(kv_seg)
    if q_seg.shape != (B, T) or kv_seg.shape != (B, S):
      raise ValueError(f"segment ids must be [B,T]={B, T} and [B,S]={B, S}; got {q_seg.shape} and {kv_seg.shape}"
                       " (a single [B,T] array needs T == S; pass a pair otherwise)")
  as_array = lambda x: None if x is None else jnp.asarray(x)
  q_lengths, kv_lengths = as_array(q_lengths), as_array(kv_lengths)
  for field, lengths in (("q_lengths", q_lengths), ("kv_lengths", kv_lengths)):
    if lengths is not None and lengths.shape != (B,):
      raise ValueError(f"{field} must have shape [B]={B,}; got {lengths.shape}")
  check_bias(bias, (B, N, T, S))
  if bias is not None and len(jnp.shape(bias)) > 4:
    raise ValueError(f"bias must have at most 4 dims [B,N,T,S]; got shape {jnp.shape(bias)}")
  return MaskSpec(causal=causal, window=None if window is None else tuple(window), q_segment_ids=q_seg,
                  kv_segment_ids=kv_seg, q_lengths=q_lengths, kv_lengths=kv_lengths, q_offset=q_offset)


def _mask_arrays(mask: MaskSpec):
  """The traced fields of a MaskSpec (a pytree for jit): segment ids, lengths, q_offset (int32)."""
  return (mask.q_segment_ids, mask.kv_segment_ids, mask.q_lengths, mask.kv_lengths,
          jnp.asarray(mask.q_offset, jnp.int32))


def _rebuild_mask(arrays, causal: bool, window, pad_keys_to: int | None = None) -> MaskSpec:
  """`_mask_arrays` back into a MaskSpec; kv segment ids padded to `pad_keys_to` keys (padding is masked by
  `_tile_logits`, this only keeps the gather in bounds)."""
  q_seg, kv_seg, q_lengths, kv_lengths, q_offset = arrays
  if kv_seg is not None and pad_keys_to is not None:
    kv_seg = _pad_axis(kv_seg, 1, pad_keys_to)
  return MaskSpec(causal=causal, window=window, q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_lengths=q_lengths,
                  kv_lengths=kv_lengths, q_offset=q_offset)


def _resolve_rows(rows, T: int) -> np.ndarray:
  """`rows` -> the static int32 query-row indices [T'] (see `attention_stats`)."""
  if rows is None:
    return np.arange(T, dtype=np.int32)
  if isinstance(rows, (int, np.integer)) and not isinstance(rows, (bool, np.bool_)):
    if rows < 1:
      raise ValueError(f"rows={rows}: the number of sampled query rows must be >= 1")
    if rows >= T:
      return np.arange(T, dtype=np.int32)
    if rows == 1:
      return np.array([T - 1], np.int32)
    return np.round(np.linspace(0, T - 1, rows)).astype(np.int32)  # distinct: the spacing is > 1
  try:
    idx = np.asarray(rows)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    raise ValueError("rows must be static (None, an int or a concrete index array), not a traced value") from None
  if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
    raise ValueError(f"rows must be None, an int or a non-empty 1-d integer index array; got {rows!r}")
  if idx.min() < 0 or idx.max() >= T:
    raise ValueError(f"rows must index query rows in [0, T={T}); got values in [{idx.min()}, {idx.max()}]")
  return idx.astype(np.int32)


def _heads(q, k):
  """float32, gradient-stopped q [B,T',N,H] -> [B,K,G,T',H] and k [B,S,K,H] -> [B,K,S,H] (N = K·G)."""
  B, T, N, H = q.shape
  K = k.shape[2]
  q = lax.stop_gradient(jnp.asarray(q, jnp.float32))
  k = lax.stop_gradient(jnp.asarray(k, jnp.float32))
  return q.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3)


def _prepare_bias(bias, row_idx: np.ndarray | None, S_padded: int):
  """bias -> float32 [B|1, N|1, T'|1, Sp|1]: the sampled rows only, keys zero-padded to Sp. Broadcast dims stay 1."""
  if bias is None:
    return None
  bias = lax.stop_gradient(jnp.asarray(bias, jnp.float32))
  bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  if bias.shape[2] > 1 and row_idx is not None:
    bias = bias[:, :, row_idx]
  if bias.shape[3] > 1:
    bias = _pad_axis(bias, 3, S_padded)
  return bias


def _bias_tile(bias, start, size: int, num_kv_heads: int):
  """Keys [start, start + size) of the prepared bias, as [B|1, K|1, G|1, T'|1, size|1] (broadcasts to the logits)."""
  if bias is None:
    return None
  if bias.shape[3] > 1:
    bias = lax.dynamic_slice_in_dim(bias, start, size, axis=3)
  Bb, Nb = bias.shape[:2]
  if Nb > 1:
    return bias.reshape(Bb, num_kv_heads, Nb // num_kv_heads, *bias.shape[2:])
  return bias[:, :, None]


def _tile_logits(qh, k_blk, bias_blk, mask: MaskSpec, q_idx, kv_idx, *, S: int, scale: float, softcap):
  """Logits of query rows q_idx (qh [B,K,G,T',H]) against keys kv_idx (k_blk [B,K,S',H]): [B,K,G,T',S'] float32,
  −inf where the mask hides the key or kv_idx >= S (key padding). Cost O(B·N·T'·S'·H)."""
  s = jnp.einsum("bkgth,bksh->bkgts", qh, k_blk, precision=lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  if bias_blk is not None:
    s = s + bias_blk
  vis = mask.visible(q_idx, kv_idx) & (kv_idx < S)[None, None, :]  # [B|1, T', S']
  return jnp.where(vis[:, None, None], s, -jnp.inf)


# ---------------------------------------------------------------------------------------------------------------------
# Public functions


def attention_stats(q, k, *, causal: bool = False, segment_ids=None,
                    window: tuple[int | None, int | None] | None = None, bias=None, scale: float | None = None,
                    q_offset=0, q_lengths=None, kv_lengths=None, softcap: float | None = None, block_size: int = 512,
                    rows=None, sink_tokens: int = 1) -> dict[str, jnp.ndarray]:
  """Per query row statistics of the attention distribution softmax(s) over the keys the row can see.

  Returns float32 [B, N, T'] arrays
    "entropy":   Shannon entropy in nats, −Σ p log p (0 = one-hot, log(#visible) = uniform);
    "max_logit": the largest visible logit s (scaled, softcapped, plus bias);
    "max_prob":  the largest attention weight, exp(max_logit − lse);
    "sink_mass": the weight on keys 0 .. sink_tokens−1 (the "attention sink", Xiao et al. 2023);
    "lse":       log Σ exp(s) (equals the lse `attention(..., return_lse=True)` returns);
  and "rows": int32 [T'], the query rows used. A row that sees no key gets entropy 0, max_logit −inf, max_prob 0,
  sink_mass 0, lse −inf (never NaN).

  rows: None = all T query rows; an int R = R evenly spaced rows, np.linspace over [0, T) rounded, always including
  the last row (all rows when R >= T); or a concrete 1-d integer index array. Sampled rows keep their absolute
  positions (for causal / window / q_offset), segment ids and lengths. Rows are static: jit with
  static_argnames=("rows", ...) or close over them.

  One pass over key blocks of `block_size` (clipped to S; S is padded to a multiple with invisible keys) with an
  online softmax: memory O(B·N·T'·block_size), compute O(B·N·T'·S·H). The sink mass is computed from the first
  sink_tokens keys' logits directly, adding O(B·N·T'·sink_tokens). bias stays in its broadcast shape (its sampled
  rows only); it is sliced per key block, never broadcast to [B,N,T,S].
  """
  mask = _mask_spec("attention_stats", q, k, causal=causal, segment_ids=segment_ids, window=window,
                    q_lengths=q_lengths, kv_lengths=kv_lengths, q_offset=q_offset, bias=bias)
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
    raise ValueError(f"block_size must be a positive int; got {block_size!r}")
  if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, (int, np.integer)) or sink_tokens < 0:
    raise ValueError(f"sink_tokens must be an int >= 0; got {sink_tokens!r}")
  T, H, S = q.shape[1], q.shape[3], k.shape[1]
  row_idx = _resolve_rows(rows, T)  # [T']
  scale = H ** -0.5 if scale is None else scale
  stats = _stats(q, k, bias, jnp.asarray(row_idx), _mask_arrays(mask), scale, softcap, causal=bool(causal),
                 window=mask.window, all_rows=bool(np.array_equal(row_idx, np.arange(T))),
                 block=max(1, min(int(block_size), S)), num_sink=min(int(sink_tokens), S))
  stats["rows"] = jnp.asarray(row_idx, jnp.int32)
  return stats


@functools.partial(jax.jit, static_argnames=("causal", "window", "all_rows", "block", "num_sink"))
def _stats(q, k, bias, q_idx, mask_arrays, scale, softcap, *, causal: bool, window, all_rows: bool, block: int,
           num_sink: int):
  """The body of `attention_stats` (arguments checked; q_idx [T'] the rows; block <= S; num_sink <= S)."""
  B, T, N, _ = q.shape
  S, K = k.shape[1], k.shape[2]
  if not all_rows:
    q = q[:, q_idx]  # [B,T',N,H]
  qh, kh = _heads(q, k)  # [B,K,G,T',H], [B,K,S,H]
  num_blocks = -(-S // block)
  Sp = num_blocks * block
  kh = _pad_axis(kh, 2, Sp)  # [B,K,Sp,H]
  mask = _rebuild_mask(mask_arrays, causal, window, pad_keys_to=Sp)
  bias = _prepare_bias(bias, None if all_rows else q_idx, Sp)  # [B|1,N|1,T'|1,Sp|1]
  logits = lambda k_blk, start, size: _tile_logits(
      qh, k_blk, _bias_tile(bias, start, size, K), mask, q_idx, start + jnp.arange(size, dtype=jnp.int32), S=S,
      scale=scale, softcap=softcap)  # [B,K,G,T',size]

  def key_block(j, carry):
    m, denom, u = carry  # [B,K,G,T'] each: running max m, l = Σ exp(s − m), u = Σ exp(s − m)·(s − m)
    start = j * block
    s = logits(lax.dynamic_slice_in_dim(kh, start, block, axis=2), start, block)  # [B,K,G,T',block]
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing visible yet
    d = s - m_safe[..., None]
    p = jnp.exp(d)  # invisible -> 0
    alpha = jnp.exp(m - m_safe)  # m = −inf -> 0
    # Re-centre the old terms on the new max: Σ p'(s − m_new) = α(u + l·(m − m_new)); l = 0 while m = −inf.
    shift = jnp.where(denom > 0, denom * (m - m_safe), 0.0)
    u = alpha * (u + shift) + jnp.sum(jnp.where(p > 0, p * d, 0.0), axis=-1)
    denom = alpha * denom + jnp.sum(p, axis=-1)
    return m_new, denom, u

  G, R = N // K, q_idx.shape[0]
  init = (jnp.full((B, K, G, R), -jnp.inf, jnp.float32), jnp.zeros((B, K, G, R), jnp.float32),
          jnp.zeros((B, K, G, R), jnp.float32))
  m, denom, u = lax.fori_loop(0, num_blocks, key_block, init)
  live = denom > 0
  denom = jnp.where(live, denom, 1.0)
  log_denom = jnp.log(denom)
  lse = jnp.where(live, m + log_denom, -jnp.inf)
  entropy = jnp.where(live, jnp.maximum(log_denom - u / denom, 0.0), 0.0)  # H = lse − E[s] = log l − u / l
  max_prob = jnp.where(live, 1.0 / denom, 0.0)  # exp(m − lse) = 1 / l
  if num_sink:
    s = logits(kh[:, :, :num_sink], 0, num_sink)  # [B,K,G,T',num_sink]
    lse_safe = jnp.where(live, lse, 0.0)
    sink_mass = jnp.where(live, jnp.sum(jnp.exp(s - lse_safe[..., None]), axis=-1), 0.0)
  else:
    sink_mass = jnp.zeros_like(lse)
  stats = dict(entropy=entropy, max_logit=m, max_prob=max_prob, sink_mass=sink_mass, lse=lse)
  return {name: lax.stop_gradient(x.reshape(B, N, R)) for name, x in stats.items()}


def attention_probs(q, k, *, causal: bool = False, segment_ids=None,
                    window: tuple[int | None, int | None] | None = None, bias=None, scale: float | None = None,
                    q_offset=0, q_lengths=None, kv_lengths=None, softcap: float | None = None) -> jnp.ndarray:
  """The attention weights softmax(s) as a dense float32 [B, N, T, S] array (the reference backend's formula).

  For attention maps of short inputs: memory O(B·N·T·S), compute O(B·N·T·S·H). Rows that see no key are all zero.
  Arguments as in `attention_stats` (without the blocking and sampling ones).
  """
  mask = _mask_spec("attention_probs", q, k, causal=causal, segment_ids=segment_ids, window=window,
                    q_lengths=q_lengths, kv_lengths=kv_lengths, q_offset=q_offset, bias=bias)
  scale = q.shape[3] ** -0.5 if scale is None else scale
  return _probs(q, k, bias, _mask_arrays(mask), scale, softcap, causal=bool(causal), window=mask.window)


@functools.partial(jax.jit, static_argnames=("causal", "window"))
def _probs(q, k, bias, mask_arrays, scale, softcap, *, causal: bool, window):
  """The body of `attention_probs` (arguments checked)."""
  B, T, N, _ = q.shape
  S, K = k.shape[1], k.shape[2]
  qh, kh = _heads(q, k)  # [B,K,G,T,H], [B,K,S,H]
  bias = _bias_tile(_prepare_bias(bias, None, S), 0, S, K)
  s = _tile_logits(qh, kh, bias, _rebuild_mask(mask_arrays, causal, window), jnp.arange(T, dtype=jnp.int32),
                   jnp.arange(S, dtype=jnp.int32), S=S, scale=scale, softcap=softcap)  # [B,K,G,T,S]
  row_max = jnp.max(s, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked rows
  p = jnp.exp(s - row_max)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  probs = p / jnp.where(denom > 0, denom, 1.0)
  return lax.stop_gradient(probs.reshape(B, N, T, S))


def summarize(stats: dict, *, segment_ids=None, valid=None) -> dict[str, jnp.ndarray]:
  """Per-head means [N] of every [B, N, T'] stat, over the batch and the rows that see at least one key.

  valid: optional bool [B, T] over *all* query rows (e.g. from lengths); segment_ids: optional [B, T] query segment
  ids, where 0 marks padding (the MaskSpec convention). Either is gathered at stats["rows"]; give at most one.
  Returns the stats' keys (less "rows") plus "num_rows" [N]: how many rows each mean is over (float32). A head
  with no such row gets means of 0. Cost O(B·N·T'); works under jit.
  """
  if segment_ids is not None and valid is not None:
    raise ValueError("summarize takes segment_ids or valid, not both")
  if "lse" not in stats or "rows" not in stats:
    raise ValueError(f"summarize expects the dict attention_stats returns; got keys {sorted(stats)}")
  B = stats["lse"].shape[0]
  if segment_ids is not None:
    valid = jnp.asarray(segment_ids) != 0
  if valid is not None:
    valid = jnp.asarray(valid)
    if valid.ndim != 2 or valid.shape[0] != B:
      raise ValueError(f"valid / segment_ids must be [B, T] with B={B}; got shape {valid.shape}")
  return _summarize({name: x for name, x in stats.items() if name != "rows"}, stats["rows"], valid)


@jax.jit
def _summarize(stats, rows, valid):
  """The body of `summarize`: masked means over axes (0, 2) of every [B, N, T'] array."""
  live = jnp.isfinite(stats["lse"])  # [B,N,T']
  if valid is not None:
    live = live & valid.astype(bool)[:, rows][:, None, :]
  count = jnp.sum(live, axis=(0, 2)).astype(jnp.float32)  # [N]
  denom = jnp.maximum(count, 1.0)
  out = {name: jnp.sum(jnp.where(live, x, 0.0), axis=(0, 2)) / denom for name, x in stats.items()}
  out["num_rows"] = count
  return out
