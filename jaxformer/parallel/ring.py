"""Ring attention: exact attention over a sequence sharded across devices.

Liu, Zaharia & Abbeel 2023, "Ring Attention with Blockwise Transformers for
Near-Infinite Context". The sequence axis T is split over the `n` devices of a
mesh axis; each device keeps its C = T/n queries and passes its key/value chunk
around the ring, so after n steps every query has met every key. Partial
results are merged exactly with their log-sum-exp, so the output equals plain
attention up to float32 rounding.
"""
from __future__ import annotations

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
  to_bcn = lambda x: (x / safe).transpose(0, 2, 1)[..., None]  # [B,N,C] -> [B,C,N,1]
  new_out = to_bcn(w) * out + to_bcn(part_w) * part_out.astype(jnp.float32)
  return new_out, new_lse


def ring_attention(q, k, v, *, causal: bool = False, segment_ids=None, scale: float | None = None, mesh=None,
                   axis: str = "sequence", batch_axes: Sequence[str] = ("data", "fsdp"),
                   head_axis: str | None = "tensor", implementation: str | Sequence[str] | None = "blockwise"):
  """q [B,T,N,H], k/v [B,T,K,H] global arrays (inside or outside jit) -> out [B,T,N,H].

  Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers"): a `jax.shard_map` over
  `mesh` (None = the ambient mesh of `jax.set_mesh`) splits T over mesh axis `axis` (n devices, chunks of
  C = T/n), B over the `batch_axes` and heads over `head_axis` that the mesh has (heads stay whole when K
  is not divisible by the head axis). Each device computes its queries against its K/V chunk with
  `jaxformer.attention.attention(implementation=...)`, passes the chunk on with `lax.ppermute`, and merges
  the n partial results by log-sum-exp in float32.

  Costs per device: O(T/n) memory for K/V in the forward pass and n-1 ppermutes of one K/V chunk (plus its
  segment ids), each independent of the step's compute so XLA can overlap the two. Gradients come from
  ordinary autodiff through the loop (ppermute transposes to the reverse ring); autodiff keeps every step's
  K/V chunk and partial output as residuals, so training holds O(T) of K/V per device (a custom VJP that
  circulates K/V again in the backward pass would bring it back to O(T/n)).

  causal: a query at global position i sees keys j <= i. The chunk from device src gets q_offset
  (my - src)·C; chunks entirely in the future give lse = -inf and add nothing (the blockwise backend
  iterates over no key block for them). There is no striping, so the causal load is unbalanced: the device
  holding the last chunk attends to all n chunks, the first only to its own, and the ring waits for the
  slowest (striped ring attention would even it out).
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
  C = T // n
  perm = [(i, (i + 1) % n) for i in range(n)]  # after s steps, device `my` holds the chunk of device my - s

  def local(q, k, v, q_seg, kv_seg):
    my = lax.axis_index(axis)

    def chunk(kv, step):
      """This device's queries against the K/V chunk that started on device src = (my - step) mod n."""
      k, v, kv_seg = kv
      offset = 0  # the diagonal chunk (step None): src = my
      if causal and step is not None:  # query position my·C + i, key position src·C + j
        offset = (my - (my - step) % n) * C
      return attention(q, k, v, causal=causal, segment_ids=None if q_seg is None else (q_seg, kv_seg), scale=scale,
                       q_offset=offset, implementation=implementation, return_lse=True)

    def step(carry, s):
      kv, out, lse = carry
      nxt = lax.ppermute(kv, axis, perm)  # independent of this step's compute, so the transfer can overlap it
      out, lse = _merge(out, lse, *chunk(kv, s))
      return (nxt, out, lse), None

    kv = lax.ppermute((k, v, kv_seg), axis, perm)
    out, lse = chunk((k, v, kv_seg), None)  # the diagonal chunk: src = my, q_offset 0
    out = out.astype(jnp.float32)
    if n > 2:
      (kv, out, lse), _ = lax.scan(step, (kv, out, lse), jnp.arange(1, n - 1))
    out, _ = _merge(out, lse, *chunk(kv, n - 1))
    return out.astype(q.dtype)

  if q_seg is None:
    fn = lambda q, k, v: local(q, k, v, None, None)
    args, in_specs = (q, k, v), (qkv_spec,) * 3
  else:
    fn, args, in_specs = local, (q, k, v, q_seg, kv_seg), (qkv_spec,) * 3 + (seg_spec,) * 2
  if set(getattr(mesh, "explicit_axes", ())) & set(sizes):  # Explicit axes: shard_map wants inputs laid out already
    layout = (lambda spec: spec) if isinstance(mesh, AbstractMesh) else (lambda spec: NamedSharding(mesh, spec))
    args = tuple(jax.sharding.reshard(x, layout(spec)) for x, spec in zip(args, in_specs))
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=qkv_spec)(*args)
