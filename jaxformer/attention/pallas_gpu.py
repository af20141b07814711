"""The `pallas_gpu` backend: FlashAttention-2 (Dao, 2023) as Pallas kernels for NVIDIA GPUs, forward and backward.

Lowering: Pallas' Triton lowering, selected explicitly by passing `triton.CompilerParams` (a `pallas_call` without
compiler params lowers to Mosaic GPU since jax 0.9). Why not Mosaic GPU: its kernels use the Hopper warpgroup model
(TMA, wgmma, barriers, 64-row tiles), `pallas_call` for it is deprecated in favour of `plgpu.kernel` (jax 0.10), and
it has its own interpreter; the Triton-style body here is plain `jax.numpy` on refs, which Pallas' generic interpreter
runs on CPU (the tests) and which runs on Ampere and newer (H200 included). `triton.CompilerParams` (renamed from
`TritonCompilerParams` in jax 0.7) exists in jax 0.10 and 0.11; 0.11 deprecates the Triton backend (to be removed in
a future version; it may warn when lowering). Where a jax lacks it, `_supports` says so and callers fall back.

Kernels (grid axis 0 walks tiles, so consecutive programs share one head's K/V in L2):
  * forward, grid (T/bq, B, N): the query tile stays resident while a `fori_loop` streams K/V tiles with an online
    softmax in fp32 (running max m, denominator, accumulator); writes out and lse = m + log(denominator).
  * dq, grid (T/bq, B, N): per K/V tile recomputes P = exp(S − lse), dS = P ∘ (dO Vᵀ − Δ); dq = scale · Σ dS K.
  * dk/dv, grid (S/bk, B, K): the K/V tile stays resident; one loop over (query head of its GQA group, query tile):
    dv += Pᵀ dO, dk += scale · dSᵀ Q. No atomics.
  Δ = rowsum(dO ∘ O) − dlse is plain JAX. GQA/MQA: BlockSpec index maps send query head n to kv head n // (N/K), so
  K/V are never repeated in memory. Softcap enters dS as (1 − tanh²).

Masks (causal, window, segment ids, q/kv lengths, q_offset scalar or [B]) are evaluated per tile from indices. Tile
skipping: before each kernel, plain JAX derives per (batch, tile) the range [lo, hi) of tiles on the other axis that
may hold a visible pair (from positions, lengths, q_offset and each tile's min/max segment id); the kernel loops over
exactly that range. Fully masked rows give out = 0, lse = −inf, zero gradients. T and S are padded to tile multiples;
head dims are zero-padded to a power of two >= 16 (exact; up to 2x work for other sizes). fp32 inputs use IEEE fp32
dots (Triton defaults to TF32); bf16/fp16 operands stay 16-bit with fp32 accumulation.

Sharding: `pallas_call` is not auto-partitioned. Under a sharded mesh call `attention(...)` inside `jax.shard_map`
(the kernels then see per-device shapes; outputs carry the operands' varying mesh axes for check_vma).

Not supported: bias, dropout, forward-mode autodiff, second derivatives.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxformer.attention.api import Backend, Request, is_interpret_mode, register_backend
from jaxformer.attention.masks import MaskSpec

try:  # Deprecated in jax 0.11; absent in some future version.
  from jax.experimental.pallas import triton as _pltriton
except ImportError:  # pragma: no cover - depends on the jax version
  _pltriton = None
_TritonParams = getattr(_pltriton, "CompilerParams", None) or getattr(_pltriton, "TritonCompilerParams", None)

# Preferred tile sizes (powers of two; clipped to the sequence lengths, at least 16 because Triton's dot needs
# M, N, K >= 16). Read at call time so tests can patch them. Not yet tuned on the H200.
BLOCK_Q, BLOCK_K = 128, 64  # forward
BLOCK_Q_DQ, BLOCK_K_DQ = 64, 32  # dq kernel (query tile resident)
BLOCK_Q_DKV, BLOCK_K_DKV = 32, 64  # dk/dv kernel (key tile resident)
NUM_STAGES = 2
MAX_HEAD_DIM = 256  # register budget of a [block, head_dim] fp32 accumulator
_MAX_GRID_YZ = 65535  # CUDA limit on gridDim.y / gridDim.z (batch, heads)
_DTYPES = ("float32", "bfloat16", "float16")
_MIN_TILE = 16


def _next_pow2(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()


def _floor_pow2(n: int) -> int:
  return 1 << (max(1, n).bit_length() - 1)


def _tile(pref: int, n: int) -> int:
  return max(_MIN_TILE, min(_floor_pow2(pref), _next_pow2(n)))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) description of one call."""
  causal: bool
  window: tuple[int | None, int | None] | None
  softcap: float | None
  scale: float
  T: int  # real lengths
  S: int
  Tp: int  # padded lengths
  Sp: int
  fwd: tuple[int, int]  # (block_q, block_k) per kernel
  dq: tuple[int, int]
  dkdv: tuple[int, int]
  segments: bool
  q_lengths: bool
  kv_lengths: bool
  interpret: bool
  num_warps: int

  @property
  def positions(self) -> bool:
    return self.causal or self.window is not None

  @property
  def masked(self) -> bool:
    return self.positions or self.segments or self.q_lengths or self.kv_lengths or self.Sp != self.S


