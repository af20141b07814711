"""Token-level losses and metrics (and the squared error of regression), as weighted sums (normalised by the
caller)."""
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


def squared_error(predictions, targets, weights=None, tolerance: float = 0.0):
  """Squared error of real-valued predictions (in-context regression, Garg et al. 2022), in the sums dict of
  `cross_entropy` so the train loop, gradient accumulation and `evaluate` serve it unchanged: "loss" and "nll"
  are the weighted sum of (prediction - target)^2, "correct" counts the predictions with a squared error below
  `tolerance` (the "accuracy" the loop logs).

  predictions, targets, weights: [...] (weights default all 1)."""
  err = jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
  weights = jnp.ones(err.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  total = jnp.sum(err * weights)
  return {"loss": total, "nll": total, "correct": jnp.sum((err < tolerance) * weights), "weight": jnp.sum(weights)}
