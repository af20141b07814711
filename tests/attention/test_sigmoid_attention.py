"""Sigmoid attention (Ramapuram et al. 2024) vs the dense out_i = Σ_j m_ij σ(q_i·k_j·scale + bias_ij + b) v_j."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention.variants.sigmoid import sigmoid_attention


def _qkv(B=2, T=7, S=11, N=4, K=2, H=8, Hv=5, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, N, H)).astype(np.float32), rng.normal(size=(B, S, K, H)).astype(np.float32),
          rng.normal(size=(B, S, K, Hv)).astype(np.float32))


def _mask(B, T, S, *, causal=False, window=None, q_seg=None, kv_seg=None, q_offset=0):
  """m[b, i, j] written out with loops: the MaskSpec rules (all given fields AND-ed)."""
  offsets = np.broadcast_to(np.asarray(q_offset), (B,))
  m = np.ones((B, T, S), bool)
  for b in range(B):
    for i in range(T):
      pos = i + int(offsets[b])
      for j in range(S):
        if causal and j > pos:
          m[b, i, j] = False
        if window is not None and window[0] is not None and j < pos - window[0]:
          m[b, i, j] = False
        if window is not None and window[1] is not None and j > pos + window[1]:
          m[b, i, j] = False
        if q_seg is not None and q_seg[b][i] != kv_seg[b][j]:
          m[b, i, j] = False
  return m


def _dense(q, k, v, m, *, xp=np, bias=None, scale=None, sigmoid_bias=None):
  """The O(T·S) formula: W = m ∘ σ(q kᵀ·scale + bias + b), out = W v (float64 with xp=np)."""
  if xp is np:
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  G = q.shape[2] // k.shape[2]
  k, v = xp.repeat(k, G, axis=2), xp.repeat(v, G, axis=2)  # query head n reads kv head n // G
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  b = -math.log(k.shape[1]) if sigmoid_bias is None else sigmoid_bias
  logits = xp.einsum("btnh,bsnh->bnts", q, k) * scale + b
  if bias is not None:
    logits = logits + (np.asarray(bias, np.float64) if xp is np else bias)
  w = xp.where(m[:, None], 1.0 / (1.0 + xp.exp(-logits)), 0.0)
  return xp.einsum("bnts,bsnv->btnv", w, v)


# (name, T, S, N, K, kwargs); segments given as lists so the test builds both the arg and the loop mask.
_SEG_Q = [[1, 1, 1, 2, 2, 3, 0], [5, 5, 5, 5, 6, 6, 6]]  # [2, 7]; id 3 and 0 are absent from keys: rows see nothing
_SEG_KV = [[1, 1, 2, 2, 2, 2, 1, 1, 2, 1, 2], [6, 6, 5, 5, 5, 5, 6, 6, 6, 5, 5]]  # [2, 11]
_SEG_SELF = [[1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 2, 2, 2, 2, 3, 3, 3, 3]]  # [2, 9]
_CASES = [
    ("one_block_sigmoid_bias_zero", 7, 11, 4, 2, {"sigmoid_bias": 0.0}),  # default block_size 256 > S
    ("mqa_scale_sigmoid_bias", 5, 9, 3, 1, {"sigmoid_bias": -1.5, "scale": 0.7, "block_size": 2}),
    ("causal", 9, 9, 4, 2, {"causal": True, "block_size": 4}),
    ("segments_self_mha_blocks_divide", 9, 9, 2, 2, {"seg": (_SEG_SELF, _SEG_SELF), "pass_single": True,
                                                     "block_size": 3}),
    ("segments_pair_empty_rows", 7, 11, 4, 2, {"seg": (_SEG_Q, _SEG_KV), "block_size": 4}),
    ("causal_segments_bias", 9, 9, 4, 2, {"causal": True, "seg": (_SEG_SELF, _SEG_SELF), "bias": (1, 4, 9, 9),
                                          "block_size": 5}),
    ("window_left_causal", 9, 9, 4, 2, {"window": (3, None), "causal": True, "block_size": 4}),
    ("window_right_bias_no_key_axis", 7, 11, 4, 2, {"window": (None, 0), "bias": (4, 7, 1), "block_size": 4}),
    ("bias_full", 7, 11, 4, 2, {"bias": (2, 4, 7, 11), "block_size": 4}),
    ("q_offset_window_cross", 3, 11, 4, 2, {"q_offset": 5, "window": (2, 1), "block_size": 3}),
    ("q_offset_causal_block1", 8, 8, 4, 2, {"q_offset": 3, "causal": True, "block_size": 1}),
    ("cross_all_mqa", 7, 11, 4, 1, {"seg": (_SEG_Q, _SEG_KV), "window": (6, 1), "q_offset": np.array([2, 4]),
                                    "bias": (4, 1, 11), "block_size": 4}),
]


def _build(T, S, N, K, kw, seed=0):
  """-> (q, k, v, kwargs for sigmoid_attention, loop mask, bias array or None)."""
  q, k, v = _qkv(T=T, S=S, N=N, K=K, seed=seed)
  B = q.shape[0]
  args = {name: kw[name] for name in ("causal", "window", "q_offset", "scale", "sigmoid_bias", "block_size")
          if name in kw}
  q_seg = kv_seg = None
  if "seg" in kw:
    q_seg, kv_seg = kw["seg"]
    args["segment_ids"] = (np.asarray(q_seg, np.int32) if kw.get("pass_single")
                           else (np.asarray(q_seg, np.int32), np.asarray(kv_seg, np.int32)))
  m = _mask(B, T, S, causal=kw.get("causal", False), window=kw.get("window"), q_seg=q_seg, kv_seg=kv_seg,
            q_offset=kw.get("q_offset", 0))
  bias = None
  if "bias" in kw:
    bias = np.random.default_rng(seed + 7).normal(size=kw["bias"]).astype(np.float32)
    args["bias"] = bias
  return q, k, v, args, m, bias


@pytest.mark.parametrize("name,T,S,N,K,kw", _CASES, ids=[c[0] for c in _CASES])
def test_matches_dense_float64(name, T, S, N, K, kw):
  q, k, v, args, m, bias = _build(T, S, N, K, kw)
  got = jax.jit(lambda q, k, v: sigmoid_attention(q, k, v, **args))(q, k, v)
  assert got.shape == (q.shape[0], T, N, v.shape[-1]) and got.dtype == jnp.float32
  want = _dense(q, k, v, m, bias=bias, scale=kw.get("scale"), sigmoid_bias=kw.get("sigmoid_bias"))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  empty = ~m.any(axis=-1)  # [B, T]: rows that see no key give exactly 0
  if name in ("segments_pair_empty_rows", "cross_all_mqa"):
    assert empty.any() and not empty.all()
  np.testing.assert_array_equal(np.asarray(got)[empty], 0.0)


def test_default_sigmoid_bias_is_minus_log_s():
  q, k, v = _qkv()
  explicit = jax.jit(lambda q, k, v, b: sigmoid_attention(q, k, v, block_size=4, sigmoid_bias=b))  # b may be traced
  a = sigmoid_attention(q, k, v, block_size=4)
  np.testing.assert_allclose(a, explicit(q, k, v, -math.log(k.shape[1])), rtol=1e-6, atol=1e-7)
  assert not np.allclose(a, explicit(q, k, v, 0.0), atol=1e-3)


def test_output_in_q_dtype():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
  out = sigmoid_attention(q, k, v, block_size=4)
  assert out.dtype == jnp.bfloat16
  want = _dense(*(np.asarray(x, np.float32) for x in (q, k, v)), np.ones((2, 7, 11), bool))
  np.testing.assert_allclose(np.asarray(out, np.float32), want, rtol=2e-2, atol=2e-2)


_GRAD_CASES = [c for c in _CASES if c[0] in ("causal_segments_bias", "cross_all_mqa", "mqa_scale_sigmoid_bias")]


@pytest.mark.parametrize("name,T,S,N,K,kw", _GRAD_CASES, ids=[c[0] for c in _GRAD_CASES])
def test_grads_match_dense(name, T, S, N, K, kw):
  q, k, v, args, m, bias = _build(T, S, N, K, kw, seed=3)
  w = np.random.default_rng(11).normal(size=q.shape[:3] + v.shape[-1:]).astype(np.float32)
  args.pop("bias", None)
  scale, sb = kw.get("scale"), kw.get("sigmoid_bias")

  def ours(q, k, v, bias):
    return jnp.sum(sigmoid_attention(q, k, v, bias=bias, **args) * w)

  def dense(q, k, v, bias):
    return jnp.sum(_dense(q, k, v, m, xp=jnp, bias=bias, scale=scale, sigmoid_bias=sb) * w)

  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  got = jax.jit(jax.grad(ours, argnums=argnums))(q, k, v, bias)
  want = jax.jit(jax.grad(dense, argnums=argnums))(q, k, v, bias)
  for name, g, d in zip("qkvb", got, want):
    assert g.shape == d.shape, name
    np.testing.assert_allclose(g, d, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_causality_no_gradient_from_future_keys():
  q, k, v = _qkv(B=1, T=9, S=9, N=2, K=1, Hv=3)
  fn = lambda k, v: sigmoid_attention(q, k, v, causal=True, block_size=4)  # noqa: E731
  out, vjp = jax.vjp(fn, k, v)
  rows = np.eye(9, dtype=np.float32)[:, None, :, None, None]  # [i, 1, T, 1, 1]: cotangent only on out[:, i]
  cot = rows * np.random.default_rng(2).normal(size=out.shape).astype(np.float32)
  dk, dv = (np.asarray(g) for g in jax.jit(jax.vmap(vjp))(cot))  # [i, B, S, K, ·]: grad of out[:, i]
  for i in range(9):
    assert np.all(dk[i, :, i + 1:] == 0.0) and np.all(dv[i, :, i + 1:] == 0.0), i
    assert np.any(dk[i, :, :i + 1] != 0.0) and np.any(dv[i, :, :i + 1] != 0.0), i


def test_empty_keys_or_queries():
  q, k, v = _qkv(T=0, S=5)
  assert sigmoid_attention(q, k, v).shape == (2, 0, 4, 5)
  q, k, v = _qkv(T=3, S=0)
  np.testing.assert_array_equal(sigmoid_attention(q, k, v), np.zeros((2, 3, 4, 5), np.float32))


@pytest.mark.parametrize("make,match", [
    (lambda q, k, v: sigmoid_attention(q[0], k, v), "ranks"),
    (lambda q, k, v: sigmoid_attention(q, k[..., None], v), "ranks"),
    (lambda q, k, v: sigmoid_attention(q[:, :, :3], k, v), "multiple"),
    (lambda q, k, v: sigmoid_attention(q, k, v, block_size=0), "block_size"),
    (lambda q, k, v: sigmoid_attention(q, k, v, block_size=2.0), "block_size"),
    (lambda q, k, v: sigmoid_attention(q, k, v, block_size=True), "block_size"),
    (lambda q, k, v: sigmoid_attention(q, k[:, :, :, :4], v), "head dim"),
    (lambda q, k, v: sigmoid_attention(q, k, v[:, :5]), "agree"),
    (lambda q, k, v: sigmoid_attention(q, k, v, bias=np.zeros((4, 7, 10))), "bias"),
    (lambda q, k, v: sigmoid_attention(q, k, v, segment_ids=np.zeros((2, 7), np.int32)), "segment ids"),
    (lambda q, k, v: sigmoid_attention(q, k, v, segment_ids=(np.zeros((2, 7)), np.zeros((2, 11)))), "integers"),
    (lambda q, k, v: sigmoid_attention(q, k, v, window=3), "window"),
])
def test_bad_input_raises(make, match):
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=match):
    make(q, k, v)
