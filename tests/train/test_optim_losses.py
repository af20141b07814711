import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxformer.train import cross_entropy, make_optimizer, make_schedule, rsqrt_schedule


def _optim(**kw):
  base = dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1, b1=0.9, b2=0.98,
              eps=1e-9, weight_decay=0.0, clip_norm=0.0, label_smoothing=0.0)
  return ml_collections.ConfigDict({**base, **kw})


@pytest.mark.parametrize("step", [1, 2, 100, 3999, 4000, 4001, 10000, 100000])
def test_rsqrt_schedule_is_the_papers_formula(step):
  d_model, warmup = 512, 4000
  want = d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)
  # optax passes the number of updates done so far (step - 1)
  assert float(rsqrt_schedule(d_model, warmup)(step - 1)) == pytest.approx(want, rel=1e-5)


def test_cosine_and_constant_schedules():
  cos = make_schedule(_optim(schedule="cosine", lr=1.0, warmup_steps=10, min_lr_ratio=0.1), 64, 110)
  assert float(cos(0)) == 0.0
  assert float(cos(5)) == pytest.approx(0.5)
  assert float(cos(10)) == pytest.approx(1.0)
  assert float(cos(60)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-5)
  assert float(cos(110)) == pytest.approx(0.1)
  const = make_schedule(_optim(schedule="constant", lr=0.3, warmup_steps=0), 64, 100)
  assert float(const(0)) == float(const(99)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="optim.schedule"):
    make_schedule(_optim(schedule="linear"), 64, 100)


def test_label_smoothed_cross_entropy_by_hand():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  targets = jnp.array([0, 1])
  weights = jnp.array([1.0, 0.5])
  eps = 0.1
  out = cross_entropy(logits, targets, weights, label_smoothing=eps)
  loss = nll = 0.0
  for row, t, w in zip(np.asarray(logits, np.float64), [0, 1], [1.0, 0.5]):
    logp = row - math.log(sum(math.exp(v) for v in row))
    q = [eps / 3 + (1 - eps) * (i == t) for i in range(3)]  # (1-eps)·onehot + eps/V
    loss += w * -sum(qi * lp for qi, lp in zip(q, logp))
    nll += w * -logp[t]
  assert float(out["loss"]) == pytest.approx(loss, rel=1e-6)
  assert float(out["nll"]) == pytest.approx(nll, rel=1e-6)
  assert float(out["correct"]) == pytest.approx(1.0)  # row 0 right, row 1 wrong
  assert float(out["weight"]) == pytest.approx(1.5)


def test_weight_decay_skips_vectors():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = {"w": jnp.zeros((2, 2)), "b": jnp.zeros((2,))}
  tx, _ = make_optimizer(_optim(schedule="constant", warmup_steps=0, lr=0.1, weight_decay=0.5), 8, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["b"], 0.0)  # biases and norm scales are not decayed
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  with pytest.raises(ValueError, match="optim.name"):
    make_optimizer(_optim(name="sgd"), 8, 10)


def test_global_norm_clipping_applies():
  """Adam is scale-invariant but for eps: clipping the gradient to a norm far below eps
  shrinks the update far below lr; without clipping the first update is ~lr."""
  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.array([3.0, -4.0, 0.0])}
  kw = dict(name="adam", schedule="constant", warmup_steps=0, lr=0.1, eps=1e-3)
  free, _ = make_optimizer(_optim(**kw, clip_norm=0.0), 8, 10)
  clipped, _ = make_optimizer(_optim(**kw, clip_norm=1e-6), 8, 10)
  u_free, _ = free.update(grads, free.init(params), params)
  u_clip, _ = clipped.update(grads, clipped.init(params), params)
  np.testing.assert_allclose(np.abs(u_free["w"][:2]), 0.1, rtol=1e-3)
  assert np.all(np.abs(np.asarray(u_clip["w"])) < 1e-3)
