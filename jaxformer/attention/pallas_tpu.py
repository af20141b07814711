"""The `pallas_tpu` backend: a thin wrapper of JAX's splash attention (Pallas TPU kernels).

Engineering call: wrap, not own. `jax.experimental.pallas.ops.tpu.splash_attention` is
maintained and tuned by the JAX team, skips invisible blocks using mask info precomputed
from static mask objects, and ships forward, dq and dkv kernels. A home-made kernel would
re-derive all of that and could not be checked on TPU here. The splash sources of JAX
0.10.0, 0.10.2 and 0.11.2 differ only cosmetically (annotations, a named scope), so the
names used here (`make_splash_mha`, `BlockSizes`, `SegmentIds`, the mask classes and the
kernel's `sinks` argument) are resolved once at import; only `sinks` is probed.

How jaxformer's API maps onto splash (per batch element, `vmap` over the batch):
  * layout: q [B,T,N,D] -> [B,N,T,D]; k, v [B,S,K,D] -> [B,K,S,D]. GQA/MQA use the MHA
    kernel's own head mapping (query head h reads kv head h // (N/K)), so K/V are never
    repeated in memory.
  * scale: splash has no scale argument; q is pre-scaled (in q's dtype) and autodiff
    carries the factor into dq.
  * causal / window / static q_offset: one `CausalMask` or `LocalMask` (causal ∧ window is
    a `LocalMask` whose right edge is min(right, 0)), repeated per head in a `MultiHeadMask`.
    Masks are static, so q_offset must be a Python int (or a concrete array, equal over the
    batch): a traced or per-batch offset raises ValueError at call time. `Request` only
    says whether an offset is present, so `_supports` cannot see this; pick another
    implementation explicitly for traced offsets (decoding against a growing cache).
  * segment ids and q/kv lengths: `SegmentIds`. Rows/keys beyond a length, and the padding
    that rounds T and S up to a multiple of 128 (splash needs lane-aligned blocks), get two
    sentinel ids below every real id, so they match nothing.
  * softcap: `attn_logits_soft_cap` (applied to the pre-scaled logits, as the reference).
  * fully masked query rows: splash's softmax would divide by zero (or average masked
    keys). Each head gets an attention sink of logit -1e30: the running max starts there
    and the running sum at 1, so a row that sees no key ends with out = 0 exactly and
    lse = -1e30 (reported as -inf), while any visible key (logit >> -1e30) makes the
    sink's weight exp(-1e30 - m) = 0. The backward's p = exp(logit - lse) is then 0 on
    those rows too: no NaN, zero gradients, no fix-up pass.
  * Dv != D: splash sizes the q·k and value head dims separately.
  * lse: natural-log logsumexp of the scaled, capped logits, from a second kernel call with
    `save_residuals=True`. Splash refuses to differentiate that variant, so it sits in its
    own `custom_vjp`; `out` comes from the ordinary kernel with splash's own VJP. Under jit,
    when lse is unused the extra call is dead code and XLA drops it (backends always return
    lse; eagerly it runs).
    The gradient through lse (d lse/d logits = p) is two more splash calls: P·K for dq and
    Pᵀ(g·q) via the VJP w.r.t. the values for dk. With softcap the logits' tanh derivative
    does not fit that trick, so a non-zero lse cotangent with softcap raises
    NotImplementedError (a symbolically zero one, e.g. grads of `out` only, is fine).

Not supported (`_supports` names the feature): additive bias and dropout (splash has
neither), dtypes other than float32/bfloat16. Differentiation is reverse mode only
(custom VJPs): no jvp, no second derivatives.

Interpret mode: inside `interpret_mode()` or off TPU the kernels are built with splash's
`interpret=True`, which runs the generic Pallas interpreter on CPU (faster here than
`pltpu.force_tpu_interpret_mode()`; both work).

Sharding: `pallas_call` is not auto-partitioned. Under a sharded mesh run `attention` inside
`jax.shard_map(..., check_vma=False)` (e.g. batch sharded over a data axis; splash declares its
outputs without the varying-axes type that check_vma=True requires); every device then runs
the kernel on its local batch with the (replicated, constant) mask info.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from jaxformer.attention.api import Backend, Request, is_interpret_mode, register_backend
from jaxformer.attention.masks import MaskSpec

# Largest tile sizes; the ones used are the largest multiples of 128 up to these that divide
# the padded lengths. Read at call time, so tests may patch them.
BLOCK_Q = 512
BLOCK_KV = 512
_LANES = 128  # splash's kv blocks (and q blocks with segment ids) must be multiples of this
_SINK = -1e30  # logit of the per-head sink; far below real logits, far above splash's mask value
_DTYPES = ("float32", "bfloat16")


def _splash_has_sinks() -> bool:
  """Whether splash takes `sinks` (0.10.0 to 0.11.2 do); probed so that another JAX is refused with a reason."""
  try:
    return "sinks" in inspect.signature(splash._splash_attention).parameters
  except (AttributeError, TypeError, ValueError):
    return False


_SPLASH_HAS_SINKS = _splash_has_sinks()


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static (hashable) description of one call: everything that shapes the splash kernels."""
  num_heads: int
  t_pad: int
  s_pad: int
  block_q: int
  block_kv: int
  causal: bool
  window: tuple[int | None, int | None] | None
  offset: int
  softcap: float | None
  interpret: bool


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _block(length: int, limit: int) -> int:
  """The largest multiple of 128 that is <= max(limit, 128) and divides `length` (a multiple of 128)."""
  for block in range(max(limit, _LANES) // _LANES * _LANES, 0, -_LANES):
    if length % block == 0:
      return block
  raise AssertionError(length)


def _static_offset(mask: MaskSpec) -> int:
  """q_offset as a Python int; ValueError when it is traced or differs over the batch."""
  if not mask.causal and mask.window is None:
    return 0  # the offset only moves causal/window edges
  offset = mask.q_offset
  if isinstance(offset, (int, np.integer)):
    return int(offset)
  try:
    values = np.asarray(offset)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    raise ValueError("pallas_tpu needs a static q_offset (splash attention masks are built ahead of time); "
                     "got a traced value. Use implementation='blockwise' for traced offsets.") from None
  if values.size and np.any(values != values.flat[0]):
    raise ValueError("pallas_tpu needs one q_offset for the whole batch (splash attention masks are static); "
                     f"got per-batch offsets {values.tolist()}. Use implementation='blockwise'.")
  return int(values.flat[0]) if values.size else 0


def _splash_mask(cfg: _Config) -> splash_mask.Mask:
  shape = (cfg.t_pad, cfg.s_pad)
  left, right = cfg.window if cfg.window is not None else (None, None)
  if cfg.causal:
    right = 0 if right is None else min(right, 0)
  if left is None and right is None:
    return splash_mask.FullMask(shape)
  if left is None and right == 0:
    return splash_mask.CausalMask(shape, offset=cfg.offset)
  return splash_mask.LocalMask(shape, window_size=(left, right), offset=cfg.offset)


def _kernel(cfg: _Config, save_residuals: bool):
  """A splash MHA kernel for one batch element: (q [N,T,D], k [K,S,D], v [K,S,Dv], segment_ids, sinks)."""
  bq, bkv = cfg.block_q, cfg.block_kv
  blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                             block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
  mask = splash_mask.MultiHeadMask([_splash_mask(cfg)] * cfg.num_heads)
  return splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                save_residuals=save_residuals, attn_logits_soft_cap=cfg.softcap,
                                interpret=cfg.interpret)


