import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.nn import alibi_bias, alibi_slopes, rope, sinusoidal


def test_sinusoidal_is_the_papers_formula():
  d = 10
  pe = np.asarray(sinusoidal(jnp.arange(50), d))
  for pos in range(50):
    for i in range(d // 2):
      assert pe[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / d)), abs=1e-5)
      assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / d)), abs=1e-5)


def test_rope_scores_depend_only_on_relative_offset():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32)

  def score(i, j):
    qi = rope(q, jnp.array([[i]]))
    kj = rope(k, jnp.array([[j]]))
    return np.asarray(jnp.sum(qi * kj, -1))

  for offset in (0, 3, 17):
    base = score(offset, 0)
    for shift in (1, 5, 100):
      np.testing.assert_allclose(score(offset + shift, shift), base, rtol=1e-4, atol=1e-4)
  assert not np.allclose(score(5, 0), score(0, 0))  # it does encode the offset
  # position 0 is the identity; the rotation keeps norms
  np.testing.assert_allclose(rope(q, jnp.zeros((1, 1), jnp.int32)), q, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(rope(q, jnp.array([[7]])), axis=-1), jnp.linalg.norm(q, axis=-1),
                             rtol=1e-5)


def test_partial_rope_leaves_the_tail_alone():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 1, 8)), jnp.float32)
  y = rope(x, jnp.arange(3)[None], fraction=0.5)
  np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
  assert not np.allclose(y[:, 1:, :, :4], x[:, 1:, :, :4])


@pytest.mark.parametrize("heads, expected", [
    # Press et al. 2022: 8 heads -> 1/2, 1/4, ..., 1/256
    (8, [2.0 ** -i for i in range(1, 9)]),
    # 6 heads: the 4-head slopes, then every other slope of 8 heads
    (6, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
    # 12 heads: the 8-head slopes, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...)
    (12, [2.0 ** -i for i in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]),
])
def test_alibi_slopes_match_the_paper(heads, expected):
  np.testing.assert_allclose(alibi_slopes(heads), expected, rtol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
  pos = jnp.arange(5)[None]
  bias = np.asarray(alibi_bias(pos, pos, 4))
  slopes = alibi_slopes(4)
  for n in range(4):
    for i in range(5):
      for j in range(5):
        assert bias[0, n, i, j] == pytest.approx(-slopes[n] * abs(i - j))


def test_rope_is_differentiable():
  x = jnp.ones((1, 2, 1, 4))
  g = jax.grad(lambda x: rope(x, jnp.arange(2)[None]).sum())(x)
  assert np.all(np.isfinite(g)) and not np.allclose(g, 0)
