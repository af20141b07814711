"""Token-level losses and metrics, as weighted sums (normalised by the caller)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits, targets, weights=None, label_smoothing: float = 0.0):
  """Cross-entropy against label-smoothed targets (Szegedy et al. 2016): the target
  distribution is (1 - eps) · onehot + eps / V. Also returns the plain negative
  log-likelihood, for perplexity.

  logits [..., V] (float32), targets [...] int, weights [...] (default all 1).
  Returns sums over all positions: {"loss", "nll", "correct", "weight"}.
  """
  logits = logits.astype(jnp.float32)
  weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  loss = nll
  if label_smoothing:
    smooth = -jnp.mean(logp, axis=-1)  # cross-entropy against the uniform distribution
    loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum(loss * weights), "nll": jnp.sum(nll * weights),
          "correct": jnp.sum(correct * weights), "weight": jnp.sum(weights)}
