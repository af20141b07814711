"""Structured attention masks, evaluated on index arrays.

A mask is never passed around densely: backends call `visible` on whatever
block of query/key indices they are working on, so a blockwise kernel can build
one tile at a time and skip tiles that are entirely invisible.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """What may attend to what. Every field is optional; all given ones combine (AND).

  causal: key position j is visible from query position i iff j <= i + q_offset.
  window: (left, right) — visible iff i + q_offset - left <= j <= i + q_offset + right;
    None on either side means unbounded.
  q_segment_ids [B, T] / kv_segment_ids [B, S]: visible iff the ids are equal
    (packed sequences; by convention 0 marks padding).
  q_lengths / kv_lengths [B]: query rows >= q_length and keys >= kv_length are
    padding (right-padded batches).
  q_offset: scalar or [B]; absolute position of query row 0 (decoding against a
    KV cache, chunked prefill).
  """
  causal: bool = False
  window: tuple[int | None, int | None] | None = None
  q_segment_ids: jnp.ndarray | None = None
  kv_segment_ids: jnp.ndarray | None = None
  q_lengths: jnp.ndarray | None = None
  kv_lengths: jnp.ndarray | None = None
  q_offset: jnp.ndarray | int = 0

  @property
  def is_trivial(self) -> bool:
    return (not self.causal and self.window is None and self.q_segment_ids is None
            and self.q_lengths is None and self.kv_lengths is None)

  def visible(self, q_idx: jnp.ndarray, kv_idx: jnp.ndarray) -> jnp.ndarray:
    """Boolean visibility for query rows `q_idx` [T'] and keys `kv_idx` [S'].

    Returns an array broadcastable to [B, T', S'] (leading dim 1 when no per-row
    field is set).
    """
    offset = jnp.asarray(self.q_offset, jnp.int32).reshape(-1, 1, 1)  # [B or 1, 1, 1]
    q_pos = q_idx[None, :, None] + offset  # [B|1, T', 1]
    kv_pos = kv_idx[None, None, :]  # [1, 1, S']
    ok = jnp.ones((1, q_idx.shape[0], kv_idx.shape[0]), bool)
    if self.causal:
      ok = ok & (kv_pos <= q_pos)
    if self.window is not None:
      left, right = self.window
      if left is not None:
        ok = ok & (kv_pos >= q_pos - left)
      if right is not None:
        ok = ok & (kv_pos <= q_pos + right)
    if self.q_segment_ids is not None:
      q_seg = self.q_segment_ids[:, q_idx]  # [B, T']
      kv_seg = self.kv_segment_ids[:, kv_idx]  # [B, S']
      ok = ok & (q_seg[:, :, None] == kv_seg[:, None, :])
    if self.q_lengths is not None:
      ok = ok & (q_idx[None, :, None] < self.q_lengths[:, None, None])
    if self.kv_lengths is not None:
      ok = ok & (kv_idx[None, None, :] < self.kv_lengths[:, None, None])
    return ok
