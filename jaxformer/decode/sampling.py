"""Simple jitted decoding by full recomputation (no KV cache yet).

Each step re-runs the model on a fixed-size buffer, so shapes never change and
the whole loop is one `lax.fori_loop`. Cost is O(L) model calls of length L:
fine for the small models and short outputs used in demos and tests.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def sample_logits(logits, rng, temperature: float = 1.0, top_k: int | None = None):
  """Greedy when temperature == 0; else sample from softmax(logits / T), optionally top-k."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


@partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "context"))
def generate(model, params, prompt, rng, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, context: int | None = None):
  """Continue `prompt` [B, P] (a DecoderOnly) by `max_new_tokens`; returns [B, P + max_new_tokens].

  `context` crops what the model sees to the last `context` tokens (as nanoGPT does),
  so a model trained on short blocks can write longer text.
  """
  B, P = prompt.shape
  total = P + max_new_tokens
  window = total if context is None else min(context, total)
  buf = jnp.concatenate([prompt, jnp.zeros((B, max_new_tokens), prompt.dtype)], axis=1)

  def body(t, buf):
    start = jnp.clip(t - window, 0, total - window)
    seen = jax.lax.dynamic_slice_in_dim(buf, start, window, axis=1)  # [B, W]
    logits = model.apply({"params": params}, seen)
    logits = jax.lax.dynamic_index_in_dim(logits, t - 1 - start, axis=1, keepdims=False)  # [B, V]
    token = sample_logits(logits, jax.random.fold_in(rng, t), temperature, top_k)
    return buf.at[:, t].set(token.astype(buf.dtype))

  return jax.lax.fori_loop(P, P + max_new_tokens, body, buf)


@partial(jax.jit, static_argnames=("model", "max_len", "bos_id", "eos_id"))
def greedy_seq2seq(model, params, inputs, *, max_len: int, bos_id: int, eos_id: int):
  """Greedy decoding of an EncoderDecoder: inputs [B, S] -> tokens [B, max_len], padded (0)
  after the first EOS (which is kept)."""
  B = inputs.shape[0]
  encoded = model.apply({"params": params}, inputs, method=model.encode)
  buf = jnp.zeros((B, max_len + 1), inputs.dtype).at[:, 0].set(bos_id)
  done = jnp.zeros((B,), bool)

  def body(t, carry):
    buf, done = carry
    logits = model.apply({"params": params}, encoded, inputs, buf[:, :-1], method=model.decode)[:, t]
    token = jnp.where(done, 0, jnp.argmax(logits, axis=-1)).astype(buf.dtype)
    return buf.at[:, t + 1].set(token), done | (token == eos_id)

  buf, _ = jax.lax.fori_loop(0, max_len, body, (buf, done))
  return buf[:, 1:]