# ---------------------------------------------------------------------------------------------------------------------
# Tile-range computation (plain JAX, outside the kernels)


def _segment_bounds(seg, n: int, blk: int, limit):
  """Min and max segment id over the live entries (index < limit [B,1]) of each tile: [B, n] each."""
  B = seg.shape[0]
  seg = seg.reshape(B, n, blk)
  live = (jnp.arange(n * blk, dtype=jnp.int32).reshape(n, blk)[None] < limit[:, :, None])
  info = jnp.iinfo(jnp.int32)
  return jnp.min(jnp.where(live, seg, info.max), axis=2), jnp.max(jnp.where(live, seg, info.min), axis=2)


def _first_last(cand, axis: int):
  """First index and one past the last index where cand is True along `axis` (0, 0 when none)."""
  n = cand.shape[axis]
  some = jnp.any(cand, axis=axis)
  first = jnp.argmax(cand, axis=axis)
  last = n - jnp.argmax(jnp.flip(cand, axis=axis), axis=axis)
  return jnp.where(some, first, 0).astype(jnp.int32), jnp.where(some, last, 0).astype(jnp.int32)


def _tile_ranges(cfg: _Config, masks, batch: int, bq: int, bk: int):
  """For tiles of bq queries x bk keys: which tile pairs may hold a visible pair, as ranges.

  Returns (k_lo, k_hi) [B, nq]: key tiles to visit per query tile, and (q_lo, q_hi) [B, nk]: query tiles per key tile.
  The candidate set is a superset of the visible pairs (the kernels mask inside), exact for causal/window/lengths and
  for packed (sorted) segment ids.
  """
  q_seg, kv_seg, q_len, kv_len, offset = masks
  nq, nk = cfg.Tp // bq, cfg.Sp // bk
  q_start = jnp.arange(nq, dtype=jnp.int32) * bq
  k_start = jnp.arange(nk, dtype=jnp.int32) * bk
  q_lim = jnp.full((batch, 1), cfg.T, jnp.int32) if q_len is None else jnp.minimum(q_len, cfg.T)[:, None]
  k_lim = jnp.full((batch, 1), cfg.S, jnp.int32) if kv_len is None else jnp.minimum(kv_len, cfg.S)[:, None]
  q_end = jnp.minimum(q_start[None] + bq, q_lim)  # [B, nq], exclusive end of the live rows
  k_end = jnp.minimum(k_start[None] + bk, k_lim)  # [B, nk]
  cand = (q_end > q_start)[:, :, None] & (k_end > k_start)[:, None, :]  # [B, nq, nk]
  if cfg.positions:
    off = offset[:, None, None]
    first_pos = q_start[None, :, None] + off  # position of the tile's first row
    last_pos = q_end[:, :, None] - 1 + off  # and of its last live row
    first_key, last_key = k_start[None, None, :], k_end[:, None, :] - 1
    if cfg.causal:
      cand &= first_key <= last_pos
    if cfg.window is not None:
      left, right = cfg.window
      if left is not None:
        cand &= last_key >= first_pos - left
      if right is not None:
        cand &= first_key <= last_pos + right
  if cfg.segments:
    q_min, q_max = _segment_bounds(q_seg, nq, bq, q_lim)
    k_min, k_max = _segment_bounds(kv_seg, nk, bk, k_lim)
    cand &= (q_min[:, :, None] <= k_max[:, None, :]) & (k_min[:, None, :] <= q_max[:, :, None])
  return _first_last(cand, 2), _first_last(cand, 1)


