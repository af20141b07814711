"""The reference backend against a plain numpy loop, one query row at a time."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention import attention, available_backends


def numpy_attention(q, k, v, *, causal=False, window=None, q_seg=None, kv_seg=None, q_lengths=None,
                    kv_lengths=None, bias=None, softcap=None, q_offset=0):
  """Independent oracle: loops over batch, head and query row."""
  B, T, N, D = q.shape
  S, K = k.shape[1], k.shape[2]
  out = np.zeros((B, T, N, v.shape[-1]))
  lse = np.full((B, N, T), -np.inf)
  for b in range(B):
    for n in range(N):
      kv = n // (N // K)
      for i in range(T):
        pos = i + (q_offset[b] if np.ndim(q_offset) else q_offset)
        s = q[b, i, n].astype(np.float64) @ k[b, :, kv].T.astype(np.float64) / np.sqrt(D)
        if softcap:
          s = softcap * np.tanh(s / softcap)
        if bias is not None:
          s = s + np.broadcast_to(bias, (B, N, T, S))[b, n, i]
        ok = np.ones(S, bool)
        j = np.arange(S)
        if causal:
          ok &= j <= pos
        if window is not None:
          ok &= (j >= pos - window[0]) & (j <= pos + window[1])
        if q_seg is not None:
          ok &= kv_seg[b] == q_seg[b, i]
        if q_lengths is not None and i >= q_lengths[b]:
          ok[:] = False
        if kv_lengths is not None:
          ok &= j < kv_lengths[b]
        if not ok.any():
          continue
        w = np.exp(s[ok] - s[ok].max())
        lse[b, n, i] = np.log(w.sum()) + s[ok].max()
        out[b, i, n] = (w / w.sum()) @ v[b, ok, kv]
  return out, lse


def _qkv(B=2, T=6, S=6, N=4, K=2, D=8, Dv=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, N, D)).astype(np.float32), rng.normal(size=(B, S, K, D)).astype(np.float32),
          rng.normal(size=(B, S, K, Dv)).astype(np.float32))


CASES = {
    "plain": {},
    "causal": dict(causal=True),
    "window": dict(window=(2, 1)),
    "causal_window": dict(causal=True, window=(1, 0)),
    "segments": dict(segment_ids=np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])),
    "lengths": dict(q_lengths=np.array([4, 6]), kv_lengths=np.array([3, 6])),
    "bias": dict(bias=np.random.default_rng(1).normal(size=(1, 4, 6, 6)).astype(np.float32)),
    "softcap": dict(softcap=2.0),
    "q_offset": dict(causal=True, q_offset=np.array([0, 2])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_numpy_loop(case):
  q, k, v = _qkv()
  kw = CASES[case]
  out, lse = attention(q, k, v, implementation="reference", return_lse=True, **kw)
  np_kw = {key: val for key, val in kw.items() if key != "segment_ids"}
  if "segment_ids" in kw:
    np_kw.update(q_seg=kw["segment_ids"], kv_seg=kw["segment_ids"])
  want_out, want_lse = numpy_attention(q, k, v, **np_kw)
  np.testing.assert_allclose(out, want_out, atol=1e-5)
  np.testing.assert_allclose(lse, want_lse, atol=1e-5)


def test_cross_attention_gqa_and_value_dim():
  q, k, v = _qkv(T=3, S=7, N=6, K=3, Dv=5)
  seg = (np.array([[1, 1, 2], [1, 1, 1]]), np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]]))
  out = attention(q, k, v, segment_ids=seg, implementation="reference")
  want, _ = numpy_attention(q, k, v, q_seg=seg[0], kv_seg=seg[1])
  assert out.shape == (2, 3, 6, 5)
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_fully_masked_rows_are_zero_with_finite_gradients():
  q, k, v = _qkv()
  seg_q = np.array([[1, 1, 3, 3, 3, 3], [1, 1, 1, 1, 1, 1]])  # segment 3 has no keys
  seg_kv = np.array([[1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1]])

  def f(q, k, v):
    return attention(q, k, v, segment_ids=(seg_q, seg_kv), implementation="reference").sum()

  out = attention(q, k, v, segment_ids=(seg_q, seg_kv), implementation="reference")
  assert np.all(np.asarray(out)[0, 2:] == 0)
  grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert np.all(np.asarray(grads[0])[0, 2:] == 0)


def test_forward_mode_autodiff():
  q, k, v = _qkv()
  _, tangent = jax.jvp(lambda q: attention(q, k, v, causal=True, implementation="reference"), (q,), (q,))
  eps = 1e-3
  fd = (attention(q + eps * q, k, v, causal=True) - attention(q - eps * q, k, v, causal=True)) / (2 * eps)
  np.testing.assert_allclose(tangent, fd, atol=2e-3)


def test_dropout_keeps_expectation_and_needs_rng():
  q, k, v = _qkv(B=1, T=2, S=4, N=1, K=1)
  with pytest.raises(ValueError, match="dropout_rng"):
    attention(q, k, v, dropout_rate=0.5)
  outs = jax.vmap(lambda key: attention(q, k, v, dropout_rate=0.5, dropout_rng=key))(
      jax.random.split(jax.random.key(0), 4000))
  np.testing.assert_allclose(outs.mean(0), attention(q, k, v), atol=0.08)
  assert not np.allclose(outs[0], outs[1])


@pytest.mark.parametrize("bad, match", [
    (dict(k=np.zeros((2, 6, 3, 8), np.float32), v=np.zeros((2, 6, 3, 8), np.float32)), "multiple of kv heads"),
    (dict(k=np.zeros((2, 6, 2, 4), np.float32)), "head dim"),
    (dict(segment_ids=np.zeros((2, 5), np.int32)), "segment ids"),
    (dict(kv_lengths=np.zeros((3,), np.int32)), "kv_lengths"),
    (dict(bias=np.zeros((2, 3, 6, 6), np.float32)), "bias"),
    (dict(window=3), "window"),
    (dict(implementation="flashy"), "unknown attention implementation"),
])
def test_bad_input_gets_a_clear_error(bad, match):
  q, k, v = _qkv()
  kw = dict(k=k, v=v)
  kw.update(bad)
  with pytest.raises(ValueError, match=match):
    attention(q, kw.pop("k"), kw.pop("v"), **kw)


def test_reference_is_registered():
  assert "reference" in available_backends()


def test_bfloat16_inputs_return_bfloat16():
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv())
  out = attention(q, k, v, causal=True)
  assert out.dtype == jnp.bfloat16
  want = attention(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True)
  np.testing.assert_allclose(out.astype(np.float32), want, atol=2e-2)


def test_padded_keys_get_exactly_zero_weight():
  """With v = identity the output rows are the attention weights themselves."""
  q, k, _ = _qkv(B=2, T=5, S=5, N=2, K=1)
  v = np.broadcast_to(np.eye(5, dtype=np.float32)[None, :, None, :], (2, 5, 1, 5))
  seg = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  w = np.asarray(attention(q, k, v, segment_ids=(np.ones((2, 5), np.int32), seg)))  # [B, T, N, S]
  assert np.all(w[0, :, :, 3:] == 0.0)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
  assert np.all(w[1] > 0)
  w_len = np.asarray(attention(q, k, v, kv_lengths=np.array([3, 5])))
  np.testing.assert_array_equal(w_len, w)
