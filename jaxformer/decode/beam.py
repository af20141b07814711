"""Beam search with Hugging Face `generate` semantics (transformers 5, `_beam_search`).

The same algorithm, step for step, on fixed-shape arrays inside a `lax.while_loop`:
each step takes the top (1 + #EOS, at least 2) x num_beams continuations of all
beams; those ending in EOS (or reaching max_length) among the first num_beams are
scored sum(log p) / generated_length ** length_penalty and merged into the
num_beams best finished hypotheses; the best num_beams unfinished ones run on.
A batch row stops when it has num_beams finished hypotheses (early_stopping=True)
or when the running beams can no longer beat the worst finished one (HF's
heuristic for False and "never"). The -1e9 sentinels are HF's, so scores and
ties come out the same.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer.decode.generate import GenerateOutput, GenerationConfig, Start, step_logits
from jaxformer.decode.processors import process

NEG = -1.0e9


def _take(x, idx):
  """x [B, M, ...], idx [B, K] -> x[b, idx[b, k], ...] : [B, K, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(model, params, s: Start, config: GenerationConfig) -> GenerateOutput:
  B, total = s.tokens.shape
  nb, P, lp = config.num_beams, s.cur_len, config.length_penalty
  keep = max(2, 1 + len(config.eos_ids)) * nb
  is_top = jnp.arange(keep) < nb
  eos = jnp.asarray(config.eos_ids or (-1,), jnp.int32)
  # HF fills unused columns with `pad_token_id or eos_token_id[0]` (so a pad id of 0 falls back to EOS).
  fill = (config.pad_token_id or config.eos_ids[0]) if config.eos_ids else -1
  rows = jnp.repeat(jnp.arange(B), nb)

  def body(state):
    cur_len, running, running_scores, sequences, scores, finished, unsatisfied, _, cache, logits, position = state
    V = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_probs = process(config, log_probs, running.reshape(B * nb, total), cur_len, s.prompt_start[rows], P,
                        sampling=False)
    log_probs = (log_probs.reshape(B, nb, V) + running_scores[:, :, None]).reshape(B, nb * V)

    # c. the top `keep` continuations over all beams
    topk_scores, topk_idx = jax.lax.top_k(log_probs, keep)
    source, ids = topk_idx // V, topk_idx % V
    topk_seqs = _take(running, source).at[:, :, cur_len].set(ids)  # [B, keep, L]
    # d. which of them stop here (EOS, or the sequence is full)
    hits = jnp.isin(ids, eos) | (cur_len + 1 >= total)

    # e. the best num_beams that go on
    running_lp = topk_scores + hits * NEG
    nxt = jax.lax.top_k(running_lp, nb)[1]
    running, running_scores, source = _take(topk_seqs, nxt), _take(running_lp, nxt), _take(source, nxt)

    # f. merge the newly finished ones (only among the top num_beams) into the finished set
    just_finished = hits & is_top[None, :]
    final = topk_scores / (cur_len + 1 - P).astype(jnp.float32) ** lp
    final = final + (jnp.all(finished, axis=-1, keepdims=True) & (config.early_stopping is True)) * NEG
    final = final + (~unsatisfied) * NEG
    final = final + (~just_finished) * NEG
    merged = jnp.concatenate([scores, final], axis=1)
    best = jax.lax.top_k(merged, nb)[1]
    sequences = _take(jnp.concatenate([sequences, topk_seqs], axis=1), best)
    scores = _take(merged, best)
    finished = _take(jnp.concatenate([finished, just_finished], axis=1), best)

    # g. the stopping condition of the whole search
    cur_len = cur_len + 1
    best_len = (total - P) if (config.early_stopping == "never" and lp > 0.0) else (cur_len - P)
    best_running = running_scores[:, :1] / jnp.asarray(best_len, jnp.float32) ** lp
    worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), NEG)
    unsatisfied = unsatisfied & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
    go_on = (jnp.any(unsatisfied) & ~(jnp.all(finished) & (config.early_stopping is True)) & ~jnp.all(hits))

    # the next step's logits, with the cache rows of the beams that go on
    cache = cache.gather((jnp.arange(B)[:, None] * nb + source).reshape(-1))
    logits, cache = step_logits(model, params, cache, running[:, :, cur_len - 1].reshape(-1), position)
    return (cur_len, running, running_scores, sequences, scores, finished, unsatisfied, go_on, cache, logits,
            position + 1)

  running = jnp.repeat(s.tokens.at[:, P:].set(fill)[:, None], nb, axis=1)  # [B, nb, L]
  state = (jnp.asarray(P, jnp.int32), running, jnp.zeros((B, nb)).at[:, 1:].set(NEG), running,
           jnp.full((B, nb), NEG), jnp.zeros((B, nb), bool), jnp.ones((B, 1), bool), jnp.asarray(True),
           s.cache.gather(rows), s.logits[rows], s.position[rows])
  state = jax.lax.while_loop(lambda state: state[7], body, state)
  sequences, scores = state[3], state[4]
  n = config.num_return_sequences
  return GenerateOutput(sequences[:, :n].reshape(B * n, total), scores[:, :n].reshape(B * n))