# ---------------------------------------------------------------------------------------------------------------------
# In-kernel helpers


def _dot(a, b, contract):
  """a·b contracting dims `contract`, fp32 accumulation; IEEE fp32 for fp32 inputs (Triton's default is TF32)."""
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return lax.dot_general(a, b, (contract, ((), ())), precision=precision, preferred_element_type=jnp.float32)


_NT = ((1,), (1,))  # a @ b.T
_NN = ((1,), (0,))  # a @ b
_TN = ((0,), (0,))  # a.T @ b


def _scores(cfg: _Config, q, k):
  """Scaled (and soft-capped) logits [bq, bk] fp32, plus tanh(s / softcap) for the backward (or None)."""
  s = _dot(q, k, _NT) * cfg.scale
  if cfg.softcap is None:
    return s, None
  t = jnp.tanh(s / cfg.softcap)
  return cfg.softcap * t, t


class _Masks:
  """The kernel's view of the mask operands; loads the per-batch scalars once per program."""

  def __init__(self, cfg: _Config, refs):
    self.cfg = cfg
    refs = list(refs)
    self.q_seg = refs.pop(0) if cfg.segments else None
    self.kv_seg = refs.pop(0) if cfg.segments else None
    self.offset = refs.pop(0)[()] if cfg.positions else None
    self.q_len = refs.pop(0)[()] if cfg.q_lengths else None
    kv_len = refs.pop(0)[()] if cfg.kv_lengths else None
    assert not refs
    if cfg.Sp != cfg.S:  # padded keys
      kv_len = cfg.S if kv_len is None else jnp.minimum(kv_len, cfg.S)
    self.kv_len = kv_len

  def tile(self, q_start, bq: int, k_start, bk: int):
    """Visibility of rows [q_start, q_start + bq) x keys [k_start, k_start + bk), broadcastable to [bq, bk]."""
    cfg = self.cfg
    if not cfg.masked:
      return None
    q_idx = q_start + jnp.arange(bq, dtype=jnp.int32)
    k_idx = k_start + jnp.arange(bk, dtype=jnp.int32)
    terms = []
    if cfg.positions:
      pos, key = (q_idx + self.offset)[:, None], k_idx[None, :]
      if cfg.causal:
        terms.append(key <= pos)
      if cfg.window is not None:
        left, right = cfg.window
        if left is not None:
          terms.append(key >= pos - left)
        if right is not None:
          terms.append(key <= pos + right)
    if cfg.segments:
      q_seg = self.q_seg[pl.ds(q_start, bq)]
      kv_seg = self.kv_seg[pl.ds(k_start, bk)]
      terms.append(q_seg[:, None] == kv_seg[None, :])
    if self.q_len is not None:
      terms.append((q_idx < self.q_len)[:, None])
    if self.kv_len is not None:
      terms.append((k_idx < self.kv_len)[None, :])
    return functools.reduce(lambda a, b: a & b, terms)


# ---------------------------------------------------------------------------------------------------------------------
# Kernels