def _run(kernel, q, k, v, q_seg, kv_seg):
  """The kernel over the batch: q [B,N,T,D], k [B,K,S,D], v [B,K,S,Dv], segment ids [B,T]/[B,S] or None."""
  sinks = jnp.full((q.shape[1],), _SINK, jnp.float32)
  if q_seg is None:
    return jax.vmap(lambda q, k, v: kernel(q, k, v, None, sinks))(q, k, v)
  return jax.vmap(lambda q, k, v, qs, ks: kernel(q, k, v, splash.SegmentIds(qs, ks), sinks))(q, k, v, q_seg, kv_seg)


# ---------------------------------------------------------------------------------------------------------------------
# lse: its own custom VJP (splash does not differentiate its save_residuals variant)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lse(cfg: _Config, q, k, v, q_seg, kv_seg):
  _, (lse,) = _run(_kernel(cfg, save_residuals=True), q, k, v, q_seg, kv_seg)
  return lse  # [B, N, T_pad] float32; _SINK on rows that see no key


def _lse_fwd(cfg, q, k, v, q_seg, kv_seg):
  q, k, v, q_seg, kv_seg = (x.value if isinstance(x, CustomVJPPrimal) else x for x in (q, k, v, q_seg, kv_seg))
  return _lse(cfg, q, k, v, q_seg, kv_seg), (q, k, v, q_seg, kv_seg)


def _lse_bwd(cfg, residuals, g):
  q, k, v, q_seg, kv_seg = residuals
  if isinstance(g, SymbolicZero):  # lse unused by the loss: nothing to run
    return jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v), None, None
  if cfg.softcap is not None:
    raise NotImplementedError("pallas_tpu: the gradient through lse is not implemented with softcap; "
                              "use implementation='blockwise' or differentiate the output only.")
  # d lse_i / d logit_ij = p_ij, so dq_i = g_i Σ_j p_ij k_j (attention with values = keys) and
  # dk_j = Σ_i p_ij g_i q_i (the VJP of that attention w.r.t. its values). Dead rows have p = 0.
  kernel = _kernel(cfg, save_residuals=False)
  pk, values_vjp = jax.vjp(lambda values: _run(kernel, q, k, values, q_seg, kv_seg), k)
  dq = (g[..., None] * pk.astype(jnp.float32)).astype(q.dtype)
  (dk,) = values_vjp((g[..., None] * q.astype(jnp.float32)).astype(q.dtype))
  return dq, dk, jnp.zeros_like(v), None, None


