"""Optimizers and learning-rate schedules (optax)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("rsqrt", "cosine", "constant")


def rsqrt_schedule(d_model: int, warmup_steps: int, scale: float = 1.0):
  """Vaswani et al. 2017, eq. (3): lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5).

  `step` counts from 1 (optax counts updates from 0), times an optional `scale`.
  """
  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    return scale * d_model ** -0.5 * jnp.minimum(step ** -0.5, step * warmup_steps ** -1.5)
  return schedule


def make_schedule(optim, d_model: int, total_steps: int):
  """optim.schedule: "rsqrt" (lr is a multiplier of the paper's formula), "cosine"
  (linear warmup to lr, cosine decay to lr · min_lr_ratio), or "constant" (after warmup)."""
  if optim.schedule == "rsqrt":
    return rsqrt_schedule(d_model, max(optim.warmup_steps, 1), optim.lr)
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, optim.lr, optim.warmup_steps, max(total_steps, optim.warmup_steps + 1),
        end_value=optim.lr * optim.min_lr_ratio)
  if optim.schedule == "constant":
    if optim.warmup_steps:
      return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
                                   optax.constant_schedule(optim.lr)], [optim.warmup_steps])
    return optax.constant_schedule(optim.lr)
  raise ValueError(f"unknown optim.schedule={optim.schedule!r}; expected one of {SCHEDULES}")


def _decay_mask(params):
  """Weight decay on matrices only: not on biases, norm scales (1-d leaves)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optim, d_model: int, total_steps: int):
  """Returns (optax transformation, schedule). optim.name: "adamw" or "adam"."""
  schedule = make_schedule(optim, d_model, total_steps)
  if optim.name == "adamw":
    opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=_decay_mask)
  elif optim.name == "adam":
    opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  else:
    raise ValueError(f"unknown optim.name={optim.name!r}; expected 'adamw' or 'adam'")
  if optim.clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(optim.clip_norm), opt)
  return opt, schedule
