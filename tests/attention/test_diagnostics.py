"""Attention diagnostics (entropy, max logit/prob, sink mass, lse) against numpy float64 and the reference backend."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention import attention
from jaxformer.attention.diagnostics import STAT_KEYS, attention_probs, attention_stats, summarize


def numpy_logits(q, k, *, causal=False, window=None, segment_ids=None, q_lengths=None, kv_lengths=None, bias=None,
                 softcap=None, q_offset=0, scale=None):
  """Independent oracle: float64 logits [B,N,T,S], −inf where invisible, one query row at a time."""
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  scale = H ** -0.5 if scale is None else scale
  if segment_ids is not None:
    q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
  out = np.full((B, N, T, S), -np.inf)
  j = np.arange(S)
  for b in range(B):
    for n in range(N):
      for i in range(T):
        pos = i + (q_offset[b] if np.ndim(q_offset) else q_offset)
        s = k[b, :, n // (N // K)].astype(np.float64) @ q[b, i, n].astype(np.float64) * scale
        if softcap:
          s = softcap * np.tanh(s / softcap)
        if bias is not None:
          s = s + np.broadcast_to(bias, (B, N, T, S))[b, n, i]
        ok = np.ones(S, bool)
        if causal:
          ok &= j <= pos
        if window is not None:
          if window[0] is not None:
            ok &= j >= pos - window[0]
          if window[1] is not None:
            ok &= j <= pos + window[1]
        if segment_ids is not None:
          ok &= kv_seg[b] == q_seg[b, i]
        if q_lengths is not None and i >= q_lengths[b]:
          ok[:] = False
        if kv_lengths is not None:
          ok &= j < kv_lengths[b]
        out[b, n, i, ok] = s[ok]
  return out


def numpy_softmax(logits):
  """Row softmax in float64; rows with no finite logit are all zero."""
  m = logits.max(-1, keepdims=True)
  p = np.exp(logits - np.where(np.isfinite(m), m, 0.0))
  denom = p.sum(-1, keepdims=True)
  return p / np.where(denom > 0, denom, 1.0)


def stats_from_probs(probs, sink_tokens):
  """entropy, max_prob and sink_mass from a full probability matrix [B,N,T,S] (float64)."""
  probs = np.asarray(probs, np.float64)
  plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
  return dict(entropy=-plogp.sum(-1), max_prob=probs.max(-1), sink_mass=probs[..., :sink_tokens].sum(-1))


def stats_from_logits(logits):
  """max_logit and lse from float64 logits [B,N,T,S] (−inf rows stay −inf)."""
  m = logits.max(-1)
  m_safe = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    lse = np.log(np.exp(logits - m_safe[..., None]).sum(-1)) + m_safe
  return dict(max_logit=m, lse=lse)


def _qk(B=2, T=7, S=7, N=4, K=2, H=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(B, T, N, H)).astype(np.float32), rng.normal(size=(B, S, K, H)).astype(np.float32)


_rng = np.random.default_rng(1)
SAMPLING_KW = dict(causal=True, window=(5, 0), q_offset=1,
                   segment_ids=(np.array([[1] * 6 + [2] * 7, [1] * 13]), np.array([[1] * 7 + [2] * 7, [1] * 14])),
                   bias=_rng.normal(size=(1, 4, 13, 14)).astype(np.float32))
# name -> (shape overrides for _qk, keyword arguments shared by attention_stats / attention_probs / the oracle)
CASES = {
    "causal": ({}, dict(causal=True)),
    "mqa_cross": (dict(K=1, S=11), {}),
    "per_batch_q_offset": (dict(T=5, S=11), dict(causal=True, q_offset=np.array([6, 2]))),
    "segments_causal": ({}, dict(causal=True, segment_ids=np.array([[1, 1, 2, 2, 2, 3, 0], [1, 1, 1, 1, 1, 1, 1]]))),
    # q segment 3 (and 4) exist in no key: those rows see nothing.
    "segments_masked_rows": (dict(S=9), dict(segment_ids=(np.array([[1, 1, 2, 2, 3, 3, 0], [1, 4, 1, 1, 1, 1, 1]]),
                                                          np.array([[1, 1, 2, 2, 2, 0, 0, 1, 1], [1] * 9])))),
    "window": ({}, dict(window=(2, 1))),
    "causal_window_open_left": (dict(S=9), dict(causal=True, window=(None, 1), q_offset=2)),
    "bias": ({}, dict(bias=2 * _rng.normal(size=(1, 4, 7, 7)).astype(np.float32))),
    "bias_broadcast": (dict(S=9), dict(bias=_rng.normal(size=(2, 1, 1, 9)).astype(np.float32), causal=True,
                                       q_offset=2)),
    "lengths_window_open_right": ({}, dict(q_lengths=np.array([5, 7]), kv_lengths=np.array([3, 7]), window=(1, None))),
    "softcap_scale_bias_2d": (dict(S=9), dict(softcap=1.5, scale=0.7, causal=True, q_offset=2,
                                              bias=_rng.normal(size=(7, 9)).astype(np.float32))),
    "sampling_mix": (dict(T=13, S=14), SAMPLING_KW),
}


def _check_stats(stats, logits, sink_tokens, atol=1e-5):
  """Every stat against numpy float64 (from the logits and from an independent numpy softmax)."""
  want = {**stats_from_logits(logits), **stats_from_probs(numpy_softmax(logits), sink_tokens)}
  assert set(STAT_KEYS) <= set(stats)
  for name in STAT_KEYS:
    got = np.asarray(stats[name])
    assert got.dtype == np.float32 and got.shape == logits.shape[:3], name
    assert not np.any(np.isnan(got)), name
    np.testing.assert_allclose(got, want[name], atol=atol, rtol=1e-5, err_msg=name)  # −inf must match exactly


# Each case runs with one (block_size, sink_tokens): mostly a block smaller than S that does not divide it, sometimes
# one larger than S; sink_tokens 0, 1, 4 or > S. Tests reuse these settings (one compilation per case keeps it fast).
CASE_BLOCKING = {
    "causal": (3, 1), "mqa_cross": (4, 4), "per_batch_q_offset": (2, 20), "segments_causal": (512, 1),
    "segments_masked_rows": (5, 4), "window": (4, 0), "causal_window_open_left": (3, 4), "bias": (2, 1),
    "bias_broadcast": (512, 4), "lengths_window_open_right": (5, 1), "softcap_scale_bias_2d": (4, 4),
    "sampling_mix": (4, 3),
}


def _stats(case, **kw):
  """attention_stats for a case with its (block_size, sink_tokens): the same compilation in every test."""
  shape, case_kw = CASES[case]
  block_size, sink_tokens = CASE_BLOCKING[case]
  return attention_stats(*_qk(**shape), block_size=block_size, sink_tokens=sink_tokens, **case_kw, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_stats_match_numpy(case):
  shape, kw = CASES[case]
  block_size, sink_tokens = CASE_BLOCKING[case]
  q, k = _qk(**shape)
  logits = numpy_logits(q, k, **kw)
  stats = _stats(case)
  _check_stats(stats, logits, sink_tokens)
  np.testing.assert_array_equal(np.asarray(stats["rows"]), np.arange(q.shape[1]))
  assert stats["rows"].dtype == jnp.int32
  # The dense map: against the oracle, and every stat recomputed from it.
  probs = attention_probs(q, k, **kw)
  assert probs.shape == logits.shape and probs.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(probs), numpy_softmax(logits), atol=1e-6)
  for name, want in stats_from_probs(probs, sink_tokens).items():
    np.testing.assert_allclose(np.asarray(stats[name]), want, atol=1e-5, err_msg=name)


def test_masked_rows_are_zero_not_nan():
  shape, kw = CASES["segments_masked_rows"]
  q, k = _qk(**shape)
  stats = _stats("segments_masked_rows")
  dead = np.zeros((2, 7), bool)
  dead[0, 4:6] = dead[1, 1] = True  # q segments 3 and 4
  for b, i in zip(*np.nonzero(dead)):
    assert np.all(np.asarray(stats["lse"])[b, :, i] == -np.inf)
    assert np.all(np.asarray(stats["max_logit"])[b, :, i] == -np.inf)
    for name in ("entropy", "max_prob", "sink_mass"):
      assert np.all(np.asarray(stats[name])[b, :, i] == 0.0), name
  assert np.all(np.isfinite(np.asarray(stats["lse"])[~np.broadcast_to(dead[:, None], (2, 4, 7))]))
  probs = np.asarray(attention_probs(q, k, **kw))
  assert np.all(probs[0, :, 4:6] == 0) and np.all(probs[1, :, 1] == 0)


def test_uniform_and_one_hot_limits():
  """Zero logits: entropy log(#visible), max_prob 1/#visible; a dominant key: entropy ~0, max_prob ~1."""
  q, k = _qk()
  block_size, sink_tokens = CASE_BLOCKING["causal"]
  stats = attention_stats(np.zeros_like(q), k, causal=True, block_size=block_size, sink_tokens=sink_tokens)
  visible = np.broadcast_to(np.arange(1, 8), (2, 4, 7))
  np.testing.assert_allclose(np.asarray(stats["entropy"]), np.log(visible), atol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["max_prob"]), 1 / visible, atol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["sink_mass"]), np.minimum(sink_tokens, visible) / visible, atol=1e-6)
  bias = np.zeros((1, 4, 7, 7), np.float32)
  bias[..., 0] = 100.0  # every row puts all its weight on key 0, the sink
  block_size, sink_tokens = CASE_BLOCKING["bias"]
  stats = attention_stats(q, k, bias=bias, block_size=block_size, sink_tokens=sink_tokens)
  np.testing.assert_allclose(np.asarray(stats["entropy"]), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stats["max_prob"]), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(stats["sink_mass"]), 1.0, atol=1e-6)