def _fwd_kernel(cfg: _Config, q_ref, k_ref, v_ref, lo_ref, hi_ref, *refs):
  *mask_refs, o_ref, lse_ref = refs
  bq, bk = cfg.fwd
  masks = _Masks(cfg, mask_refs)
  q_start = pl.multiple_of(pl.program_id(0) * bq, bq)
  q = q_ref[...]  # [bq, D], resident

  def body(j, carry):
    m, denom, acc = carry
    k_start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s, _ = _scores(cfg, q, k)
    vis = masks.tile(q_start, bq, k_start, bk)
    if vis is not None:
      s = jnp.where(vis, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing visible yet: exp(-inf - 0) = 0
    p = jnp.exp(s - m_safe[:, None])
    alpha = jnp.exp(m - m_safe)
    denom = alpha * denom + jnp.sum(p, axis=1)
    acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v, _NN)
    return m_new, denom, acc

  init = (jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32),
          jnp.zeros((bq, v_ref.shape[-1]), jnp.float32))
  m, denom, acc = lax.fori_loop(lo_ref[()], hi_ref[()], body, init)
  live = denom > 0.0
  denom = jnp.where(live, denom, 1.0)
  o_ref[...] = (acc / denom[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(live, m + jnp.log(denom), -jnp.inf)


def _dq_kernel(cfg: _Config, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, *refs):
  *mask_refs, dq_ref = refs
  bq, bk = cfg.dq
  masks = _Masks(cfg, mask_refs)
  q_start = pl.multiple_of(pl.program_id(0) * bq, bq)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]

  def body(j, dq):
    k_start = pl.multiple_of(j * bk, bk)
    k = k_ref[pl.ds(k_start, bk), :]
    v = v_ref[pl.ds(k_start, bk), :]
    s, t = _scores(cfg, q, k)
    p = jnp.exp(s - lse[:, None])
    vis = masks.tile(q_start, bq, k_start, bk)
    if vis is not None:
      p = jnp.where(vis, p, 0.0)
    ds = p * (_dot(do, v, _NT) - delta[:, None])
    if t is not None:
      ds = ds * (1.0 - t * t)
    return dq + _dot(ds.astype(k.dtype), k, _NN)

  dq = lax.fori_loop(lo_ref[()], hi_ref[()], body, jnp.zeros(q_ref.shape, jnp.float32))
  dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkdv_kernel(cfg: _Config, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lo_ref, hi_ref, *refs):
  *mask_refs, dk_ref, dv_ref = refs
  bq, bk = cfg.dkdv
  masks = _Masks(cfg, mask_refs)
  k_start = pl.multiple_of(pl.program_id(0) * bk, bk)
  k, v = k_ref[...], v_ref[...]  # [bk, D], [bk, Dv], resident
  lo, hi = lo_ref[()], hi_ref[()]
  num_tiles = hi - lo

  # One loop over (query head g of this kv head's group, query tile i) pairs. A single loop with traced bounds keeps
  # Triton's scf.for pattern and avoids a static-bound inner scan, which the Pallas interpreter rejects under
  # shard_map's check_vma (jax 0.10: "Scan carry input and output got mismatched varying manual axes").
  def body(step, carry):
    dk, dv = carry
    g = lax.div(step, num_tiles)
    q_start = pl.multiple_of((lo + lax.rem(step, num_tiles)) * bq, bq)
    rows = pl.ds(q_start, bq)
    q = q_ref[rows, g, :]
    do = do_ref[rows, g, :]
    lse = lse_ref[g, rows]
    delta = delta_ref[g, rows]
    s, t = _scores(cfg, q, k)
    p = jnp.exp(s - lse[:, None])
    vis = masks.tile(q_start, bq, k_start, bk)
    if vis is not None:
      p = jnp.where(vis, p, 0.0)
    dv = dv + _dot(p.astype(do.dtype), do, _TN)
    ds = p * (_dot(do, v, _NT) - delta[:, None])
    if t is not None:
      ds = ds * (1.0 - t * t)
    dk = dk + _dot(ds.astype(q.dtype), q, _TN)
    return dk, dv

  init = (jnp.zeros(k_ref.shape, jnp.float32), jnp.zeros(v_ref.shape, jnp.float32))
  dk, dv = lax.fori_loop(0, num_tiles * q_ref.shape[1], body, init)
  dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# pallas_call wiring


def _mask_operands(cfg: _Config, masks):
  """The mask operands and their BlockSpecs; the batch index is grid axis 1 in every kernel."""
  q_seg, kv_seg, q_len, kv_len, offset = masks
  row = lambda n: pl.BlockSpec((None, n), lambda x, b, h: (b, 0))
  scalar = pl.BlockSpec((None,), lambda x, b, h: (b,))
  ops, specs = [], []
  if cfg.segments:
    ops += [q_seg, kv_seg]
    specs += [row(cfg.Tp), row(cfg.Sp)]
  for present, arr in ((cfg.positions, offset), (cfg.q_lengths, q_len), (cfg.kv_lengths, kv_len)):
    if present:
      ops.append(arr)
      specs.append(scalar)
  return ops, specs


def _outputs(operands, *shapes_dtypes):
  """Output ShapeDtypeStructs. Inside `jax.shard_map` (check_vma) they must say over which manual mesh axes they vary:
  the union of the axes the operands vary over (jax >= 0.10 spells it `manual_axis_type`)."""
  mats = [getattr(jax.typeof(x), "manual_axis_type", None) for x in operands]
  mats = [m for m in mats if m is not None]
  if not mats:
    return [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes_dtypes]
  mat = type(mats[0])(varying=frozenset().union(*(m.varying for m in mats)))
  return [jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat) for shape, dtype in shapes_dtypes]


