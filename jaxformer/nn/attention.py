"""Multi-head attention layer (Vaswani et al. 2017, section 3.2) with GQA/MQA.

Projections live here; exact attention goes through `jaxformer.attention.attention`, whose
backend is `cfg.attention_impl`, except for `attention_impl="ring"`: sequence-parallel ring
attention over the ambient mesh (`jaxformer.parallel.ring`). Self-attention of another
`cfg.attention.kind` (linear, Performer, ...) is computed by `jaxformer.nn.variants.Mixer`.
"""
from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxformer.attention import attention
from jaxformer.nn.cache import KVCache
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.layers import constrain, param_init
from jaxformer.nn.positions import alibi_bias, rope
from jaxformer.nn.variants import Mixer, diagnose, projections


class MultiHeadAttention(nn.Module):
  """Self-attention (`context=None`) or cross-attention over `context`.

  Query heads N = cfg.num_heads share K = cfg.kv_heads key/value heads.
  RoPE and ALiBi apply to self-attention only (they encode the relative position
  of two tokens of the same sequence).
  """
  cfg: TransformerConfig
  causal: bool = False
  cross: bool = False  # cross-attention even when `context` is None (it is then read from the cache)

  @nn.compact
  def __call__(self, x, context=None, *, positions=None, segment_ids=None, deterministic: bool = True,
               cache: KVCache | None = None, layer: int = 0):
    """x [B, T, D]; context [B, S, D]; positions [B, T] (self-attention);
    segment_ids [B, T] or a ([B, T], [B, S]) pair -> [B, T, D].

    With a `cache`, returns (out, (keys, values)) for layer `layer`: self-attention writes its new
    keys/values into the cache buffers at `cache.index` and attends over all of them; cross-attention
    reuses the cached encoder keys/values, or projects them from `context` when there are none yet.
    """
    cfg = self.cfg
    is_self = context is None and not self.cross
    if self.cross and context is None and (cache is None or cache.cross_keys is None):
      raise ValueError("cross-attention needs the encoder output `context` (or a cache that holds its keys)")
    context = x if is_self else context
    N, K, H = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head

    def proj(heads, head_axis, name):
      return nn.DenseGeneral(
          (heads, H), use_bias=cfg.qkv_bias, dtype=cfg.compute_dtype,
          param_dtype=jnp.dtype(cfg.param_dtype), name=name,
          kernel_init=param_init(cfg, ("embed", head_axis, "kv")),
          bias_init=param_init(cfg, (head_axis, "kv"), "zeros"))

    kind = cfg.attention.kind if is_self else "softmax"  # cross-attention is always exact softmax attention
    used = projections(kind)
    q = constrain(proj(N, "heads", "query")(x), ("batch", "length", "heads", "kv")) if "query" in used else None
    if is_self or cache is None or cache.cross_keys is None:  # [B, S, K, H]
      k = constrain(proj(K, "kv_heads", "key")(context), ("batch", "length", "kv_heads", "kv")) if "key" in used else None
      v = constrain(proj(K, "kv_heads", "value")(context), ("batch", "length", "kv_heads", "kv"))
    else:  # the cache is head-major [B, K, S, H]
      k, v = cache.cross_keys[layer].swapaxes(1, 2), cache.cross_values[layer].swapaxes(1, 2)
    # kinds without q or k projections (synthesizer: neither; lsh: keys are the queries) carry zeros of their shape
    q = jnp.zeros(x.shape[:2] + (N, H), v.dtype) if q is None else q
    k = jnp.zeros(v.shape[:3] + (H,), v.dtype) if k is None else k

    if is_self and positions is None:
      positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    if is_self and cfg.position == "rope":
      rotate = lambda x: rope(x, positions, cfg.rope_theta, cfg.rope_fraction, cfg.rope_scaling)  # noqa: E731
      if kind == "differential":  # each half of a head is its own query/key (q1, q2): rotated on its own
        rotate = lambda x, whole=rotate: whole(  # noqa: E731
            x.reshape(*x.shape[:2], 2 * x.shape[2], x.shape[3] // 2)).reshape(x.shape)
      q, k = rotate(q), rotate(k)
    kv_positions, q_offset = positions, 0
    if is_self and cache is not None:
      write = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
          buf, new.swapaxes(1, 2).astype(buf.dtype), cache.index, axis=2).swapaxes(1, 2)
      k, v = write(cache.keys[layer], k), write(cache.values[layer], v)  # [B, L, K, H] views of the buffers
      q_segments = jnp.ones(x.shape[:2], jnp.int32) if segment_ids is None else segment_ids
      segment_ids, kv_positions, q_offset = (q_segments, cache.segment_ids), cache.positions, cache.index
    bias = alibi_bias(positions, kv_positions, N) if is_self and cfg.position == "alibi" else None  # [B, N, T, S]

    dropout = cfg.attention_dropout_rate if not deterministic else 0.0
    impl = cfg.attention_impl
    kw = dict(causal=self.causal, segment_ids=segment_ids, bias=bias, q_offset=q_offset, dropout_rate=dropout,
              dropout_rng=self.make_rng("dropout") if dropout else None, implementation=impl)
    if (is_self and cache is None and not self.is_initializing()
        and any(map(self.is_mutable_collection, ("attention_stats", "attention_maps")))):
      diagnose(self, cfg, q, k, kw)
    if kind != "softmax":
      out = Mixer(cfg, layer, name="mixer")(q, k, v, x, kw=kw, deterministic=deterministic, cached=cache is not None)
    elif impl == "ring" and cache is None and is_self:
      out = _ring(q, k, v, causal=self.causal, segment_ids=segment_ids, bias=bias, dropout=dropout)
    else:
      if impl == "ring":
        _log_ring_fallback("decoding with a KV cache" if cache is not None else "cross-attention")
        impl = None
      out = attention(q, k, v, **dict(kw, implementation=impl))  # [B, T, N, H]
    out = constrain(out, ("batch", "length", "heads", "kv"))
    out = nn.DenseGeneral(
        x.shape[-1], axis=(-2, -1), use_bias=cfg.out_bias, dtype=cfg.compute_dtype,
        param_dtype=jnp.dtype(cfg.param_dtype), name="out",
        kernel_init=param_init(cfg, ("heads", "kv", "embed")),
        bias_init=param_init(cfg, ("embed",), "zeros"))(out)
    return out if cache is None else (out, (k.swapaxes(1, 2), v.swapaxes(1, 2)))


def _ring(q, k, v, *, causal, segment_ids, bias, dropout):
  """`attention_impl="ring"`: ring attention over the "sequence" axis of the ambient mesh (`jax.set_mesh`).

  Self-attention only; a bias (ALiBi) and attention dropout raise. Cross-attention and decoding with a KV
  cache do not come here: they use the default backend (logged once), the encoder output's keys being
  gathered by XLA, and one new token against a cache having no sequence to split.
  """
  for feature, used in (("an attention bias (ALiBi)", bias is not None), ("attention dropout", dropout > 0)):
    if used:
      raise ValueError(f"model.attention_impl='ring' does not support {feature}; use another attention_impl")
  from jaxformer.parallel.ring import ring_attention  # lazily: jaxformer.parallel builds on jaxformer.nn
  return ring_attention(q, k, v, causal=causal, segment_ids=segment_ids)


@functools.cache
def _log_ring_fallback(what: str):
  logging.getLogger("jaxformer.nn").warning(
      "attention_impl='ring': %s uses the default attention backend instead", what)