def test_sink_tokens_zero():
  assert CASE_BLOCKING["window"][1] == 0
  assert np.all(np.asarray(_stats("window")["sink_mass"]) == 0.0)


@pytest.mark.parametrize("rows,want_rows", [
    (1, [12]),
    (4, [0, 4, 8, 12]),
    (50, list(range(13))),
    (np.array([12, 0, 5, 5]), [12, 0, 5, 5]),
    ([7, 1, 1, 3], [7, 1, 1, 3]),
])
def test_row_sampling_matches_full(rows, want_rows):
  """Causal + window + q_offset + segment ids + bias: sampled rows keep their positions, ids and bias rows."""
  full = _stats("sampling_mix")
  got = _stats("sampling_mix", rows=rows)
  np.testing.assert_array_equal(np.asarray(got["rows"]), want_rows)
  assert got["rows"].dtype == jnp.int32
  for name in STAT_KEYS:
    assert got[name].shape == (2, 4, len(want_rows)), name
    np.testing.assert_allclose(np.asarray(got[name]), np.asarray(full[name])[:, :, want_rows], atol=1e-6, rtol=1e-6,
                               err_msg=name)


@pytest.mark.parametrize("case", ["mqa_cross", "per_batch_q_offset", "segments_masked_rows", "bias_broadcast",
                                  "lengths_window_open_right", "softcap_scale_bias_2d"])