def _pallas(cfg: _Config, kernel, name: str, *, grid, in_specs, out_specs, out_shape):
  params = None if _TritonParams is None else _TritonParams(num_warps=cfg.num_warps, num_stages=NUM_STAGES)
  return pl.pallas_call(functools.partial(kernel, cfg), out_shape=out_shape, grid=grid, in_specs=in_specs,
                        out_specs=out_specs, compiler_params=params, interpret=cfg.interpret, name=name)


def _forward(cfg: _Config, q, k, v, masks):
  """Padded q [B,Tp,N,D], k [B,Sp,K,D], v [B,Sp,K,Dv] -> (out [B,Tp,N,Dv] q.dtype, lse [B,N,Tp] fp32)."""
  B, Tp, N, D = q.shape
  Sp, K, Dv = k.shape[1], k.shape[2], v.shape[3]
  G = N // K
  bq, bk = cfg.fwd
  (k_lo, k_hi), _ = _tile_ranges(cfg, masks, B, bq, bk)
  mask_ops, mask_specs = _mask_operands(cfg, masks)
  kv_head = lambda h: lax.div(h, G)
  in_specs = [
      pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, Sp, None, D), lambda i, b, h: (b, 0, kv_head(h), 0)),
      pl.BlockSpec((None, Sp, None, Dv), lambda i, b, h: (b, 0, kv_head(h), 0)),
      pl.BlockSpec((None, None), lambda i, b, h: (b, i)),
      pl.BlockSpec((None, None), lambda i, b, h: (b, i)),
      *mask_specs,
  ]
  out_specs = [pl.BlockSpec((None, bq, None, Dv), lambda i, b, h: (b, i, h, 0)),
               pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))]
  operands = (q, k, v, k_lo, k_hi, *mask_ops)
  out_shape = _outputs(operands, ((B, Tp, N, Dv), q.dtype), ((B, N, Tp), jnp.float32))
  call = _pallas(cfg, _fwd_kernel, "pallas_gpu_attention_fwd", grid=(Tp // bq, B, N), in_specs=in_specs,
                 out_specs=out_specs, out_shape=out_shape)
  out, lse = call(*operands)
  return out, lse


def _backward(cfg: _Config, q, k, v, masks, out, lse, d_out, d_lse):
  B, Tp, N, D = q.shape
  Sp, K, Dv = k.shape[1], k.shape[2], v.shape[3]
  G = N // K
  mask_ops, mask_specs = _mask_operands(cfg, masks)
  # Δ = rowsum(dO ∘ O); a cotangent on lse adds P·dlse to dS, so it enters as Δ − dlse.
  # (An elementwise product and sum, not an einsum, which XLA:GPU may turn into a TF32 batched matmul.)
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1) - d_lse
  lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # fully masked rows: P is masked to 0 anyway
  d_out = d_out.astype(q.dtype)
  kv_head = lambda h: lax.div(h, G)

  bq, bk = cfg.dq
  (k_lo, k_hi), _ = _tile_ranges(cfg, masks, B, bq, bk)
  in_specs = [
      pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, Sp, None, D), lambda i, b, h: (b, 0, kv_head(h), 0)),
      pl.BlockSpec((None, Sp, None, Dv), lambda i, b, h: (b, 0, kv_head(h), 0)),
      pl.BlockSpec((None, bq, None, Dv), lambda i, b, h: (b, i, h, 0)),
      pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
      pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
      pl.BlockSpec((None, None), lambda i, b, h: (b, i)),
      pl.BlockSpec((None, None), lambda i, b, h: (b, i)),
      *mask_specs,
  ]
  operands = (q, k, v, d_out, lse, delta, k_lo, k_hi, *mask_ops)
  [dq] = _pallas(cfg, _dq_kernel, "pallas_gpu_attention_dq", grid=(Tp // bq, B, N), in_specs=in_specs,
                 out_specs=[pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0))],
                 out_shape=_outputs(operands, (q.shape, q.dtype)))(*operands)

  bq, bk = cfg.dkdv
  _, (q_lo, q_hi) = _tile_ranges(cfg, masks, B, bq, bk)
  in_specs = [
      pl.BlockSpec((None, Tp, G, D), lambda j, b, h: (b, 0, h, 0)),  # the G query heads of kv head h
      pl.BlockSpec((None, bk, None, D), lambda j, b, h: (b, j, h, 0)),
      pl.BlockSpec((None, bk, None, Dv), lambda j, b, h: (b, j, h, 0)),
      pl.BlockSpec((None, Tp, G, Dv), lambda j, b, h: (b, 0, h, 0)),
      pl.BlockSpec((None, G, Tp), lambda j, b, h: (b, h, 0)),
      pl.BlockSpec((None, G, Tp), lambda j, b, h: (b, h, 0)),
      pl.BlockSpec((None, None), lambda j, b, h: (b, j)),
      pl.BlockSpec((None, None), lambda j, b, h: (b, j)),
      *mask_specs,
  ]
  out_specs = [pl.BlockSpec((None, bk, None, D), lambda j, b, h: (b, j, h, 0)),
               pl.BlockSpec((None, bk, None, Dv), lambda j, b, h: (b, j, h, 0))]
  operands = (q, k, v, d_out, lse, delta, q_lo, q_hi, *mask_ops)
  dk, dv = _pallas(cfg, _dkdv_kernel, "pallas_gpu_attention_dkdv", grid=(Sp // bk, B, K), in_specs=in_specs,
                   out_specs=out_specs, out_shape=_outputs(operands, (k.shape, k.dtype), (v.shape, v.dtype)))(*operands)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: _Config, q, k, v, masks):
  return _forward(cfg, q, k, v, masks)


