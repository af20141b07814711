"""Linear attention (Katharopoulos et al. 2020) against the plain quadratic form A = phi(q) phi(k)ᵀ, out = A v / A 1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention.variants.linear import linear_attention


def _qkv(B=2, T=13, S=13, N=4, K=2, H=8, Hv=6, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, N, H)).astype(np.float32), rng.normal(size=(B, S, K, H)).astype(np.float32),
          rng.normal(size=(B, S, K, Hv)).astype(np.float32))


def _phi(xp, name):
  if name == "elu1":
    return lambda x: xp.where(x > 0, x + 1.0, xp.exp(xp.minimum(x, 0.0)))
  return lambda x: xp.maximum(x, 0.0)


def _quadratic(q, k, v, *, xp=np, feature_map="elu1", causal=False, segment_ids=None, eps=1e-6):
  """The direct O(T·S) form, written out: A_ij = phi(q_i)·phi(k_j) (masked), out_i = Σ_j A_ij v_j / (Σ_j A_ij + eps)."""
  if xp is np:
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  G = q.shape[2] // k.shape[2]
  k, v = xp.repeat(k, G, axis=2), xp.repeat(v, G, axis=2)  # query head n reads kv head n // G
  phi = _phi(xp, feature_map)
  A = xp.einsum("btnh,bsnh->bnts", phi(q), phi(k))
  T, S = q.shape[1], k.shape[1]
  visible = np.ones((1, 1, T, S), bool)
  if causal:
    visible = visible & np.tril(np.ones((T, S), bool))
  if segment_ids is not None:
    seg = np.asarray(segment_ids)
    visible = visible & (seg[:, None, :, None] == seg[:, None, None, :])
  A = xp.where(visible, A, 0.0)
  num = xp.einsum("bnts,bsnv->btnv", A, v)
  den = xp.einsum("bnts->btn", A)
  return num / (den[..., None] + eps)


@pytest.mark.parametrize("feature_map", ["elu1", "relu"])
@pytest.mark.parametrize("T,S,N,K", [(13, 13, 4, 2), (5, 9, 3, 1), (7, 7, 2, 2)])
def test_non_causal_matches_quadratic(feature_map, T, S, N, K):
  q, k, v = _qkv(T=T, S=S, N=N, K=K)
  got = linear_attention(q, k, v, feature_map=feature_map)
  assert got.shape == (2, T, N, v.shape[-1]) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _quadratic(q, k, v, feature_map=feature_map), rtol=1e-5, atol=1e-5)


def _weighted(fn, w):
  return lambda q, k, v: jnp.sum(fn(q, k, v) * w)


@pytest.mark.parametrize("T,chunk_size", [(13, None), (13, 1), (13, 4), (13, 5), (13, 13), (13, 100), (1, None),
                                          (1, 3)])
def test_causal_chunked_matches_masked_quadratic(T, chunk_size):
  q, k, v = _qkv(T=T, S=T)
  w = np.random.default_rng(1).normal(size=q.shape[:3] + v.shape[-1:]).astype(np.float32)
  lin = lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=chunk_size)
  quad = lambda q, k, v: _quadratic(q, k, v, xp=jnp, causal=True)
  got, want = jax.jit(lin)(q, k, v), _quadratic(q, k, v, causal=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  g_got = jax.jit(jax.grad(_weighted(lin, w), argnums=(0, 1, 2)))(q, k, v)
  g_want = jax.grad(_weighted(quad, w), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [4, 64])
def test_causal_earlier_outputs_bit_identical(chunk_size):
  q, k, v = _qkv(T=12, S=12)
  later = np.random.default_rng(5)
  q2, k2, v2 = (x.copy() for x in (q, k, v))
  for x in (q2, k2, v2):
    x[:, 6:] = later.normal(size=x[:, 6:].shape) * 3  # position 6 is mid-chunk for chunk_size 4
  fn = jax.jit(lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=chunk_size))
  a, b = np.asarray(fn(q, k, v)), np.asarray(fn(q2, k2, v2))
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert not np.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_equals_repeated_kv_heads(causal):
  q, k, v = _qkv(N=6, K=2)
  got = linear_attention(q, k, v, causal=causal, chunk_size=4)
  want = linear_attention(q, np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2), causal=causal, chunk_size=4)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


SEGMENTS = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2],
                     [3, 3, 1, 1, 1, 1, 3, 3, 3, 0, 0, 0, 0]])  # row 1: id 3 appears in two runs


@pytest.mark.parametrize("causal", [False, True])
def test_segments_match_masked_quadratic(causal):
  q, k, v = _qkv(T=13, S=13)
  want = _quadratic(q, k, v, causal=causal, segment_ids=SEGMENTS)
  got = linear_attention(q, k, v, causal=causal, segment_ids=SEGMENTS, chunk_size=4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  fn = jax.jit(lambda q, k, v, s: linear_attention(q, k, v, causal=causal, segment_ids=s, num_segments=4,
                                                   chunk_size=5))
  np.testing.assert_allclose(fn(q, k, v, SEGMENTS), want, rtol=1e-5, atol=1e-5)


def test_segments_equal_separate_sequences_and_out_of_range_ids_give_zeros():
  q, k, v = _qkv(B=1, T=10, S=10)
  seg = np.array([[0, 0, 0, 0, 1, 1, 1, 1, -1, -1]])  # -1: padding, sees nothing
  for causal in (False, True):
    got = np.asarray(linear_attention(q, k, v, causal=causal, segment_ids=seg, chunk_size=3))
    for lo, hi in ((0, 4), (4, 8)):
      alone = linear_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], causal=causal)
      np.testing.assert_allclose(got[:, lo:hi], alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:, 8:], 0.0)


def test_low_precision_inputs_return_input_dtype():
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv())
  got = linear_attention(q, k, v, causal=True, chunk_size=4)
  assert got.dtype == jnp.bfloat16
  want = _quadratic(*(np.asarray(x.astype(jnp.float32)) for x in (q, k, v)), causal=True)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shapes,kwargs,match", [
    (((2, 4, 2, 8), (2, 4, 2, 8), (2, 4, 2)), {}, "ranks"),
    (((2, 4, 2, 8), (1, 4, 2, 8), (1, 4, 2, 8)), {}, "batch sizes"),
    (((2, 4, 2, 8), (2, 4, 2, 8), (2, 5, 2, 8)), {}, "must agree"),
    (((2, 4, 2, 8), (2, 4, 2, 4), (2, 4, 2, 8)), {}, "head dim"),
    (((2, 4, 3, 8), (2, 4, 2, 8), (2, 4, 2, 8)), {}, "multiple of kv heads"),
    (((2, 4, 2, 8), (2, 6, 2, 8), (2, 6, 2, 8)), {"causal": True}, "T == S"),
    (((2, 4, 2, 8), (2, 6, 2, 8), (2, 6, 2, 8)), {"segment_ids": np.zeros((2, 4), np.int32)}, "T == S"),
    (((2, 4, 2, 8),) * 3, {"segment_ids": np.zeros((2, 5), np.int32)}, r"\[B,T\]"),
    (((2, 4, 2, 8),) * 3, {"segment_ids": np.zeros((2, 4), np.float32)}, "integers"),
    (((2, 4, 2, 8),) * 3, {"segment_ids": np.zeros((2, 4), np.int32), "num_segments": 0}, "num_segments"),
    (((2, 4, 2, 8),) * 3, {"feature_map": "softmax"}, "unknown feature_map"),
    (((2, 4, 2, 8),) * 3, {"causal": True, "chunk_size": 0}, "chunk_size"),
    (((2, 4, 2, 8),) * 3, {"causal": True, "chunk_size": 2.0}, "chunk_size"),
    (((2, 4, 2, 8),) * 3, {"eps": -1.0}, "eps"),
])
def test_errors(shapes, kwargs, match):
  q, k, v = (np.zeros(s, np.float32) for s in shapes)
  with pytest.raises(ValueError, match=match):
    linear_attention(q, k, v, **kwargs)


def test_traced_segment_ids_need_num_segments():
  q, k, v = _qkv(T=4, S=4)
  fn = jax.jit(lambda s: linear_attention(q, k, v, segment_ids=s))
  with pytest.raises(ValueError, match="num_segments"):
    fn(np.zeros((2, 4), np.int32))
