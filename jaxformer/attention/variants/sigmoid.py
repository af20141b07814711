"""Sigmoid attention: Ramapuram et al. 2024, "Theory, Analysis, and Best Practices for Sigmoid Self-Attention"
(arXiv:2409.04431).

The row-wise softmax is replaced by an elementwise sigmoid with a scalar bias b:

    out_i = Σ_j m_ij σ(q_i·k_j·scale + bias_ij + b) v_j

with m the structured mask (causal / window / segments / q_offset, the conventions of
`jaxformer.attention.attention` and `MaskSpec`), bias an optional additive term (e.g.
ALiBi, which the paper pairs with sigmoid attention), scale = H^-1/2 by default. There
is no normalisation across keys: each weight lies in (0, 1) independently of the
others, and a row that sees no key returns 0.

Stabilisation (the paper's best practices): without normalisation the output norm
grows with the number of visible keys, and early in training every weight is ≈ σ(b);
the paper sets b = -log n (n the sequence length) so that Σ_j σ(·) starts near 1, and
that is the default here, with n = S, the key length. Its other stabilisers, LayerScale
and QK-norm, act on the model's parameters and activations (before q, k reach this
function), so they belong to the model, not here.

Since rows are independent and nothing is normalised, the sum over keys is split into
blocks of `block_size` keys that a `lax.scan` adds up: the [T, S] weight matrix never
exists, only one [T, block_size] tile per head at a time. Each block's contribution is
wrapped in `jax.checkpoint`, so reverse-mode autodiff recomputes the tile instead of
storing one per block. Gradients come from JAX autodiff; FlashSigmoid, the paper's
hardware-aware GPU kernel (tiling over queries too, fused backward), is not implemented.

Shape names: B batch, T query length, S key length, N query heads, K kv heads,
G = N // K query heads per kv head, H head dim (q, k), Hv value head dim,
bs key block size, S' = S rounded up to a multiple of bs.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxformer.attention.api import check_bias, check_qkv
from jaxformer.attention.masks import MaskSpec

DEFAULT_BLOCK_SIZE = 256


def _segments(segment_ids):
  if segment_ids is None:
    return None, None
  q_seg, kv_seg = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
  return jnp.asarray(q_seg), jnp.asarray(kv_seg)


def _check_args(q, k, v, causal, q_seg, kv_seg, window, bias, block_size):
  B, T, N, S, _ = check_qkv(q, k, v, "sigmoid_attention")  # causal T != S: decoding against a KV cache
  if q_seg is not None:
    if tuple(q_seg.shape) != (B, T) or tuple(kv_seg.shape) != (B, S):
      raise ValueError(f"segment ids must be [B,T]={B, T} and [B,S]={B, S} (a single [B,T] array needs T == S); "
                       f"got {tuple(q_seg.shape)} and {tuple(kv_seg.shape)}")
    if not (jnp.issubdtype(q_seg.dtype, jnp.integer) and jnp.issubdtype(kv_seg.dtype, jnp.integer)):
      raise ValueError(f"segment ids must be integers; got dtypes {q_seg.dtype}, {kv_seg.dtype}")
  if window is not None and (not isinstance(window, (tuple, list)) or len(window) != 2):
    raise ValueError(f"window must be a (left, right) pair, got {window!r}")
  check_bias(bias, (B, N, T, S))
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
    raise ValueError(f"block_size must be a positive int; got {block_size!r}")


def _bias_blocks(bias, N, K, S, Sp, bs):
  """bias (broadcastable to [B,N,T,S]) -> (blocks, const): per-block slices [nb,b,k,g,t,bs] to scan over when bias
  varies along keys, else one [b,k,g,t,1] constant; head axis split as (K, G) or kept as (1, 1)."""
  bias = bias.astype(jnp.float32)
  bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)  # [b, n, t, s] with b∈{1,B}, n∈{1,N}, t∈{1,T}, s∈{1,S}
  b, n, t, s = bias.shape
  heads = (K, N // K) if n == N else (1, 1)
  if s == 1:
    return None, bias.reshape((b,) + heads + (t, 1))
  bias = jnp.pad(bias, [(0, 0), (0, 0), (0, 0), (0, Sp - S)])
  bias = bias.reshape((b,) + heads + (t, Sp // bs, bs))
  return jnp.moveaxis(bias, -2, 0), None


def sigmoid_attention(q, k, v, *, causal: bool = False, segment_ids=None,
                      window: tuple[int | None, int | None] | None = None, bias=None, scale: float | None = None,
                      sigmoid_bias: float | None = None, q_offset=0, block_size: int = DEFAULT_BLOCK_SIZE):
  """Sigmoid attention (Ramapuram et al. 2024): out_i = Σ_j m_ij σ(q_i·k_j·scale + bias_ij + b) v_j.

  q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv] (GQA/MQA: N a multiple of K; query head n reads
  kv head n // G) -> [B,T,N,Hv] in q's dtype; computed in float32 (matmul precision
  follows jax_default_matmul_precision).

  causal: key j visible from row i iff j <= i + q_offset (T != S with q_offset: decoding with a KV cache).
  window: (left, right): visible iff i + q_offset - left <= j <= i + q_offset + right
    (None on a side: unbounded).
  segment_ids: [B,T] (self-attention, T == S) or a pair ([B,T], [B,S]); visible iff equal.
  bias: additive, broadcastable to [B,N,T,S] (e.g. ALiBi); sliced per key block, so a
    bias of full key length costs its own size in memory but adds no [T, S] temporary.
  scale: multiplies q·k; default H^-1/2.
  sigmoid_bias: the scalar b inside σ; default -log(S), the paper's b = -log n.
  q_offset: scalar or [B]; absolute position of query row 0 (as in `attention`).
  block_size: keys per scan step, bs = min(block_size, S); S needs not be a multiple
    (keys are padded to S' and the padding is invisible).

  All mask fields combine (AND). No normalisation over keys: a row that sees no key
  returns exactly 0 (masked weights are set to 0, never σ(-inf) of a finite logit).

  Cost: FLOPs ≈ 2·B·N·T·S'·(H + Hv) (logits and weighted sum) plus B·N·T·S' sigmoids —
  the mask does not skip fully masked blocks, so causal costs as much as non-causal.
  Forward memory beyond inputs/outputs: one [B,N,T,bs] float32 tile (plus the mask
  tile [B,T,bs]) and the float32 accumulator [B,T,N,Hv]; never [T, S]. Under
  reverse-mode autodiff each block is recomputed (jax.checkpoint), so the saved
  residuals are the (padded) inputs, not S'/bs tiles, and the backward peak is again
  O(B·N·T·bs).

  Raises ValueError for inconsistent shapes (ranks, batch, head dims, N % K != 0),
  badly shaped segment ids or bias, a window that is not a pair,
  and block_size < 1.
  """
  q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
  q_seg, kv_seg = _segments(segment_ids)
  if bias is not None:
    bias = jnp.asarray(bias)
  _check_args(q, k, v, causal, q_seg, kv_seg, window, bias, block_size)
  B, T, N, H = q.shape
  S, K, Hv = k.shape[1], k.shape[2], v.shape[3]
  G = N // K
  if T == 0 or S == 0:
    return jnp.zeros((B, T, N, Hv), q.dtype)
  scale = H ** -0.5 if scale is None else scale
  b = -math.log(S) if sigmoid_bias is None else sigmoid_bias
  bs = min(int(block_size), S)
  nb = -(-S // bs)
  Sp = nb * bs
  pad = Sp - S

  def blocks(x):  # [B,S,...] -> [nb,B,bs,...], padded keys at the end
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((B, nb, bs) + x.shape[2:]), 1, 0)

  if kv_seg is not None:
    kv_seg = jnp.pad(kv_seg, [(0, 0), (0, pad)])  # read through MaskSpec at padded indices; those keys are cut below
  mask = MaskSpec(causal=causal, window=tuple(window) if window is not None else None, q_segment_ids=q_seg,
                  kv_segment_ids=kv_seg, q_offset=q_offset)
  bias_xs, bias_const = (None, None) if bias is None else _bias_blocks(bias, N, K, S, Sp, bs)

  qf = q.astype(jnp.float32).reshape(B, T, K, G, H)
  q_idx = jnp.arange(T, dtype=jnp.int32)
  xs = (blocks(k.astype(jnp.float32)), blocks(v.astype(jnp.float32)),
        jnp.arange(Sp, dtype=jnp.int32).reshape(nb, bs), bias_xs)

  @jax.checkpoint  # backward recomputes the block: no [T, bs] tile is saved per block
  def contribution(x):
    k_b, v_b, kv_idx, bias_b = x
    logits = jnp.einsum("btkgh,bskh->bkgts", qf, k_b) * scale + b  # [B,K,G,T,bs]
    if bias_b is not None:
      logits = logits + bias_b
    elif bias_const is not None:
      logits = logits + bias_const
    # [B|1,T,bs]; padded keys also have v = 0, so the `< S` cut is belt and braces (it keeps them out of p)
    visible = mask.visible(q_idx, kv_idx) & (kv_idx < S)[None, None, :]
    p = jnp.where(visible[:, None, None], jax.nn.sigmoid(logits), 0.0)
    return jnp.einsum("bkgts,bskv->btkgv", p, v_b)

  def step(acc, x):  # linear in acc: only `contribution` has residuals
    return acc + contribution(x), None

  out, _ = lax.scan(step, jnp.zeros((B, T, K, G, Hv), jnp.float32), xs)
  return out.reshape(B, T, N, Hv).astype(q.dtype)
