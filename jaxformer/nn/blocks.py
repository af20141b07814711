"""Transformer blocks and layer stacks.

One `Block` covers the three layer kinds: encoder (bidirectional self-attention),
decoder-only (causal self-attention) and encoder-decoder decoder (causal
self-attention + cross-attention). `cfg.pre_norm` picks pre-LN (GPT-2, Llama)
or post-LN (Vaswani et al. 2017: LayerNorm(x + Sublayer(x))).
"""
from __future__ import annotations

import flax.linen as nn

from jaxformer.nn.attention import MultiHeadAttention
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.layers import MLP, Norm, constrain


class Block(nn.Module):
  cfg: TransformerConfig
  causal: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x, encoded=None, *, positions=None, segment_ids=None, cross_segment_ids=None,
               deterministic: bool = True):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate)

    def sublayer(x, fn, name):
      norm = Norm(cfg, name=f"{name}_norm")
      if cfg.pre_norm:
        return x + drop(fn(norm(x)), deterministic=deterministic)
      return norm(x + drop(fn(x), deterministic=deterministic))

    x = sublayer(x, lambda h: MultiHeadAttention(cfg, causal=self.causal, name="self_attention")(
        h, positions=positions, segment_ids=segment_ids, deterministic=deterministic), "self_attention")
    if self.cross:
      x = sublayer(x, lambda h: MultiHeadAttention(cfg, name="cross_attention")(
          h, encoded, segment_ids=cross_segment_ids, deterministic=deterministic), "cross_attention")
    x = sublayer(x, lambda h: MLP(cfg, name="mlp")(h, deterministic), "mlp")
    return constrain(x, ("batch", "length", "embed"))


class Stack(nn.Module):
  """`num_layers` blocks, plus the final norm that pre-LN stacks need."""
  cfg: TransformerConfig
  num_layers: int
  causal: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x, encoded=None, *, deterministic: bool = True, **kw):
    for i in range(self.num_layers):
      x = Block(self.cfg, self.causal, self.cross, name=f"layers_{i}")(
          x, encoded, deterministic=deterministic, **kw)
    return Norm(self.cfg, name="final_norm")(x) if self.cfg.pre_norm else x
