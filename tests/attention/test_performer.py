"""Performer FAVOR+ (Choromanski et al. 2021): approximation of softmax attention, the chunked causal form
against the quadratic form in feature space, orthogonal features, unbiasedness, GQA and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention import attention
from jaxformer.attention.variants.performer import performer_attention, positive_features, random_features

H = 16


def _qkv(B=2, T=16, S=16, N=4, K=2, D=H, Dv=8, sigma=0.5, seed=0):
  rng = np.random.default_rng(seed)
  return ((sigma * rng.normal(size=(B, T, N, D))).astype(np.float32),
          (sigma * rng.normal(size=(B, S, K, D))).astype(np.float32),
          rng.normal(size=(B, S, K, Dv)).astype(np.float32))


def _rel(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_approximates_softmax_attention_and_error_shrinks_with_features():
  # Measured (sigma=0.5, T=S=16, 4 seeds): relative error ~0.03 at M=4096 and ~0.22 at M=64, while the
  # trivial uniform-average output is off by ~0.21 — so the bound below is far from vacuous.
  q, k, v = _qkv()
  exact = attention(q, k, v, implementation="reference")
  uniform = jnp.repeat(v.mean(axis=1, keepdims=True), 2, axis=2)
  run = jax.jit(performer_attention)
  errors = {M: [_rel(run(q, k, v, random_features(jax.random.key(seed), M, H)), exact) for seed in range(4)]
            for M in (64, 4096)}
  assert max(errors[4096]) < 0.08, errors
  assert np.mean(errors[4096]) < 0.3 * _rel(uniform, exact), errors
  assert np.mean(errors[64]) > 3 * np.mean(errors[4096]), errors  # error ~ 1/sqrt(M): expect ~8x, measured ~6.6x


def _quadratic_causal(q, k, v, projection, scale=None):
  """Independent oracle: the causal masked quadratic form in feature space, unstabilised, [B,N,T,S]."""
  G = q.shape[2] // k.shape[2]
  qf = positive_features(q, projection, scale=scale)  # [B,T,N,M]
  kf = jnp.repeat(positive_features(k, projection, scale=scale), G, axis=2)
  a = jnp.einsum("btnm,bsnm->bnts", qf, kf)
  a = jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, 0.0)
  num = jnp.einsum("bnts,bsnd->btnd", a, jnp.repeat(v, G, axis=2))
  return num / jnp.moveaxis(a.sum(-1), 1, 2)[..., None]


def _value_and_grads(fn, q, k, v):
  w = jnp.asarray(np.random.default_rng(7).normal(size=q.shape[:3] + v.shape[-1:]), jnp.float32)
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(w)


@pytest.mark.parametrize("chunk_size", [1, 5, 8, None])  # 5 does not divide T=19; None: the default (one chunk of 19)
def test_causal_chunked_equals_quadratic_form(chunk_size):
  q, k, v = _qkv(T=19, S=19, sigma=0.7, seed=1)
  projection = random_features(jax.random.key(1), 32, H)
  both = jax.jit(lambda q, k, v: (
      _value_and_grads(lambda q, k, v: performer_attention(q, k, v, projection, causal=True, chunk_size=chunk_size),
                       q, k, v),
      _value_and_grads(lambda q, k, v: _quadratic_causal(q, k, v, projection), q, k, v)))
  (out, grads), (want, want_grads) = both(q, k, v)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  for name, g, wg in zip("qkv", grads, want_grads):
    np.testing.assert_allclose(g, wg, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_causal_earlier_outputs_bit_identical():
  q, k, v = _qkv(T=20, S=20, seed=2)
  projection = random_features(jax.random.key(2), 32, H)
  run = jax.jit(lambda q, k, v: performer_attention(q, k, v, projection, causal=True, chunk_size=8))
  p = 11  # mid-chunk: positions 8..15 share a chunk, so 8..10 must not see 11..15
  rng = np.random.default_rng(3)
  q2, k2, v2 = q.copy(), k.copy(), v.copy()
  q2[:, p:] = rng.normal(size=q2[:, p:].shape)
  k2[:, p:] = 3.0 * rng.normal(size=k2[:, p:].shape)  # larger keys: they would move a shared stabiliser
  v2[:, p:] = rng.normal(size=v2[:, p:].shape)
  a, b = np.asarray(run(q, k, v)), np.asarray(run(q2, k2, v2))
  np.testing.assert_array_equal(a[:, :p], b[:, :p])
  assert not np.allclose(a[:, p:], b[:, p:])


def test_large_norms_do_not_overflow():
  q, k, v = _qkv(T=12, S=12, sigma=6.0, seed=4)  # raw exponents in the hundreds: exp would overflow unstabilised
  projection = random_features(jax.random.key(4), 64, H)
  outs = jax.jit(lambda q, k, v: [performer_attention(q, k, v, projection, causal=causal, chunk_size=5)
                                   for causal in (False, True)])(q, k, v)
  assert all(np.all(np.isfinite(out)) for out in outs)


def test_orthogonal_blocks():
  M = 40  # blocks of 16, 16 and a truncated 8
  w = np.asarray(random_features(jax.random.key(5), M, H))
  assert w.shape == (M, H) and w.dtype == np.float32
  unit = w / np.linalg.norm(w, axis=1, keepdims=True)
  for start in range(0, M, H):
    block = unit[start:start + H]
    np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-5)
  assert np.abs(unit[:H] @ unit[H:2 * H].T).max() > 0.1  # independent blocks are not orthogonal to each other
  # Norms are chi(H): E|w|² = H, not 1 (rows stay marginally N(0, I_H)).
  many = np.asarray(random_features(jax.random.key(6), 4096, H))
  assert abs(np.mean(np.sum(many ** 2, axis=1)) / H - 1) < 0.05
  iid = np.asarray(random_features(jax.random.key(5), H, H, orthogonal=False))
  iid = iid / np.linalg.norm(iid, axis=1, keepdims=True)
  assert np.abs(iid @ iid.T - np.eye(H)).max() > 0.1
  # Redrawing: same key, same projection; new key, new projection.
  np.testing.assert_array_equal(w, random_features(jax.random.key(5), M, H))
  assert not np.allclose(w, random_features(jax.random.key(50), M, H))


@pytest.mark.parametrize("orthogonal", [True, False])
def test_kernel_estimate_unbiased_over_redraws(orthogonal):
  # Measured: mean over 2000 redraws of M=64 features within ~0.1% of exp(q·k·scale); one draw's std ~0.58.
  rng = np.random.default_rng(3)
  q, k = (0.5 * rng.normal(size=(2, H))).astype(np.float32)
  exact = np.exp(q @ k / np.sqrt(H))

  def estimate(key):
    w = random_features(key, 64, H, orthogonal=orthogonal)
    return positive_features(q, w) @ positive_features(k, w)

  est = np.asarray(jax.jit(jax.vmap(estimate))(jax.random.split(jax.random.key(0), 2000)))
  assert np.all(est > 0)  # positive features: every estimate is positive
  stderr = est.std() / np.sqrt(len(est))
  assert abs(est.mean() - exact) < 4 * stderr and abs(est.mean() / exact - 1) < 0.05, (est.mean(), exact, stderr)


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_equals_repeated_kv_heads(causal):
  q, k, v = _qkv(T=10, S=10, N=6, K=2, seed=8)
  projection = random_features(jax.random.key(8), 32, H)
  run = jax.jit(lambda q, k, v: performer_attention(q, k, v, projection, causal=causal, chunk_size=4))
  got, want = run(q, k, v), run(q, np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_cross_attention_scale_and_dtype():
  q, k, v = _qkv(T=5, S=9, seed=9)
  projection = random_features(jax.random.key(9), 2048, H)
  exact = attention(q, k, v, scale=0.1, implementation="reference")
  assert _rel(jax.jit(performer_attention, static_argnames="scale")(q, k, v, projection, scale=0.1), exact) < 0.05
  out = jax.jit(performer_attention)(*(x.astype(jnp.bfloat16) for x in (q, k, v)), projection)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 5, 4, 8)


def test_errors():
  q, k, v = _qkv(T=6, S=6)
  w = random_features(jax.random.key(0), 8, H)
  with pytest.raises(ValueError, match="ranks"):
    performer_attention(q[0], k, v, w)
  with pytest.raises(ValueError, match="batch sizes"):
    performer_attention(q[:1], k, v, w)
  with pytest.raises(ValueError, match="must agree"):
    performer_attention(q, k, v[:, :5], w)
  with pytest.raises(ValueError, match="head dim"):
    performer_attention(q, k[..., :8], v, w)
  with pytest.raises(ValueError, match="multiple of kv heads"):
    performer_attention(q[:, :, :3], k, v, w)
  with pytest.raises(ValueError, match="projection must be"):
    performer_attention(q, k, v, w[:, :8])
  with pytest.raises(ValueError, match="T == S"):
    performer_attention(q[:, :4], k, v, w, causal=True)
  with pytest.raises(ValueError, match="chunk_size"):
    performer_attention(q, k, v, w, causal=True, chunk_size=0)
  with pytest.raises(ValueError, match="scale"):
    performer_attention(q, k, v, w, scale=-1.0)
  with pytest.raises(ValueError, match="eps"):
    performer_attention(q, k, v, w, eps=0.0)
  with pytest.raises(ValueError, match="num_features"):
    random_features(jax.random.key(0), 0, H)
  with pytest.raises(ValueError, match="head_dim"):
    random_features(jax.random.key(0), 8, 2.5)


def _quadratic(q, k, v, projection, kv_mask, causal):
  """The masked quadratic form in feature space (unstabilised), any mask; rows that see nothing give 0."""
  G = q.shape[2] // k.shape[2]
  qf = positive_features(q, projection)
  kf = jnp.repeat(positive_features(k, projection), G, axis=2)
  a = jnp.einsum("btnm,bsnm->bnts", qf, kf) * kv_mask[:, None, None, :]
  if causal:
    a = jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, 0.0)
  num = jnp.einsum("bnts,bsnd->btnd", a, jnp.repeat(v, G, axis=2))
  den = jnp.moveaxis(a.sum(-1), 1, 2)[..., None]
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


@pytest.mark.parametrize("causal", [False, True])
def test_kv_mask_leaves_keys_out(causal):
  # Row 0 is left-padded by 5 (its first causal rows see no key: 0, finite gradients); row 1 right-padded by 4.
  q, k, v = _qkv(T=13, S=13, sigma=0.7, seed=3)
  kv_mask = np.ones((2, 13), bool)
  kv_mask[0, :5] = False
  kv_mask[1, 9:] = False
  projection = random_features(jax.random.key(2), 32, H)
  fn = lambda q, k, v: performer_attention(q, k, v, projection, causal=causal, kv_mask=kv_mask, chunk_size=4)  # noqa: E731
  (out, grads), (want, want_grads) = jax.jit(lambda q, k, v: (
      _value_and_grads(fn, q, k, v),
      _value_and_grads(lambda q, k, v: _quadratic(q, k, v, projection, kv_mask, causal), q, k, v)))(q, k, v)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  for name, g, wg in zip("qkv", grads, want_grads):
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, wg, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")
  if causal:
    np.testing.assert_array_equal(out[0, :5], 0.0)
  # masked keys' values never matter
  v2 = v.copy()
  v2[~kv_mask] += 100.0
  np.testing.assert_array_equal(jax.jit(fn)(q, k, v2), jax.jit(fn)(q, k, v))