_lse.defvjp(_lse_fwd, _lse_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------------------------------------
# The backend


def _segment_ids(mask: MaskSpec, B: int, T: int, S: int, t_pad: int, s_pad: int):
  """int32 segment ids [B,T_pad], [B,S_pad] with lengths and padding folded in, or (None, None)."""
  if mask.q_segment_ids is None and mask.q_lengths is None and mask.kv_lengths is None and (T, S) == (t_pad, s_pad):
    return None, None
  if mask.q_segment_ids is not None:
    q_seg, kv_seg = mask.q_segment_ids.astype(jnp.int32), mask.kv_segment_ids.astype(jnp.int32)
    low = jnp.minimum(jnp.min(q_seg), jnp.min(kv_seg))
  else:
    q_seg, kv_seg, low = jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32), jnp.int32(0)
  # Below every real id and distinct, so padded keys are seen by no row and padded rows see no key.
  kv_pad, q_pad = low - 1, low - 2
  if mask.q_lengths is not None:
    q_seg = jnp.where(jnp.arange(T)[None, :] < mask.q_lengths[:, None], q_seg, q_pad)
  if mask.kv_lengths is not None:
    kv_seg = jnp.where(jnp.arange(S)[None, :] < mask.kv_lengths[:, None], kv_seg, kv_pad)
  q_seg = jnp.concatenate([q_seg, jnp.broadcast_to(q_pad, (B, t_pad - T))], axis=1)
  kv_seg = jnp.concatenate([kv_seg, jnp.broadcast_to(kv_pad, (B, s_pad - S))], axis=1)
  return q_seg, kv_seg


def pallas_tpu_attention(q, k, v, *, mask: MaskSpec, bias=None, softcap=None, scale: float, dropout_rate: float = 0.0,
                         dropout_rng=None):
  """q [B,T,N,D], k [B,S,K,D], v [B,S,K,Dv] -> (out [B,T,N,Dv] in q.dtype, lse [B,N,T] float32)."""
  del dropout_rng
  if bias is not None:
    raise ValueError("pallas_tpu does not support bias (splash attention has no additive-bias input)")
  if dropout_rate > 0.0:
    raise ValueError("pallas_tpu does not support dropout (splash attention has no dropout)")
  B, T, N, _ = q.shape
  S = k.shape[1]
  t_pad, s_pad = _round_up(T, _LANES), _round_up(S, _LANES)
  window = None if mask.window is None else tuple(None if w is None else int(w) for w in mask.window)
  cfg = _Config(num_heads=N, t_pad=t_pad, s_pad=s_pad, block_q=_block(t_pad, BLOCK_Q),
                block_kv=_block(s_pad, BLOCK_KV), causal=mask.causal, window=window, offset=_static_offset(mask),
                softcap=None if softcap is None else float(softcap),
                interpret=is_interpret_mode() or jax.default_backend() != "tpu")
  q_seg, kv_seg = _segment_ids(mask, B, T, S, t_pad, s_pad)
  # Pre-scale in float32, then back to q's dtype: the kernel's matmuls run in the input dtype.
  qs = (q.astype(jnp.float32) * scale).astype(q.dtype)
  qs = jnp.pad(qs.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, t_pad - T), (0, 0)))
  pad_kv = lambda x: jnp.pad(x.astype(q.dtype).transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, s_pad - S), (0, 0)))
  kt, vt = pad_kv(k), pad_kv(v)
  out = _run(_kernel(cfg, save_residuals=False), qs, kt, vt, q_seg, kv_seg)  # splash's own VJP
  lse = _lse(cfg, qs, kt, vt, q_seg, kv_seg)  # dead code (dropped by XLA) unless lse is used
  out = out[:, :, :T].transpose(0, 2, 1, 3)
  lse = lse[:, :, :T]
  return out, jnp.where(lse > 0.5 * _SINK, lse, -jnp.inf)


def _supports(request: Request) -> str | None:
  if request.bias:
    return "bias (splash attention has no additive-bias input)"
  if request.dropout:
    return "dropout (splash attention has no dropout)"
  if request.dtype not in _DTYPES:
    return f"dtype {request.dtype} (splash attention runs {' or '.join(_DTYPES)})"
  if (request.causal or request.window) and request.q_offset_kind in ("traced", "per_batch"):
    return (f"a {request.q_offset_kind.replace('_', '-')} q_offset with causal/window masks "
            "(splash attention masks are static: one Python-int offset for the whole batch)")
  if not _SPLASH_HAS_SINKS:
    return "this JAX's splash attention has no `sinks` argument (needed for fully masked rows); use JAX >= 0.10"
  return None


register_backend(Backend("pallas_tpu", pallas_tpu_attention, _supports, platforms=("tpu",), interpretable=True))
