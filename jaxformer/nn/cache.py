"""The key/value cache for incremental decoding.

One `KVCache` holds every layer's keys and values in fixed-size buffers of
`length` slots, so a whole decoding loop has static shapes and jits into one
`lax.while_loop`. Prompts of different lengths are left-padded: all rows then
write the same slot at every step (`index`), and padding is just slots whose
segment id is 0, which the attention API masks out.

A call with a cache writes its T new tokens into slots [index, index + T) and
attends causally over the buffer with `q_offset = index` (slots not yet written
are in the future, so the causal mask hides them). Cross-attention keys and
values are projected once from the encoder output on the first call and reused.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  index: jnp.ndarray  # int32 []: slots written so far (the same for every row)
  segment_ids: jnp.ndarray  # int32 [B, L]: 1 = a real token, 0 = padding or not written yet
  positions: jnp.ndarray  # int32 [B, L]: the position of the token in each slot (ALiBi needs it)
  keys: tuple[jnp.ndarray, ...]  # per layer [B, K, L, H] (head-major: a decoding step reads it without a transpose)
  values: tuple[jnp.ndarray, ...]
  cross_keys: tuple[jnp.ndarray, ...] | None = None  # per layer [B, K, S, H], from the encoder output
  cross_values: tuple[jnp.ndarray, ...] | None = None
  encoder_segment_ids: jnp.ndarray | None = None  # int32 [B, S]

  @classmethod
  def empty(cls, cfg, batch: int, length: int) -> KVCache:
    """Zeroed buffers of `length` slots for `cfg.num_layers` layers, in the compute dtype."""
    shape = (batch, cfg.kv_heads, length, cfg.dim_per_head)
    zeros = tuple(jnp.zeros(shape, cfg.compute_dtype) for _ in range(cfg.num_layers))
    return cls(index=jnp.zeros((), jnp.int32), segment_ids=jnp.zeros((batch, length), jnp.int32),
               positions=jnp.zeros((batch, length), jnp.int32), keys=zeros, values=zeros)

  def write(self, positions: jnp.ndarray, segment_ids: jnp.ndarray) -> KVCache:
    """Record the positions and segment ids [B, T] of the T tokens about to be written at `index`."""
    update = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), self.index, axis=1)
    return self.replace(positions=update(self.positions, positions), segment_ids=update(self.segment_ids, segment_ids))

  def gather(self, rows: jnp.ndarray) -> KVCache:
    """Select (and repeat or reorder) batch rows: beam search's reordering. rows [B'] -> cache of batch B'."""
    take = lambda x: None if x is None else jnp.take(x, rows, axis=0)
    many = lambda xs: None if xs is None else tuple(take(x) for x in xs)
    return self.replace(segment_ids=take(self.segment_ids), positions=take(self.positions),
                        keys=many(self.keys), values=many(self.values), cross_keys=many(self.cross_keys),
                        cross_values=many(self.cross_values), encoder_segment_ids=take(self.encoder_segment_ids))
