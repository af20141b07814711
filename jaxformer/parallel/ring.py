"""Ring attention: exact attention over a sequence sharded across devices.

Liu, Zaharia & Abbeel 2023, "Ring Attention with Blockwise Transformers for
Near-Infinite Context". The sequence axis T is split over the `n` devices of a
mesh axis; each device keeps its C = T/n queries and passes its key/value chunk
around the ring, so after n steps every query has met every key. Partial
results are merged exactly with their log-sum-exp, so the output equals plain
attention up to float32 rounding. The backward pass (a custom VJP) passes the
K/V chunks around the ring again, together with their dK/dV accumulators, and
recomputes probabilities from the saved lse, so training memory stays O(T/n).

Memory: O(T/n) per device in both passes (local chunks, one visiting K/V chunk,
float32 accumulators). Communication: n-1 ppermutes of a K/V chunk forward;
backward n-1 more, plus n of the float32 dK/dV accumulators; XLA can overlap
them with the steps' compute.

Work balance (causal). With contiguous chunks (device r holds positions
r·C .. r·C + C - 1), at ring step s the devices r >= s meet an earlier chunk
(all C² pairs) and the others a later one (skipped), so every step waits for a
full chunk pair: n - 1/2 chunk-pair times, while device 0 idles for n-1 of them.
Striped ring attention (Brandon et al. 2023, "Striped Attention: Faster Ring
Attention for Causal Transformers") permutes the sequence first so that device r
holds positions r, r+n, r+2n, ...; then every chunk pair is a causal triangle
(q_offset 0, or -1 when the chunk comes from a later device), every device does
about half of every pair, and the ring takes about n/2 chunk-pair times: 2 - 1/n
times less. The reorder costs all-to-alls around the ring (see `ring_attention`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxformer.attention import attention

log = logging.getLogger("jaxformer.parallel")
_logged: set[str] = set()
# Gradients from the ring custom VJP (O(T/n) memory). False: plain autodiff through the forward loop, which keeps
# every step's K/V chunk as a residual (O(T)); read at call time, kept for tests that compare the two.
_CUSTOM_VJP = True


def _log_once(message: str) -> None:
  if message not in _logged:
    _logged.add(message)
    log.warning("ring_attention: %s", message)


def _check_shapes(q, k, v, q_seg, kv_seg):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"ring_attention expects q [B,T,N,H], k and v [B,T,K,H]; got ranks {q.ndim}, {k.ndim}, {v.ndim}")
  B, T, N, H = q.shape
  if k.shape[:2] != (B, T) or v.shape[:3] != k.shape[:3] or k.shape[3] != H:
    raise ValueError(f"ring_attention is self-attention: k and v must be [B,T,K,H] with q's B, T and H; "
                     f"got q {q.shape}, k {k.shape}, v {v.shape}")
  if N % k.shape[2]:
    raise ValueError(f"query heads N={N} must be a multiple of kv heads K={k.shape[2]}")
  if q_seg is not None and (q_seg.shape != (B, T) or kv_seg.shape != (B, T)):
    raise ValueError(f"segment ids must be [B,T]={B, T}; got {q_seg.shape} and {kv_seg.shape}")


def _resolve_mesh(mesh):
  """The given mesh, else the ambient one (`jax.set_mesh`), else None."""
  if mesh is not None:
    return mesh
  ambient = jax.sharding.get_abstract_mesh()
  return None if ambient.empty else ambient


def _merge(out, lse, part_out, part_lse):
  """Combines two normalised partial attentions by their lse (float32); rows with lse = -inf in both stay 0
  with lse = -inf, and their gradients stay finite (no exp(-inf - -inf))."""
  m = lax.stop_gradient(jnp.maximum(lse, part_lse))  # lse is invariant to the shift, so no gradient through it
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  w, part_w = jnp.exp(lse - m), jnp.exp(part_lse - m)  # [B,N,C]
  denom = w + part_w
  live = denom > 0
  safe = jnp.where(live, denom, 1.0)
  new_lse = jnp.where(live, m + jnp.log(safe), -jnp.inf)
  new_out = _bcn(w / safe) * out + _bcn(part_w / safe) * part_out.astype(jnp.float32)
  return new_out, new_lse


def _bcn(x):
  """[B,N,C] -> [B,C,N,1], to scale [B,C,N,H] rows."""
  return x.transpose(0, 2, 1)[..., None]


@dataclasses.dataclass(frozen=True)
class _Ring:
  """The static description of one ring (hashable: the custom VJP's non-differentiable argument)."""
  axis: str
  n: int  # devices on the ring
  chunk: int  # C = T/n
  causal: bool
  scale: float
  implementation: str | tuple[str, ...] | None
  stripe: bool = False  # device r holds positions r, r + n, r + 2n, ... (striped) instead of r·C .. r·C + C - 1

  @property
  def perm(self):
    return [(i, (i + 1) % self.n) for i in range(self.n)]  # after s steps, device `my` holds the chunk of my - s


def _step_offset(cfg: _Ring, step):
  """The causal q_offset of this device's queries against the K/V chunk visiting at ring step `step`, which
  started on device src = (my - step) mod n (a traced int; 0 at step 0, src = my).

  Contiguous chunks: query i is at position my·C + i, key j at src·C + j, so j <= i + (my - src)·C.
  Striped: query i is at n·i + my, key j at n·j + src, so n·j <= n·i + (my - src) ⟺ j <= i + ⌊(my - src)/n⌋,
  i.e. offset 0 (j <= i) when src <= my and -1 (j < i: query row 0 sees no key of that chunk) when src > my.
  """
  my = lax.axis_index(cfg.axis)
  src = (my - step) % cfg.n
  return (my - src) // cfg.n if cfg.stripe else (my - src) * cfg.chunk


def _attend(cfg: _Ring, q, q_seg, kv, step):
  """This device's queries against the K/V chunk that started on device src = (my - step) mod n: (out, lse).
  step None is the diagonal chunk (src = my, static q_offset 0)."""
  k, v, kv_seg = kv
  offset = _step_offset(cfg, step) if cfg.causal and step is not None else 0
  return attention(q, k, v, causal=cfg.causal, segment_ids=None if q_seg is None else (q_seg, kv_seg),
                   scale=cfg.scale, q_offset=offset, implementation=cfg.implementation, return_lse=True)


def _ring_forward(cfg: _Ring, q, k, v, q_seg, kv_seg):
  """Per-device forward: (out [B,C,N,H] q.dtype, lse [B,N,C] float32) over all n chunks."""
  n, perm = cfg.n, cfg.perm

  def step(carry, s):
    kv, out, lse = carry
    nxt = lax.ppermute(kv, cfg.axis, perm)  # independent of this step's compute, so the transfer can overlap it
    out, lse = _merge(out, lse, *_attend(cfg, q, q_seg, kv, s))
    return (nxt, out, lse), None

  kv = lax.ppermute((k, v, kv_seg), cfg.axis, perm)
  out, lse = _attend(cfg, q, q_seg, (k, v, kv_seg), None)
  out = out.astype(jnp.float32)
  if n > 2:
    (kv, out, lse), _ = lax.scan(step, (kv, out, lse), jnp.arange(1, n - 1))
  out, lse = _merge(out, lse, *_attend(cfg, q, q_seg, kv, n - 1))
  return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg: _Ring, q, k, v, q_seg, kv_seg):
  return _ring_forward(cfg, q, k, v, q_seg, kv_seg)[0]


