"""Logits processors with Hugging Face `generate` semantics, as pure jittable functions.

Each takes scores [R, V] (R = rows, i.e. batch x beams) and the token buffer
[R, L] of which the first `cur_len` columns are filled, and returns new scores.
The order in `process` is HF's: repetition penalty, no-repeat n-gram, minimum
new tokens; then, when sampling, temperature, top-k, top-p.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _seen(tokens, valid, vocab_size: int):
  """[R, V] bool: which ids occur in `tokens` [R, L] where `valid` [R, L]."""
  rows = jnp.arange(tokens.shape[0])[:, None]
  return jnp.zeros((tokens.shape[0], vocab_size), bool).at[rows, tokens].max(valid)


def repetition_penalty(scores, tokens, cur_len, prompt_start, penalty: float):
  """CTRL's penalty (Keskar et al. 2019) as HF applies it: a score s of an id that occurs in
  tokens[prompt_start:cur_len] becomes s * penalty if s < 0 else s / penalty (left padding ignored)."""
  idx = jnp.arange(tokens.shape[1])[None, :]
  seen = _seen(tokens, (idx >= prompt_start[:, None]) & (idx < cur_len), scores.shape[-1])
  return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def no_repeat_ngram(scores, tokens, cur_len, n: int):
  """Ban every id that would complete an n-gram already present in tokens[:cur_len] (HF's
  NoRepeatNGramLogitsProcessor, which also looks at the prompt)."""
  L = tokens.shape[1]
  starts = jnp.arange(L)
  match = starts + n <= cur_len  # the n-gram tokens[s : s + n] is complete
  for k in range(n - 1):
    current = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(cur_len - n + 1 + k, 0), axis=1)  # [R, 1]
    match = match & (tokens[:, jnp.minimum(starts + k, L - 1)] == current)
  banned = _seen(tokens[:, jnp.minimum(starts + n - 1, L - 1)], match & (cur_len >= n), scores.shape[-1])
  return jnp.where(banned, -jnp.inf, scores)


def top_k_filter(scores, k: int):
  kth = jax.lax.top_k(scores, min(k, scores.shape[-1]))[0][..., -1:]
  return jnp.where(scores < kth, -jnp.inf, scores)


def top_p_filter(scores, p: float):
  """Nucleus filtering (Holtzman et al. 2020) exactly as HF: drop the smallest ids whose
  cumulative probability is <= 1 - p; the most likely id is always kept."""
  order = jnp.argsort(scores, axis=-1)  # ascending
  sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
  remove_sorted = (cumulative <= 1 - p).at[..., -1].set(False)
  remove = jnp.zeros_like(remove_sorted).at[jnp.arange(scores.shape[0])[:, None], order].set(remove_sorted)
  return jnp.where(remove, -jnp.inf, scores)


def process(config, scores, tokens, cur_len, prompt_start, prompt_len, *, sampling: bool):
  """All processors `config` (a GenerationConfig) asks for, in HF's order."""
  if config.repetition_penalty != 1.0:
    scores = repetition_penalty(scores, tokens, cur_len, prompt_start, config.repetition_penalty)
  if config.no_repeat_ngram_size > 0:
    scores = no_repeat_ngram(scores, tokens, cur_len, config.no_repeat_ngram_size)
  if config.min_new_tokens > 0 and config.eos_ids:
    too_short = cur_len - prompt_len < config.min_new_tokens
    eos = jnp.zeros(scores.shape[-1], bool).at[jnp.asarray(config.eos_ids)].set(True)
    scores = jnp.where(too_short & eos, -jnp.inf, scores)
  if sampling:
    if config.temperature != 1.0:
      scores = scores / config.temperature
    if config.top_k:
      scores = top_k_filter(scores, config.top_k)
    if config.top_p < 1.0:
      scores = top_p_filter(scores, config.top_p)
  return scores
