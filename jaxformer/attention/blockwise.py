"""The `blockwise` backend: FlashAttention-2 style tiled attention in pure JAX.

Forward: for every query block (`lax.map`) a `lax.fori_loop` runs over key/value
blocks with an online softmax in float32 (running max m, running sum l and an
output accumulator), so the largest intermediate is [B, N, block_q, block_k]:
memory is O(T·block), never O(T·S). T and S are padded up to a multiple of the
block size internally; padded keys are masked and padded query rows dropped.

Skipping of invisible key blocks, two levels:
  * Static structure (causal, window, lengths): for each query block the range
    of key blocks that can hold a visible key is computed from the block's
    positions (q_offset's min/max over the batch, max q/kv length) and the inner
    `fori_loop` runs over exactly that dynamic range [lo, hi). The backward pass
    does the same per key block over query blocks.
  * Segment ids: inside the range, a block whose mask is all False for the
    whole batch is skipped with `lax.cond` (under `vmap` that becomes a select,
    i.e. computed and discarded — still correct).

Backward (`jax.custom_vjp`): the forward saves only q, k, v, out, lse and the
mask inputs/bias. The backward recomputes probabilities block by block from lse
(FlashAttention-2, Algorithm 2): D_i = rowsum(dO ∘ O), P = exp(S − lse),
dP = dO Vᵀ, dS = P ∘ (dP − D_i), with an outer scan over key blocks (dk, dv
accumulated per block) and an inner loop over the visible query blocks (dq and
d bias accumulated in place). A cotangent on lse is supported (it enters as
D_i − dlse). The softcap derivative (1 − tanh²) is applied to dS. Bias may be
any array broadcastable to [B, N, T, S]; its gradient is summed over broadcast
dimensions. Integer mask inputs get no gradient.

Matmul operands stay in the input dtype with float32 accumulation (exact for
fp32; standard flash practice for bf16). Fully masked query rows give out = 0,
lse = −inf and zero gradients. Dropout is not supported; because the backward
is a hand-written VJP, forward-mode autodiff (jvp) and second derivatives are
not supported either — use the reference backend for those.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxformer.attention.api import Backend, Request, register_backend
from jaxformer.attention.masks import MaskSpec

# Default tile sizes; both are clipped to T and S. Read at call time, so tests may patch them.
BLOCK_Q = 128
BLOCK_K = 128


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) description of one call; everything traced lives elsewhere."""
  causal: bool
  window: tuple[int | None, int | None] | None
  softcap: float | None
  scale: float
  T: int  # real (unpadded) query length
  S: int  # real (unpadded) key length
  block_q: int
  block_k: int
  masked: bool  # whether any mask has to be evaluated (including key padding)

  @property
  def num_q_blocks(self) -> int:
    return -(-self.T // self.block_q)

  @property
  def num_k_blocks(self) -> int:
    return -(-self.S // self.block_k)


def _carry(shape, fill, *likes):
  """A float32 loop carry of `shape` filled with `fill` that varies over the same manual mesh axes
  as `likes`, so `lax` loops type-check inside `jax.shard_map` (plain jnp.zeros would be replicated)."""
  out = jnp.full_like(likes[0], fill, dtype=jnp.float32, shape=shape)
  for x in likes[1:]:
    out = out + jnp.zeros_like(x, dtype=jnp.float32, shape=shape)
  return out


def _query_major(x, num_kv_heads: int):
  """Queries (or their cotangents) [B, T, N, D] -> [B, K, G, T, D], N = K·G."""
  B, T, N, D = x.shape
  return x.reshape(B, T, num_kv_heads, N // num_kv_heads, D).transpose(0, 2, 3, 1, 4)


def _kv_major(x):
  """Keys or values [B, S, K, D] -> [B, K, S, D]."""
  return x.transpose(0, 2, 1, 3)


def _dot(spec, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Masks and block ranges


def _block_visible(cfg: _Config, masks, q_start, k_start):
  """Visibility of query rows [q_start, q_start + bq) vs keys [k_start, k_start + bk): [B|1, bq, bk]."""
  q_seg, kv_seg, q_len, kv_len, offset = masks
  bq, bk = cfg.block_q, cfg.block_k
  if kv_len is None and cfg.S % bk:
    kv_len = jnp.full((1,), cfg.S, jnp.int32)  # the key padding
  # The same MaskSpec, shifted so the block's first query row and first key sit at index 0.
  spec = MaskSpec(
      causal=cfg.causal, window=cfg.window,
      q_segment_ids=None if q_seg is None else lax.dynamic_slice_in_dim(q_seg, q_start, bq, axis=1),
      kv_segment_ids=None if kv_seg is None else lax.dynamic_slice_in_dim(kv_seg, k_start, bk, axis=1),
      q_lengths=None if q_len is None else q_len - q_start,
      kv_lengths=None if kv_len is None else kv_len - k_start,
      q_offset=offset + q_start - k_start)
  return spec.visible(jnp.arange(bq), jnp.arange(bk))


def _query_row_limit(cfg: _Config, masks):
  """Exclusive upper bound on query rows that can see anything (scalar)."""
  q_len = masks[2]
  limit = jnp.int32(cfg.T)
  return limit if q_len is None else jnp.minimum(limit, jnp.max(q_len).astype(jnp.int32))


def _key_limit(cfg: _Config, masks):
  """Exclusive upper bound on keys that can be seen (scalar)."""
  kv_len = masks[3]
  limit = jnp.int32(cfg.S)
  return limit if kv_len is None else jnp.minimum(limit, jnp.max(kv_len).astype(jnp.int32))


def _clip_range(lo, hi, n):
  lo = jnp.clip(lo, 0, n)
  return lo, jnp.clip(hi, lo, n)


def _key_block_ranges(cfg: _Config, masks):
  """For each query block, the half-open range [lo, hi) of key blocks that may hold a visible key."""
  offset = masks[4]
  off_min, off_max = jnp.min(offset), jnp.max(offset)
  bq, bk = cfg.block_q, cfg.block_k
  q_start = jnp.arange(cfg.num_q_blocks, dtype=jnp.int32) * bq
  q_end = jnp.minimum(q_start + bq, _query_row_limit(cfg, masks))  # exclusive, real rows only
  k_lo = jnp.zeros_like(q_start)
  k_hi = jnp.broadcast_to(_key_limit(cfg, masks), q_start.shape)  # exclusive
  if cfg.causal:  # key <= pos = row + offset
    k_hi = jnp.minimum(k_hi, q_end + off_max)
  if cfg.window is not None:
    left, right = cfg.window
    if left is not None:  # key >= pos - left
      k_lo = jnp.maximum(k_lo, q_start + off_min - left)
    if right is not None:  # key <= pos + right
      k_hi = jnp.minimum(k_hi, q_end + off_max + right)
  k_hi = jnp.where(q_end > q_start, k_hi, k_lo)  # query block holds no live row
  return _clip_range(k_lo // bk, -(-k_hi // bk), cfg.num_k_blocks)


def _query_block_ranges(cfg: _Config, masks):
  """For each key block, the half-open range [lo, hi) of query blocks that may see one of its keys."""
  offset = masks[4]
  off_min, off_max = jnp.min(offset), jnp.max(offset)
  bq, bk = cfg.block_q, cfg.block_k
  k_start = jnp.arange(cfg.num_k_blocks, dtype=jnp.int32) * bk
  k_end = jnp.minimum(k_start + bk, _key_limit(cfg, masks))  # exclusive
  q_lo = jnp.zeros_like(k_start)
  q_hi = jnp.broadcast_to(_query_row_limit(cfg, masks), k_start.shape)  # exclusive
  if cfg.causal:  # row + offset >= key
    q_lo = jnp.maximum(q_lo, k_start - off_max)
  if cfg.window is not None:
    left, right = cfg.window
    if right is not None:  # row + offset + right >= key
      q_lo = jnp.maximum(q_lo, k_start - off_max - right)
    if left is not None:  # row + offset - left <= key
      q_hi = jnp.minimum(q_hi, k_end + left - off_min)
  q_hi = jnp.where(k_end > k_start, q_hi, q_lo)
  return _clip_range(q_lo // bq, -(-q_hi // bq), cfg.num_q_blocks)


# ---------------------------------------------------------------------------------------------------------------------
# Per-block pieces


def _bias_block(cfg: _Config, bias, q_start, k_start, num_kv_heads: int):
  """The bias tile as [B|1, K|1, G|1, bq|1, bk|1] float32."""
  Bb, Nb, Tb, Sb = bias.shape
  if Tb > 1:
    bias = lax.dynamic_slice_in_dim(bias, q_start, cfg.block_q, axis=2)
  if Sb > 1:
    bias = lax.dynamic_slice_in_dim(bias, k_start, cfg.block_k, axis=3)
  if Nb > 1:
    return bias.reshape(Bb, num_kv_heads, Nb // num_kv_heads, *bias.shape[2:])
  return bias[:, :, None]


def _logits(cfg: _Config, q_blk, k_blk, bias, masks, q_start, k_start):
  """Returns (raw scaled scores, tanh or None, final logits with -inf where invisible, visibility or None)."""
  s = _dot("bkgqd,bksd->bkgqs", q_blk, k_blk) * cfg.scale  # [B,K,G,bq,bk]
  t = None
  logits = s
  if cfg.softcap is not None:
    t = jnp.tanh(s / cfg.softcap)
    logits = cfg.softcap * t
  if bias is not None:
    logits = logits + _bias_block(cfg, bias, q_start, k_start, k_blk.shape[1])
  vis = None
  if cfg.masked:
    vis = _block_visible(cfg, masks, q_start, k_start)[:, None, None]  # [B|1,1,1,bq,bk]
    logits = jnp.where(vis, logits, -jnp.inf)
  return t, logits, vis


def _maybe_skip(masks, vis_fn, compute, carry):
  """With segment ids, skip a block whose mask is all False (for the whole batch)."""
  if masks[0] is None:
    return compute(carry)
  return lax.cond(jnp.any(vis_fn()), compute, lambda c: c, carry)


# ---------------------------------------------------------------------------------------------------------------------
# Forward


def _forward(cfg: _Config, q, k, v, bias, masks):
  """Padded q [B,Tp,N,D], k [B,Sp,K,D], v [B,Sp,K,Dv] -> (out [B,Tp,N,Dv] q.dtype, lse [B,N,Tp] fp32)."""
  B, Tp, N, D = q.shape
  K, Dv = k.shape[2], v.shape[3]
  G = N // K
  bq, bk = cfg.block_q, cfg.block_k
  # Head-major layouts, transposed once here, so every tile product is a plain batched matmul
  # (einsums over [B,T,K,...] tiles made XLA transpose each tile: ~30% slower on CPU).
  qh, kh, vh = _query_major(q, K), _kv_major(k), _kv_major(v)  # [B,K,G,Tp,D], [B,K,Sp,D], [B,K,Sp,Dv]
  k_lo, k_hi = _key_block_ranges(cfg, masks)

  def query_block(args):
    i, lo, hi = args
    q_start = i * bq
    q_blk = lax.dynamic_slice_in_dim(qh, q_start, bq, axis=3)  # [B,K,G,bq,D]

    def key_block(j, carry):
      k_start = j * bk

      def compute(carry):
        m, denom, acc = carry
        k_blk = lax.dynamic_slice_in_dim(kh, k_start, bk, axis=2)  # [B,K,bk,D]
        v_blk = lax.dynamic_slice_in_dim(vh, k_start, bk, axis=2)
        _, logits, _ = _logits(cfg, q_blk, k_blk, bias, masks, q_start, k_start)
        m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing visible yet
        p = jnp.exp(logits - m_safe[..., None])  # invisible -> exp(-inf) = 0
        alpha = jnp.exp(m - m_safe)  # m = -inf -> 0
        denom = alpha * denom + jnp.sum(p, axis=-1)
        acc = alpha[..., None] * acc + _dot("bkgqs,bksd->bkgqd", p.astype(v.dtype), v_blk)
        return m_new, denom, acc

      return _maybe_skip(masks, lambda: _block_visible(cfg, masks, q_start, k_start), compute, carry)

    init = (_carry((B, K, G, bq), -jnp.inf, q, k, v), _carry((B, K, G, bq), 0.0, q, k, v),
            _carry((B, K, G, bq, Dv), 0.0, q, k, v))
    m, denom, acc = lax.fori_loop(lo, hi, key_block, init)
    live = denom > 0
    lse = jnp.where(live, m + jnp.log(jnp.where(live, denom, 1.0)), -jnp.inf)
    out = acc / jnp.where(live, denom, 1.0)[..., None]
    return out.astype(q.dtype), lse

  nq = cfg.num_q_blocks
  out, lse = lax.map(query_block, (jnp.arange(nq, dtype=jnp.int32), k_lo, k_hi))  # [nq,B,K,G,bq,(Dv)]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(B, Tp, N, Dv)
  lse = lse.transpose(1, 2, 3, 0, 4).reshape(B, N, Tp)
  return out, lse


# ---------------------------------------------------------------------------------------------------------------------
# Backward


def _backward(cfg: _Config, q, k, v, bias, masks, out, lse, d_out, d_lse):
  B, Tp, N, D = q.shape
  Sp, K, Dv = k.shape[1], k.shape[2], v.shape[3]
  G = N // K
  bq, bk = cfg.block_q, cfg.block_k
  qh, kh, vh, doh = _query_major(q, K), _kv_major(k), _kv_major(v), _query_major(d_out, K)
  # D_i = rowsum(dO ∘ O); a cotangent on lse adds P·dlse to dS, i.e. it enters as D_i - dlse.
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B,Tp,N]
  delta = delta.transpose(0, 2, 1) - d_lse.astype(jnp.float32)
  delta = delta.reshape(B, K, G, Tp)
  lse = lse.reshape(B, K, G, Tp)
  lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # fully masked rows have P = 0 anyway
  q_lo, q_hi = _query_block_ranges(cfg, masks)

  def key_block(carry, args):
    j, lo, hi = args
    k_start = j * bk
    k_blk = lax.dynamic_slice_in_dim(kh, k_start, bk, axis=2)  # [B,K,bk,D]
    v_blk = lax.dynamic_slice_in_dim(vh, k_start, bk, axis=2)

    def query_block(i, carry):
      q_start = i * bq

      def compute(carry):
        dq, dbias, dk, dv = carry
        q_blk = lax.dynamic_slice_in_dim(qh, q_start, bq, axis=3)  # [B,K,G,bq,D]
        do_blk = lax.dynamic_slice_in_dim(doh, q_start, bq, axis=3)  # [B,K,G,bq,Dv]
        lse_blk = lax.dynamic_slice_in_dim(lse, q_start, bq, axis=3)  # [B,K,G,bq]
        delta_blk = lax.dynamic_slice_in_dim(delta, q_start, bq, axis=3)
        t, logits, vis = _logits(cfg, q_blk, k_blk, bias, masks, q_start, k_start)
        p = jnp.exp(logits - lse_blk[..., None])  # [B,K,G,bq,bk]
        if vis is not None:
          p = jnp.where(vis, p, 0.0)
        dv = dv + _dot("bkgqs,bkgqd->bksd", p.astype(v.dtype), do_blk)
        dp = _dot("bkgqd,bksd->bkgqs", do_blk, v_blk)
        ds = p * (dp - delta_blk[..., None])  # d logits
        if dbias is not None:
          dbias = _accumulate_dbias(cfg, dbias, ds, q_start, k_start)
        if t is not None:
          ds = ds * (1.0 - t * t)
        ds = (ds * cfg.scale).astype(q.dtype)
        dq_blk = lax.dynamic_slice_in_dim(dq, q_start, bq, axis=3)
        dq = lax.dynamic_update_slice_in_dim(dq, dq_blk + _dot("bkgqs,bksd->bkgqd", ds, k_blk), q_start, axis=3)
        dk = dk + _dot("bkgqs,bkgqd->bksd", ds, q_blk)
        return dq, dbias, dk, dv

      return _maybe_skip(masks, lambda: _block_visible(cfg, masks, q_start, k_start), compute, carry)

    dq, dbias = carry
    init = (dq, dbias, _carry((B, K, bk, D), 0.0, q, k, v, d_out), _carry((B, K, bk, Dv), 0.0, q, k, v, d_out))
    dq, dbias, dk, dv = lax.fori_loop(lo, hi, query_block, init)
    return (dq, dbias), (dk, dv)

  likes = (q, k, v, d_out)
  init = (_carry((B, K, G, Tp, D), 0.0, *likes), None if bias is None else _carry(bias.shape, 0.0, bias, *likes))
  nk = cfg.num_k_blocks
  (dq, dbias), (dk, dv) = lax.scan(key_block, init, (jnp.arange(nk, dtype=jnp.int32), q_lo, q_hi))
  dq = dq.transpose(0, 3, 1, 2, 4).reshape(B, Tp, N, D).astype(q.dtype)
  dk = dk.transpose(1, 0, 3, 2, 4).reshape(B, Sp, K, D).astype(k.dtype)  # [nk,B,K,bk,D] -> [B,Sp,K,D]
  dv = dv.transpose(1, 0, 3, 2, 4).reshape(B, Sp, K, Dv).astype(v.dtype)
  return dq, dk, dv, dbias


def _accumulate_dbias(cfg: _Config, dbias, ds, q_start, k_start):
  """Adds the tile ds [B,K,G,bq,bk] into dbias [Bb,Nb,Tb,Sb], summing over the bias's broadcast dims."""
  Bb, Nb, Tb, Sb = dbias.shape
  B, K, G, bq, bk = ds.shape
  axes = tuple(ax for ax, keep in ((0, Bb > 1), (3, Tb > 1), (4, Sb > 1)) if not keep)
  ds = jnp.sum(ds, axis=axes, keepdims=True)
  ds = ds.reshape(ds.shape[0], K * G, *ds.shape[3:])  # [Bb, N, bq|1, bk|1]
  if Nb == 1:
    ds = jnp.sum(ds, axis=1, keepdims=True)
  starts = (0, 0, q_start if Tb > 1 else 0, k_start if Sb > 1 else 0)
  return lax.dynamic_update_slice(dbias, lax.dynamic_slice(dbias, starts, ds.shape) + ds, starts)


# ---------------------------------------------------------------------------------------------------------------------
# custom_vjp wiring and the public function


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: _Config, q, k, v, bias, masks):
  return _forward(cfg, q, k, v, bias, masks)


def _flash_fwd(cfg: _Config, q, k, v, bias, masks):
  out, lse = _forward(cfg, q, k, v, bias, masks)
  return (out, lse), (q, k, v, bias, masks, out, lse)


def _flash_bwd(cfg: _Config, residuals, cotangents):
  q, k, v, bias, masks, out, lse = residuals
  d_out, d_lse = cotangents
  dq, dk, dv, dbias = _backward(cfg, q, k, v, bias, masks, out, lse, d_out, d_lse)
  return dq, dk, dv, dbias, None  # integer mask inputs: no gradient


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pad_axis(x, axis: int, size: int, value=0):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _prepare(mask: MaskSpec, T: int, S: int, *, block_q: int, block_k: int, softcap=None, scale: float = 1.0):
  """The static config and the (padded, int32) mask arrays (q_seg, kv_seg, q_len, kv_len, q_offset [B|1,1,1]).

  Padded query rows get segment -1 (so they do not defeat the segment skip); padded keys are masked by length.
  """
  bq, bk = max(1, min(block_q, T)), max(1, min(block_k, S))
  Tp, Sp = -(-T // bq) * bq, -(-S // bk) * bk
  cfg = _Config(causal=bool(mask.causal), window=None if mask.window is None else tuple(mask.window),
                softcap=None if softcap is None else float(softcap), scale=float(scale), T=T, S=S,
                block_q=bq, block_k=bk, masked=not mask.is_trivial or Sp != S)
  as_int = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  q_seg, kv_seg = as_int(mask.q_segment_ids), as_int(mask.kv_segment_ids)
  masks = (None if q_seg is None else _pad_axis(q_seg, 1, Tp, -1), None if kv_seg is None else _pad_axis(kv_seg, 1, Sp),
           as_int(mask.q_lengths), as_int(mask.kv_lengths), jnp.asarray(mask.q_offset, jnp.int32).reshape(-1, 1, 1))
  return cfg, masks


def blockwise_attention(q, k, v, *, mask: MaskSpec, bias=None, softcap=None, scale: float,
                        dropout_rate: float = 0.0, dropout_rng=None, block_q: int | None = None,
                        block_k: int | None = None):
  """q [B,T,N,D], k [B,S,K,D], v [B,S,K,Dv] -> (out [B,T,N,Dv], lse [B,N,T] fp32). See the module docstring."""
  del dropout_rng
  if dropout_rate > 0.0:
    raise ValueError("the blockwise attention backend does not support dropout")
  T, S = q.shape[1], k.shape[1]
  cfg, masks = _prepare(mask, T, S, block_q=block_q or BLOCK_Q, block_k=block_k or BLOCK_K, softcap=softcap,
                        scale=scale)
  Tp, Sp = cfg.num_q_blocks * cfg.block_q, cfg.num_k_blocks * cfg.block_k
  if bias is not None:
    bias = jnp.asarray(bias)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape).astype(jnp.float32)
    if bias.shape[2] > 1:
      bias = _pad_axis(bias, 2, Tp)
    if bias.shape[3] > 1:
      bias = _pad_axis(bias, 3, Sp)
  out, lse = _flash(cfg, _pad_axis(q, 1, Tp), _pad_axis(k, 1, Sp), _pad_axis(v, 1, Sp), bias, masks)
  return out[:, :T], lse[..., :T]


def _supports(request: Request) -> str | None:
  if request.dropout:
    return "dropout is not supported by the blockwise backend (use implementation='reference')"
  return None


register_backend(Backend("blockwise", blockwise_attention, _supports))