def _ring_fwd(cfg: _Ring, q, k, v, q_seg, kv_seg):
  out, lse = _ring_forward(cfg, q, k, v, q_seg, kv_seg)
  return out, (q, k, v, q_seg, kv_seg, out, lse)  # local chunks only: O(T/n)


def _ring_bwd(cfg: _Ring, residuals, d_out):
  """Ring backward (FlashAttention-2 style): K/V circulate again, each with its dK/dV accumulator.

  The output is out = Σ_i w_i out_i with w_i = exp(lse_i - lse) (the merge), so chunk i receives the cotangents
  d out_i = w_i dO and d lse_i = w_i (rowsum(dO ∘ out_i) - D), D = rowsum(dO ∘ out). Fed to the backend's VJP
  (which recomputes out_i, lse_i and uses Δ_i = rowsum(d out_i ∘ out_i) - d lse_i = w_i D), this gives
  dS = exp(S - lse_i) w_i (dP - D) = exp(S - lse)(dP - D): exactly the global-lse backward, chunk by chunk.
  Rows that see no key (lse = -inf) have w_i = 0, so zero cotangents and zero gradients.
  """
  q, k, v, q_seg, kv_seg, out, lse = residuals
  n, perm, f32 = cfg.n, cfg.perm, jnp.float32
  d_out = d_out.astype(f32)
  delta = jnp.sum(d_out * out.astype(f32), axis=-1).transpose(0, 2, 1)  # D = rowsum(dO ∘ O) [B,N,C]
  lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # a row with lse = -inf has every lse_i = -inf, so w_i = 0

  def grads(kv, step):
    """(dq, dk, dv) in float32 of this device's queries against the visiting chunk."""
    (part_out, part_lse), vjp = jax.vjp(lambda q, k, v: _attend(cfg, q, q_seg, (k, v, kv[2]), step), q, *kv[:2])
    w = jnp.exp(part_lse - lse)  # the chunk's weight in the merge; 0 where it sees no key (future chunks too)
    d_part = (_bcn(w) * d_out).astype(part_out.dtype)
    d_lse = jnp.sum(d_part.astype(f32) * part_out.astype(f32), axis=-1).transpose(0, 2, 1) - w * delta
    return tuple(g.astype(f32) for g in vjp((d_part, d_lse)))

  def add(a, b):
    return tuple(x + y for x, y in zip(a, b))

  def step(carry, s):
    kv, dkv, dq = carry  # the chunk of device my - s and its dK/dV accumulated on devices my - s .. my - 1
    nxt = lax.ppermute(kv, cfg.axis, perm)  # independent of this step's compute
    gq, *gkv = grads(kv, s)
    dkv = lax.ppermute(add(dkv, gkv), cfg.axis, perm)
    return (nxt, dkv, dq + gq), None

  dq, *dkv = grads((k, v, kv_seg), None)
  kv = lax.ppermute((k, v, kv_seg), cfg.axis, perm)
  dkv = lax.ppermute(tuple(dkv), cfg.axis, perm)
  if n > 2:
    (kv, dkv, dq), _ = lax.scan(step, (kv, dkv, dq), jnp.arange(1, n - 1))
  gq, *gkv = grads(kv, n - 1)
  dk, dv = lax.ppermute(add(dkv, gkv), cfg.axis, perm)  # the chunk of device my + 1, complete: send it home
  return (dq + gq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def _reorder(x, n: int, inverse: bool, place):
  """x [B,T,...] from sequence order to striped order, whose r-th chunk of C = T/n holds positions r, r+n,
  r+2n, ... ([B,C,n,...] -> [B,n,C,...]); inverse: back. `place(x, dim, shape)` reshapes x to `shape` with the
  ring axis on dimension `dim` (None: on none). With C divisible by n each device keeps its rows through the
  split, and the transpose is one all-to-all (C/n rows to every other device); otherwise the split needs the
  whole sequence on every device (an all-gather). Without these layouts XLA may pick all-gathers either way."""
  B, T = x.shape[:2]
  lay = lambda x, shape: place(x, 1 if shape[1] % n == 0 else None, shape)
  x = lay(x, (B, *((n, T // n) if inverse else (T // n, n)), *x.shape[2:]))
  x = x.swapaxes(1, 2)
  x = lay(x, x.shape)
  return lay(x, (B, T, *x.shape[3:]))


def ring_attention(q, k, v, *, causal: bool = False, segment_ids=None, scale: float | None = None, mesh=None,
                   axis: str = "sequence", batch_axes: Sequence[str] = ("data", "fsdp"),
                   head_axis: str | None = "tensor", implementation: str | Sequence[str] | None = "blockwise",
                   stripe: bool | None = None):
  """q [B,T,N,H], k/v [B,T,K,H] global arrays (inside or outside jit) -> out [B,T,N,H].

  Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers"): a `jax.shard_map` over
  `mesh` (None = the ambient mesh of `jax.set_mesh`) splits T over mesh axis `axis` (n devices, chunks of
  C = T/n), B over the `batch_axes` and heads over `head_axis` that the mesh has (heads stay whole when K
  is not divisible by the head axis). Each device computes its queries against its K/V chunk with
  `jaxformer.attention.attention(implementation=...)`, passes the chunk on with `lax.ppermute`, and merges
  the n partial results by log-sum-exp in float32.

  Costs per device: O(T/n) memory for K/V in both passes. The forward does n-1 ppermutes of one K/V chunk
  (plus its segment ids), each independent of the step's compute so XLA can overlap the two. Gradients come
  from a custom VJP (FlashAttention-2 style ring backward): the forward saves only the local q, k, v, segment
  ids, out and lse; the backward forms D = rowsum(dO ∘ out), circulates K/V again (n-1 ppermutes, overlapped
  like the forward) and with each chunk its dK/dV accumulator in float32 (n ppermutes: n-1 around the ring,
  one more to bring each complete dK/dV home), adding at every step this device's dq and the chunk's dK/dV.
  Each chunk's share comes from the backend's own VJP with cotangents (w dO, w (rowsum(dO ∘ out_i) - D)),
  w = exp(lse_i - lse), which gives the probabilities exp(S - lse) of the global lse: gradients are exact
  (to rounding), with O(T/n) memory per device, at the cost of recomputing each chunk's forward. The
  backend's VJP must honour an lse cotangent (all backends that return lse do). Being a custom VJP, it does
  not support forward-mode autodiff (jvp) or second derivatives.

  causal: a query at global position i sees keys j <= i. With contiguous chunks, the chunk from device src gets
  q_offset (my - src)·C; chunks entirely in the future give lse = -inf and add nothing, in either pass (the
  blockwise backend iterates over no key block for them). That load is unbalanced: the device holding the last
  chunk attends to all n chunks, the first only to its own, and the ring waits for the slowest (n - 1/2
  chunk-pair times per pass).
  stripe: striped ring attention (Brandon et al. 2023). q, k, v and the segment ids are permuted on the
  global arrays, outside the shard_map, so that device r holds positions r, r+n, r+2n, ... (a reshape
  [B,C,n,...] -> [B,n,C,...]), and the output is permuted back. Local query i is then at n·i + my and key j
  of device src at n·j + src, so the chunk from src is causal with q_offset 0 when src < my and -1 when
  src > my (its query row 0 sees none of its keys). Every device does about half of every chunk pair: ~n/2
  chunk-pair times per pass instead of ~n - 1/2, i.e. (2 - 1/n)x less attention time for causal attention;
  the skipping is per backend tile, so the gain needs C well above the tile (blockwise: 128). The cost, per
  device: forward one all-to-all each of q, k, v (and of the int32 segment ids) and one of out; backward the
  transposes, one of dO and one each of dq, dk, dv. Each moves (n-1)/n of the device's chunk of that tensor,
  about one ring step's transfer, but is not overlapped with attention compute; memory stays O(T/n).
  With T divisible by n² the reorder keeps each device's rows local and is exactly one all-to-all per tensor;
  otherwise the split needs the whole sequence on each device (all-gathers, O(T) memory). None (default):
  stripe when causal and T is divisible by n² (logged once when causal and not); True: always (exact for
  non-causal attention too, but useless there); False: never. Gradients are exact either way.
  segment_ids: [B,T] or a ([B,T], [B,T]) pair (packed sequences; segments may span chunk boundaries).
  Query rows that can see no key return zeros, never NaN. With no mesh, or an axis of size 1, this is a
  plain `attention` call. Meshes with Explicit axes work too (the inputs are resharded to the in_specs).
  """
  if segment_ids is not None:
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, (tuple, list)) else (segment_ids, segment_ids)
    q_seg, kv_seg = jnp.asarray(q_seg, jnp.int32), jnp.asarray(kv_seg, jnp.int32)
  else:
    q_seg = kv_seg = None
  _check_shapes(q, k, v, q_seg, kv_seg)
  B, T, N, H = q.shape
  K = k.shape[2]
  scale = H ** -0.5 if scale is None else scale
  segments = None if q_seg is None else (q_seg, kv_seg)
  mesh = _resolve_mesh(mesh)
  if mesh is None:
    return attention(q, k, v, causal=causal, segment_ids=segments, scale=scale, implementation=implementation)
  sizes = dict(mesh.shape)
  if axis not in sizes:
    raise ValueError(f"ring_attention: axis {axis!r} is not in the mesh (axes {tuple(sizes)})")
  if axis in getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()):
    raise ValueError(f"ring_attention: already inside a shard_map over {axis!r}; call it on global arrays")
  n = sizes[axis]
  if T % n:
    raise ValueError(f"ring_attention: sequence length T={T} is not divisible by the size {n} of mesh axis {axis!r}")
  if n == 1:
    return attention(q, k, v, causal=causal, segment_ids=segments, scale=scale, implementation=implementation)

  batch = tuple(a for a in batch_axes if a in sizes and a not in (axis, head_axis))
  batch_size = 1
  for a in batch:
    batch_size *= sizes[a]
  if B % batch_size:
    _log_once(f"batch B={B} is not divisible by mesh axes {batch} (size {batch_size}); not sharding the batch")
    batch = ()
  heads = head_axis if head_axis in sizes and head_axis != axis else None
  if heads is not None and K % sizes[heads]:
    _log_once(f"kv heads K={K} are not divisible by mesh axis {heads!r} (size {sizes[heads]}); not sharding heads")
    heads = None
  batch_spec = batch or None
  qkv_spec, seg_spec = P(batch_spec, axis, heads, None), P(batch_spec, axis)
  impl = tuple(implementation) if isinstance(implementation, (list, tuple)) else implementation
  chunk = T // n
  if stripe is None:
    stripe = bool(causal) and chunk % n == 0
    if causal and not stripe:
      _log_once(f"T={T} is not divisible by n²={n * n} (n = size of {axis!r}); not striping the causal ring")
  cfg = _Ring(axis=axis, n=n, chunk=chunk, causal=bool(causal), scale=float(scale), implementation=impl,
              stripe=bool(stripe))
  local = functools.partial(_ring, cfg) if _CUSTOM_VJP else (lambda *xs: _ring_forward(cfg, *xs)[0])
  if q_seg is None:
    fn = lambda q, k, v: local(q, k, v, None, None)
    args, in_specs = (q, k, v), (qkv_spec,) * 3
  else:
    fn, args, in_specs = local, (q, k, v, q_seg, kv_seg), (qkv_spec,) * 3 + (seg_spec,) * 2
  explicit = bool(set(getattr(mesh, "explicit_axes", ())) & set(sizes))
  layout = (lambda spec: spec) if isinstance(mesh, AbstractMesh) else (lambda spec: NamedSharding(mesh, spec))

  def place(x, dim, shape):
    """x reshaped to `shape`, laid out like the in_specs but with the ring axis on dimension `dim` (or none)."""
    spec = [batch_spec] + [None] * (len(shape) - 1)
    if len(shape) > 3:
      spec[-2] = heads
    if dim is not None:
      spec[dim] = axis
    if explicit:
      return x.reshape(shape, out_sharding=layout(P(*spec)))
    return lax.with_sharding_constraint(x.reshape(shape), layout(P(*spec)))

  if cfg.stripe:  # on the global arrays, so XLA sees the reorder of a sharded array (all-to-alls)
    args = tuple(_reorder(x, n, False, place) for x in args)
  if explicit:  # Explicit axes: shard_map wants inputs laid out already
    args = tuple(jax.sharding.reshard(x, layout(spec)) for x, spec in zip(args, in_specs))
  out = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=qkv_spec)(*args)
  return _reorder(out, n, True, place) if cfg.stripe else out
