"""Sampling text longer than the model's context, nanoGPT style, by recomputation.

`generate_sliding` re-runs the model on the last `context` tokens at every step, so a
model trained on short blocks (with learned positions) can write any length; a KV
cache cannot do this, since every position shifts when the window slides. Cost is
O(new tokens) full forward passes: for demos of small models. Use
`jaxformer.decode.generate` (KV cache) whenever the text fits the context.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxformer.decode.generate import check_positions


def sample_logits(logits, rng, temperature: float = 1.0, top_k: int | None = None):
  """Greedy when temperature == 0; else sample from softmax(logits / T), optionally top-k."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "context"))
def generate_sliding(model, params, prompt, rng, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, context: int | None = None):
  """Continue `prompt` [B, P] (a DecoderOnly) by `max_new_tokens`; returns [B, P + max_new_tokens].

  `context` crops what the model sees to the last `context` tokens (as nanoGPT does),
  so a model trained on short blocks can write longer text.
  """
  B, P = prompt.shape
  total = P + max_new_tokens
  window = total if context is None else min(context, total)
  check_positions(model.cfg, window, "the context window")
  buf = jnp.concatenate([prompt, jnp.zeros((B, max_new_tokens), prompt.dtype)], axis=1)

  def body(t, buf):
    start = jnp.clip(t - window, 0, total - window)
    seen = jax.lax.dynamic_slice_in_dim(buf, start, window, axis=1)  # [B, W]
    logits = model.apply({"params": params}, seen)
    logits = jax.lax.dynamic_index_in_dim(logits, t - 1 - start, axis=1, keepdims=False)  # [B, V]
    token = sample_logits(logits, jax.random.fold_in(rng, t), temperature, top_k)
    return buf.at[:, t].set(token.astype(buf.dtype))

  return jax.lax.fori_loop(P, P + max_new_tokens, body, buf)