def _flash_fwd(cfg: _Config, q, k, v, masks):
  out, lse = _forward(cfg, q, k, v, masks)
  return (out, lse), (q, k, v, masks, out, lse)


def _flash_bwd(cfg: _Config, residuals, cotangents):
  q, k, v, masks, out, lse = residuals
  d_out, d_lse = cotangents
  dq, dk, dv = _backward(cfg, q, k, v, masks, out, lse, d_out, d_lse.astype(jnp.float32))
  return dq, dk, dv, None  # integer mask inputs: no gradient


_flash.defvjp(_flash_fwd, _flash_bwd)


# ---------------------------------------------------------------------------------------------------------------------
# The backend


def _pad(x, axis: int, size: int):
  if x.shape[axis] == size:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def _use_interpreter() -> bool:
  """Decided at call time and frozen into the config, so the backward pass runs the same way as the forward."""
  return is_interpret_mode() or jax.default_backend() != "gpu"


def _head_dim(d: int) -> int:
  return max(_MIN_TILE, _next_pow2(d))


def pallas_gpu_attention(q, k, v, *, mask: MaskSpec, bias=None, softcap=None, scale: float, dropout_rate: float = 0.0,
                         dropout_rng=None):
  """q [B,T,N,D], k [B,S,K,D], v [B,S,K,Dv] -> (out [B,T,N,Dv], lse [B,N,T] fp32). See the module docstring."""
  del dropout_rng
  if bias is not None:
    raise ValueError("bias is not supported by pallas_gpu")
  if dropout_rate > 0.0:
    raise ValueError("dropout is not supported by pallas_gpu")
  B, T, N, D = q.shape
  S, Dv = k.shape[1], v.shape[3]
  k, v = k.astype(q.dtype), v.astype(q.dtype)  # Triton's dot wants equal operand types
  Dp, Dvp = _head_dim(D), _head_dim(Dv)
  shrink = 2 if max(Dp, Dvp) > 128 else 1  # keep [block, head_dim] fp32 tiles within the register budget
  fwd = (_tile(BLOCK_Q // shrink, T), _tile(BLOCK_K // shrink, S))
  dq = (_tile(BLOCK_Q_DQ // shrink, T), _tile(BLOCK_K_DQ // shrink, S))
  dkdv = (_tile(BLOCK_Q_DKV // shrink, T), _tile(BLOCK_K_DKV // shrink, S))
  Tp = _round_up(T, max(fwd[0], dq[0], dkdv[0]))  # tiles are powers of two: the largest is a multiple of the rest
  Sp = _round_up(S, max(fwd[1], dq[1], dkdv[1]))
  segments = mask.q_segment_ids is not None
  cfg = _Config(causal=bool(mask.causal), window=None if mask.window is None else tuple(mask.window),
                softcap=None if softcap is None else float(softcap), scale=float(scale), T=T, S=S, Tp=Tp, Sp=Sp,
                fwd=fwd, dq=dq, dkdv=dkdv, segments=segments, q_lengths=mask.q_lengths is not None,
                kv_lengths=mask.kv_lengths is not None,
                interpret=_use_interpreter(),
                num_warps=4 if max(Dp, Dvp) <= 64 else 8)
  as_int = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  masks = (_pad(as_int(mask.q_segment_ids), 1, Tp) if segments else None,
           _pad(as_int(mask.kv_segment_ids), 1, Sp) if segments else None,
           as_int(mask.q_lengths), as_int(mask.kv_lengths),
           jnp.broadcast_to(jnp.asarray(mask.q_offset, jnp.int32).reshape(-1), (B,)))
  q = _pad(_pad(q, 1, Tp), 3, Dp)
  k = _pad(_pad(k, 1, Sp), 3, Dp)  # zero columns add nothing to q·k
  v = _pad(_pad(v, 1, Sp), 3, Dvp)
  out, lse = _flash(cfg, q, k, v, masks)
  return out[:, :T, :, :Dv], lse[:, :, :T]


def _supports(request: Request) -> str | None:
  if request.bias:
    return "bias is not supported by pallas_gpu"
  if request.dropout:
    return "dropout is not supported by pallas_gpu"
  if request.dtype not in _DTYPES:
    return f"dtype {request.dtype} is not supported by pallas_gpu (only {', '.join(_DTYPES)})"
  for name, dim in (("head_dim", request.head_dim), ("value_head_dim", request.value_head_dim)):
    if dim > MAX_HEAD_DIM:
      return f"{name} {dim} > {MAX_HEAD_DIM} is not supported by pallas_gpu (register budget of its tiles)"
  for name, n in (("batch", request.batch), ("num_heads", request.num_heads)):
    if n > _MAX_GRID_YZ:
      return f"{name} {n} > {_MAX_GRID_YZ} exceeds the CUDA grid limit of pallas_gpu"
  if _TritonParams is None and not is_interpret_mode():
    return f"the Pallas Triton lowering that pallas_gpu uses is not available in jax {jax.__version__}"
  return None


register_backend(Backend("pallas_gpu", pallas_gpu_attention, _supports, platforms=("gpu",), interpretable=True))
