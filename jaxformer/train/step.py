"""Train state and the jitted train / eval steps.

The step is a pure function of (state, batch): dropout keys are
`fold_in(state.rng, step)`, so a resumed run repeats a step bit for bit.
Gradient accumulation scans over micro-batches and weights every token
equally, so the update equals the one a single large batch would give.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxformer.train.losses import cross_entropy, squared_error


class TrainState(struct.PyTreeNode):
  step: jnp.ndarray
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step k uses fold_in(rng, k)


def init_params(model, model_kind: str, batch: dict, seed: int):
  """Initialise plain (unboxed) params from an example batch; also returns the
  logical axis names of every parameter (a PartitionSpec tree)."""
  boxed = jax.jit(lambda key: model.init(key, *_model_args(model_kind, batch)))(jax.random.key(seed))
  return nn.unbox(boxed)["params"], nn.get_partition_spec(boxed)["params"]


def plan_train_state(model, model_kind: str, tx, batch: dict, seed: int, mesh):
  """The train state's layout on `mesh`, computed without allocating it: (abstract state, its
  shardings, `init()` that creates it). Parameters are laid out by their logical axis names
  (`parallel.RULES`), optimizer moments like their parameters; `init()` creates everything directly
  in its shardings (no device ever holds the whole state unless the mesh replicates it), with values
  that do not depend on the mesh (JAX's partitionable threefry RNG). A resumed run restores into the
  abstract state instead and never allocates a second copy."""
  from jaxformer.parallel import state_shardings, tree_shardings

  args = _model_args(model_kind, batch)
  key = jax.random.key(seed)

  def make(k):
    with nn.logical_axis_rules(()):  # no constraints while initialising: the out_shardings place everything
      return create_train_state(nn.unbox(model.init(k, *args))["params"], tx, seed)

  with nn.logical_axis_rules(()):
    boxed = jax.eval_shape(lambda k: model.init(k, *args), key)
    abstract_params = nn.unbox(boxed)["params"]
  param_sh = tree_shardings(mesh, nn.get_partition_spec(boxed)["params"], abstract_params)
  abstract = jax.eval_shape(make, key)
  state_sh = state_shardings(mesh, abstract, param_sh, abstract_params).replace(params=param_sh)
  return abstract, state_sh, lambda: jax.jit(make, out_shardings=state_sh)(key)


def init_train_state(model, model_kind: str, tx, batch: dict, seed: int, mesh):
  """`plan_train_state`, created: (state, its shardings)."""
  _, shardings, init = plan_train_state(model, model_kind, tx, batch, seed, mesh)
  return init(), shardings


def create_train_state(params, tx, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)))


CLASSIFIERS = ("encoder_classifier", "dual_encoder_classifier")  # one label per example: batch["label"]
REGRESSORS = ("in_context_regression",)  # real-valued predictions: squared error instead of cross-entropy
REGRESSION_TOLERANCE = 0.01  # a regression prediction counts as correct when its squared error / d is below this


def _model_args(model_kind: str, batch: dict):
  if model_kind == "encoder_decoder":
    return batch["inputs"], batch["decoder_inputs"]
  if model_kind == "dual_encoder_classifier":
    return batch["inputs1"], batch["inputs2"]
  return (batch["inputs"],)


def _model_kwargs(model_kind: str, batch: dict):
  if model_kind == "encoder_decoder":
    keys = ("inputs_positions", "inputs_segment_ids", "decoder_positions", "decoder_segment_ids")
  elif model_kind == "dual_encoder_classifier":
    keys = ("inputs1_positions", "inputs1_segment_ids", "inputs2_positions", "inputs2_segment_ids")
  else:
    keys = ("positions", "segment_ids")
  return {k: batch[k] for k in keys if k in batch}


def targets_and_weights(model_kind: str, batch: dict, pad_id: int | None):
  """Targets and per-target loss weights (padding targets weigh 0)."""
  targets = batch["label"] if model_kind in CLASSIFIERS else batch["targets"]
  if "weights" in batch:
    return targets, batch["weights"].astype(jnp.float32)
  if pad_id is None or model_kind in CLASSIFIERS:
    return targets, jnp.ones(targets.shape, jnp.float32)
  return targets, (targets != pad_id).astype(jnp.float32)


def forward(model, model_kind: str, params, batch: dict, *, deterministic: bool = True, rng=None):
  """Model logits for a batch (float32)."""
  rngs = {"dropout": rng} if rng is not None else {}
  return model.apply({"params": params}, *_model_args(model_kind, batch), deterministic=deterministic,
                     rngs=rngs, **_model_kwargs(model_kind, batch))


def loss_sums(model_kind: str, outputs, targets, weights, batch: dict, label_smoothing: float = 0.0) -> dict:
  """The loss sums of `cross_entropy` (logits), or of `squared_error` for regressors (predictions), whose
  "correct" is a squared error / d below REGRESSION_TOLERANCE (d: the prompt vectors' size, batch["inputs"])."""
  if model_kind in REGRESSORS:
    return squared_error(outputs, targets, weights, tolerance=REGRESSION_TOLERANCE * batch["inputs"].shape[-1])
  return cross_entropy(outputs, targets, weights, label_smoothing)


def _split_micro(batch: dict, n: int) -> dict:
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by train.grad_accum={n} (length-bucketed "
                       f"batches: set data.batch_multiple to a multiple of {n})")
    # micro-batch i = rows i, i + n, ...: each keeps the batch's row sharding (all devices busy)
    return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model, model_kind: str, tx, schedule, *, label_smoothing: float = 0.0,
                    grad_accum: int = 1):
  pad_id = model.cfg.pad_id
  if model_kind in REGRESSORS and label_smoothing:
    raise ValueError(f"label smoothing applies to classification, not to model_kind={model_kind!r}; "
                     "set optim.label_smoothing=0")

  def loss_fn(params, micro, total_weight, rng):
    logits = forward(model, model_kind, params, micro, deterministic=False, rng=rng)
    targets, weights = targets_and_weights(model_kind, micro, pad_id)
    sums = loss_sums(model_kind, logits, targets, weights, micro, label_smoothing)
    return sums["loss"] / total_weight, sums

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    total_weight = jnp.maximum(targets_and_weights(model_kind, batch, pad_id)[1].sum(), 1.0)
    if grad_accum == 1:
      grads, sums = grad_fn(state.params, batch, total_weight, rng)
    else:
      def body(carry, xs):
        i, micro = xs
        g, s = grad_fn(state.params, micro, total_weight, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, s)), None
      zeros = (jax.tree.map(jnp.zeros_like, state.params),
               {k: jnp.zeros((), jnp.float32) for k in ("loss", "nll", "correct", "weight")})
      (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), _split_micro(batch, grad_accum)))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": sums["loss"] / total_weight, "nll": sums["nll"] / total_weight,
        "accuracy": sums["correct"] / total_weight, "tokens": sums["weight"],
        "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates),
        "param_norm": optax.tree.norm(params), "lr": schedule(state.step),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model, model_kind: str):
  pad_id = model.cfg.pad_id

  def eval_step(params, batch: dict):
    logits = forward(model, model_kind, params, batch)
    targets, weights = targets_and_weights(model_kind, batch, pad_id)
    sums = loss_sums(model_kind, logits, targets, weights, batch)
    packed = "segment_ids" in batch or "decoder_segment_ids" in batch  # a row holds several sequences: no row metric
    if model_kind not in CLASSIFIERS + REGRESSORS and not packed:  # rows whose every scored target is the argmax
      scored = weights.sum(-1) > 0
      wrong = ((jnp.argmax(logits, -1) != targets) & (weights > 0)).any(-1)
      sums |= {"rows_correct": jnp.sum(scored & ~wrong).astype(jnp.float32),
               "rows": jnp.sum(scored).astype(jnp.float32)}
    return sums

  return eval_step