def test_probs_agree_with_reference_attention(case):
  """probs @ v is the reference backend's output; probs itself is its output for v = identity; lse agrees."""
  shape, kw = CASES[case]
  q, k = _qk(**shape)
  B, T, N, _ = q.shape
  S, K = k.shape[1], k.shape[2]
  v = np.random.default_rng(3).normal(size=(B, S, K, 5)).astype(np.float32)
  eye = np.broadcast_to(np.eye(S, dtype=np.float32)[None, :, None], (B, S, K, S))
  # One reference call (jitted: one compilation) with values [v | identity]: out = [probs @ v | probs].
  reference = jax.jit(functools.partial(attention, implementation="reference", return_lse=True, **kw))
  out, lse = reference(q, k, np.concatenate([v, eye], axis=-1))
  out, maps = np.asarray(out[..., :5]), np.asarray(out[..., 5:])  # [B,T,N,5], [B,T,N,S]
  probs = np.asarray(attention_probs(q, k, **kw), np.float64)  # [B,N,T,S]
  v_heads = np.repeat(v, N // K, axis=2).astype(np.float64)  # [B,S,N,5]
  np.testing.assert_allclose(np.einsum("bnts,bsnd->btnd", probs, v_heads), out, atol=1e-5)
  np.testing.assert_allclose(probs, maps.transpose(0, 2, 1, 3), atol=1e-6)
  np.testing.assert_allclose(np.asarray(_stats(case)["lse"]), np.asarray(lse), atol=1e-5)


def test_long_sequence_jit_memory_is_blockwise():
  B, T, N, H, block = 1, 2048, 2, 16, 256
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
  fn = jax.jit(functools.partial(attention_stats, causal=True, block_size=block, sink_tokens=4))
  compiled = fn.lower(q, k).compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    dense, tile = B * N * T * T * 4, B * N * T * block * 4
    assert memory.temp_size_in_bytes <= 3 * tile < dense / 2, (memory.temp_size_in_bytes, tile, dense)
  stats = compiled(q, k)
  visible = np.arange(1, T + 1)
  entropy, max_prob, sink = (np.asarray(stats[name]) for name in ("entropy", "max_prob", "sink_mass"))
  assert np.all(np.isfinite(np.asarray(stats["lse"])))
  assert np.all((entropy >= 0) & (entropy <= np.log(visible) + 1e-4))
  assert np.all((max_prob >= 1 / visible - 1e-6) & (max_prob <= 1 + 1e-6))
  assert np.all((sink >= 0) & (sink <= 1 + 1e-5))


def test_jit_with_traced_offset_and_no_gradient():
  shape, kw = CASES["per_batch_q_offset"]
  q, k = _qk(**shape)
  block_size, sink_tokens = CASE_BLOCKING["per_batch_q_offset"]
  fn = jax.jit(functools.partial(attention_stats, causal=True, block_size=block_size, sink_tokens=sink_tokens))
  got = fn(q, k, q_offset=jnp.asarray(kw["q_offset"]))  # traced q_offset
  want = _stats("per_batch_q_offset")
  for name in STAT_KEYS:
    np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), atol=1e-6, err_msg=name)
  grad = jax.grad(lambda q: attention_stats(q, k, **kw)["entropy"].sum())(jnp.asarray(q))
  assert np.all(np.asarray(grad) == 0)
  grad = jax.grad(lambda q: attention_probs(q, k).sum())(jnp.asarray(q))
  assert np.all(np.asarray(grad) == 0)


