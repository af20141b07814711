"""The `reference` backend: einsum + softmax in float32.

Supports every feature of the API and any kind of autodiff; it is the oracle
every other backend is tested against. Memory is O(B·N·T·S).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer.attention.masks import MaskSpec


def reference_attention(q, k, v, *, mask: MaskSpec, bias=None, softcap=None, scale: float,
                        dropout_rate: float = 0.0, dropout_rng=None):
  """q [B,T,N,D], k [B,S,K,D], v [B,S,K,Dv] -> (out [B,T,N,Dv], lse [B,N,T] fp32)."""
  B, T, N, _ = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  qf = q.astype(jnp.float32).reshape(B, T, K, G, q.shape[-1])
  logits = jnp.einsum("btkgd,bskd->bkgts", qf, k.astype(jnp.float32)) * scale  # [B,K,G,T,S]
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  if bias is not None:
    bias = jnp.broadcast_to(bias.astype(jnp.float32), jnp.broadcast_shapes(bias.shape, (1, N, T, S)))
    logits = logits + bias.reshape(bias.shape[0], K, G, T, S)
  visible = mask.visible(jnp.arange(T), jnp.arange(S))[:, None, None]  # [B|1,1,1,T,S]
  logits = jnp.where(visible, logits, -jnp.inf)
  row_max = jnp.max(logits, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked rows
  p = jnp.exp(logits - row_max)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  lse = jnp.where(denom > 0, row_max + jnp.log(jnp.where(denom > 0, denom, 1.0)), -jnp.inf)
  probs = p / jnp.where(denom > 0, denom, 1.0)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))
  out = out.reshape(B, T, N, v.shape[-1]).astype(q.dtype)
  return out, lse[..., 0].reshape(B, N, T)
