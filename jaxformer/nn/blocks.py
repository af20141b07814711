"""Transformer blocks and layer stacks.

One `Block` covers the three layer kinds: encoder (bidirectional self-attention),
decoder-only (causal self-attention) and encoder-decoder decoder (causal
self-attention + cross-attention). `cfg.pre_norm` picks pre-LN (GPT-2, Llama)
or post-LN (Vaswani et al. 2017: LayerNorm(x + Sublayer(x))).
"""
from __future__ import annotations

import flax.linen as nn

from jaxformer.nn.attention import MultiHeadAttention
from jaxformer.nn.cache import KVCache
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.layers import MLP, Norm, constrain


class Block(nn.Module):
  cfg: TransformerConfig
  causal: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x, encoded=None, *, positions=None, segment_ids=None, cross_segment_ids=None,
               deterministic: bool = True, cache: KVCache | None = None, layer: int = 0):
    """x [B, T, D] -> [B, T, D]; with a `cache`, (x, {"self": (k, v), "cross": (k, v) or None})."""
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate)
    new_kv = {"self": None, "cross": None}

    def sublayer(x, fn, name):
      norm = Norm(cfg, name=f"{name}_norm")
      if cfg.pre_norm:
        return x + drop(fn(norm(x)), deterministic=deterministic)
      return norm(x + drop(fn(x), deterministic=deterministic))

    def attend(h, context, kind, **kw):
      out = MultiHeadAttention(cfg, causal=self.causal and kind == "self", cross=kind == "cross",
                               name=f"{kind}_attention")(
          h, context, deterministic=deterministic, cache=cache, layer=layer, **kw)
      if cache is None:
        return out
      out, new_kv[kind] = out
      return out

    x = sublayer(x, lambda h: attend(h, None, "self", positions=positions, segment_ids=segment_ids),
                 "self_attention")
    if self.cross:
      x = sublayer(x, lambda h: attend(h, encoded, "cross", segment_ids=cross_segment_ids), "cross_attention")
    x = sublayer(x, lambda h: MLP(cfg, name="mlp")(h, deterministic), "mlp")
    x = constrain(x, ("batch", "length", "embed"))
    return x if cache is None else (x, new_kv)


class Stack(nn.Module):
  """`num_layers` blocks, plus the final norm that pre-LN stacks need.

  With a `cache` (KVCache), returns (x, cache) with every layer's keys/values updated
  (`cache.index` is advanced by the model, which owns the token bookkeeping).
  """
  cfg: TransformerConfig
  num_layers: int
  causal: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x, encoded=None, *, deterministic: bool = True, cache: KVCache | None = None, **kw):
    kvs = []
    for i in range(self.num_layers):
      block = Block(self.cfg, self.causal, self.cross, name=f"layers_{i}")
      if cache is None:
        x = block(x, encoded, deterministic=deterministic, layer=i, **kw)
      else:
        x, kv = block(x, encoded, deterministic=deterministic, cache=cache, layer=i, **kw)
        kvs.append(kv)
    x = Norm(self.cfg, name="final_norm")(x) if self.cfg.pre_norm else x
    if cache is None:
      return x
    cache = cache.replace(keys=tuple(kv["self"][0] for kv in kvs), values=tuple(kv["self"][1] for kv in kvs))
    if self.cross:
      cache = cache.replace(cross_keys=tuple(kv["cross"][0] for kv in kvs),
                            cross_values=tuple(kv["cross"][1] for kv in kvs))
    return x, cache