def test_summarize_ignores_invisible_rows():
  shape, kw = CASES["segments_masked_rows"]
  q, k = _qk(**shape)
  stats = _stats("segments_masked_rows")
  summary = summarize(stats)
  assert set(summary) == set(STAT_KEYS) | {"num_rows"}
  live = np.isfinite(np.asarray(stats["lse"]))  # [B,N,T]: 3 dead rows per head
  np.testing.assert_array_equal(np.asarray(summary["num_rows"]), np.full(4, 14 - 3))
  for name in STAT_KEYS:
    x = np.asarray(stats[name], np.float64)
    want = np.array([x[:, n][live[:, n]].mean() for n in range(4)])
    assert summary[name].shape == (4,) and np.all(np.isfinite(np.asarray(summary[name]))), name
    np.testing.assert_allclose(np.asarray(summary[name]), want, rtol=1e-5, atol=1e-6, err_msg=name)
  # Padding rows (q segment 0 at row 6 of batch 0) are dropped too, also after row sampling and under jit.
  q_seg = kw["segment_ids"][0]
  by_segments = jax.jit(lambda s: summarize(s, segment_ids=q_seg))(stats)
  by_valid = summarize(stats, valid=q_seg != 0)
  live &= (q_seg != 0)[:, None, :]
  np.testing.assert_array_equal(np.asarray(by_segments["num_rows"]), np.full(4, 14 - 4))
  for name in STAT_KEYS:
    x = np.asarray(stats[name], np.float64)
    want = np.array([x[:, n][live[:, n]].mean() for n in range(4)])
    np.testing.assert_allclose(np.asarray(by_segments[name]), want, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.asarray(by_valid[name]), want, rtol=1e-5, atol=1e-6, err_msg=name)
  sampled = _stats("segments_masked_rows", rows=np.array([4, 5, 6]))
  by_segments = summarize(sampled, segment_ids=q_seg)
  np.testing.assert_array_equal(np.asarray(by_segments["num_rows"]), np.full(4, 3))  # batch 1 only: batch 0 rows dead
  nothing = summarize(sampled, valid=np.zeros((2, 7), bool))
  for name, x in nothing.items():
    assert np.all(np.asarray(x) == 0), name


@pytest.mark.parametrize("call,match", [
    (lambda q, k: attention_stats(q[0], k), "ranks 3 and 4"),
    (lambda q, k: attention_probs(q, k[..., :4]), "head dim"),
    (lambda q, k: attention_stats(q[:, :, :3], k), "multiple of kv heads"),
    (lambda q, k: attention_stats(q[:1], k), "batch sizes differ"),
    (lambda q, k: attention_stats(q, k, rows=0), "rows=0"),
    (lambda q, k: attention_stats(q, k, rows=np.array([0, 7])), r"\[0, T=7\)"),
    (lambda q, k: attention_stats(q, k, rows=np.array([-1])), r"\[0, T=7\)"),
    (lambda q, k: attention_stats(q, k, rows=np.array([[0]])), "1-d integer"),
    (lambda q, k: attention_stats(q, k, rows=np.array([0.5])), "1-d integer"),
    (lambda q, k: attention_stats(q, k, rows=[]), "1-d integer"),
    (lambda q, k: attention_stats(q, k, sink_tokens=-1), "sink_tokens"),
    (lambda q, k: attention_stats(q, k, block_size=0), "block_size"),
    (lambda q, k: attention_stats(q, k, window=3), "window"),
    (lambda q, k: attention_stats(q, k, segment_ids=np.ones((2, 6))), "segment ids"),
    (lambda q, k: attention_stats(q, k, q_lengths=np.ones(3)), "q_lengths"),
    (lambda q, k: attention_probs(q, k, bias=np.ones((3, 7))), "does not broadcast"),
    (lambda q, k: jax.jit(lambda r: attention_stats(q, k, rows=r))(jnp.arange(2)), "static"),
    (lambda q, k: summarize({"lse": np.zeros((2, 4, 7)), "rows": np.arange(7)}, valid=np.ones(7, bool)), r"\[B, T\]"),
    (lambda q, k: summarize({"entropy": q}), "attention_stats returns"),
])
def test_bad_input_raises(call, match):
  q, k = _qk()
  with pytest.raises(ValueError, match=match):
    call(q, k)
