"""Reformer LSH attention (Kitaev et al. 2020): exact softmax attention when one or two chunks hold the sequence
(any number of rounds: the duplicate-count correction), a float64 numpy brute force of the chunked multi-round form,
causality of the masking, mask_self, rows without keys, and argument errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention import attention
from jaxformer.attention.variants.lsh import _attend, _combine_rounds, lsh_attention, lsh_buckets, lsh_rotations

H = 8


def _qkv(B=2, T=12, N=4, K=2, Dv=6, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, N, H)).astype(np.float32), rng.normal(size=(B, T, K, H)).astype(np.float32),
          rng.normal(size=(B, T, K, Dv)).astype(np.float32))


def _segments(T):
  return np.array([[0] * (T // 3) + [1] * (T - T // 3), [2] * (T // 2) + [0] * (T - T // 2)], np.int32)


def _cotangent(q, v):
  return jnp.asarray(np.random.default_rng(7).normal(size=q.shape[:3] + v.shape[-1:]), jnp.float32)


def _value_and_grads(fn, q, k, v, w=None):
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(_cotangent(q, v) if w is None else w)


def _assert_close(got, want, atol=1e-5):
  (out, grads), (want_out, want_grads) = got, want
  np.testing.assert_allclose(out, want_out, atol=atol)
  for name, g, wg in zip("qkv", grads, want_grads):
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(g, wg, atol=atol, err_msg=f"d{name}")


_REFERENCE = {}


def _exact(q, k, v, causal, seg):
  """Exact softmax attention's value and gradients (jitted once per causal setting)."""
  if causal not in _REFERENCE:
    _REFERENCE[causal] = jax.jit(lambda q, k, v, seg: _value_and_grads(
        lambda q, k, v: attention(q, k, v, causal=causal, segment_ids=seg, implementation="reference"), q, k, v))
  return _REFERENCE[causal](q, k, v, seg)


# (n_hashes, n_buckets, chunk_size, causal) with T = 12: one chunk (chunk_size >= T), or two chunks (6), which with
# the wrap-around also see everything. Several rounds then find every pair several times: only the log N_ij
# correction keeps the result exact.
@pytest.mark.parametrize("n_hashes,n_buckets,chunk_size,causal", [
    (1, 2, 12, False), (1, 2, 64, True), (3, 2, 12, True), (2, 8, 6, False)])
def test_whole_sequence_in_the_window_equals_exact_attention(n_hashes, n_buckets, chunk_size, causal):
  q, k, v = _qkv()
  seg = _segments(12)
  rotations = lsh_rotations(jax.random.key(n_hashes), n_hashes, H, n_buckets)
  got = jax.jit(lambda q, k, v: _value_and_grads(
      lambda q, k, v: lsh_attention(q, k, v, rotations, causal=causal, segment_ids=seg, chunk_size=chunk_size,
                                    mask_self=False), q, k, v))(q, k, v)
  _assert_close(got, _exact(q, k, v, causal, seg))


def _brute_force(q, k, v, buckets, c, causal, seg, mask_self):
  """float64 oracle from the buckets: pair (i, j) is in round r's window iff j's chunk is i's chunk or the one
  before (wrapping; a lone chunk once) in the stable sort by (bucket, position); returns the rounds combined by
  their log-sum-exps with the log N_ij correction, and the union-softmax form (which must agree), [B,T,N,Hv]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, T, N, _ = q.shape
  K, R = k.shape[2], buckets.shape[-1]
  G, C = N // K, -(-T // c)
  member = np.zeros((B, K, R, T, T), bool)
  for b in range(B):
    for kh in range(K):
      for r in range(R):
        chunk = np.empty(T, int)
        chunk[np.argsort(buckets[b, :, kh, r], kind="stable")] = np.arange(T) // c
        prev = (chunk[:, None] - 1) % C if C > 1 else chunk[:, None]
        member[b, kh, r] = (chunk[None, :] == chunk[:, None]) | (chunk[None, :] == prev)
  allowed = np.ones((B, T, T), bool)
  if causal:
    allowed &= np.tril(np.ones((T, T), bool))
  if seg is not None:
    allowed &= seg[:, :, None] == seg[:, None, :]
  count = member.sum(axis=2)  # [B,K,T,T]
  s = np.einsum("btkgh,bskh->bkgts", q.reshape(B, T, K, G, H), k) * H ** -0.5
  if mask_self:
    s = s - 1e5 * np.eye(T)

  def softmax(logits, visible):  # -> out [B,K,G,T,Hv], lse [B,K,G,T]
    logits = np.where(visible, logits, -np.inf)
    top = logits.max(-1, keepdims=True)
    p = np.exp(logits - top)
    return np.einsum("bkgts,bskv->bkgtv", p / p.sum(-1, keepdims=True), v), top[..., 0] + np.log(p.sum(-1))

  rounds = [softmax(s - np.log(np.maximum(count, 1))[:, :, None], (member[:, :, r] & allowed[:, None])[:, :, None])
            for r in range(R)]
  lse = np.stack([lse for _, lse in rounds])
  weights = np.exp(lse - lse.max(0))
  combined = sum(w[..., None] * out for w, (out, _) in zip(weights / weights.sum(0), rounds))
  union, _ = softmax(s, ((count > 0) & allowed[:, None])[:, :, None])
  to_btnv = lambda x: np.moveaxis(x, 3, 1).reshape(B, T, N, -1)  # noqa: E731
  return to_btnv(combined), to_btnv(union), count, allowed


_exact_with_bias = jax.jit(lambda q, k, v, bias: _value_and_grads(
    lambda q, k, v: attention(q, k, v, bias=bias, implementation="reference"), q, k, v))
T_CHUNKED, C_CHUNKED = 13, 3  # 5 chunks, the last one padded with 2 rows
ROTATIONS = np.asarray(jax.random.normal(jax.random.key(3), (3, H, 2)))  # 3 rounds, 4 buckets


@functools.cache
def _chunked(causal):
  """jit (q, k, v, segment_ids, w) -> (out, vjp(w)) for the multi-chunk, multi-round case (one compile per causal)."""
  fn = lambda q, k, v, seg: lsh_attention(q, k, v, ROTATIONS, causal=causal, segment_ids=seg,  # noqa: E731
                                          chunk_size=C_CHUNKED)
  return jax.jit(lambda q, k, v, seg, w: _value_and_grads(lambda q, k, v: fn(q, k, v, seg), q, k, v, w))


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_multi_round_matches_numpy_brute_force(causal):
  T, c = T_CHUNKED, C_CHUNKED
  q, k, v = _qkv(T=T, seed=1)
  seg = _segments(T)
  buckets = np.asarray(lsh_buckets(k, ROTATIONS))  # [B,T,K,R]
  xr = np.einsum("btkh,rhm->btkrm", k.astype(np.float64), ROTATIONS.astype(np.float64))
  np.testing.assert_array_equal(buckets, np.argmax(np.concatenate([xr, -xr], -1), -1))
  got = _chunked(causal)(q, k, v, seg, _cotangent(q, v))
  combined, union, count, allowed = _brute_force(q, k, v, buckets, c, causal, seg, mask_self=True)
  np.testing.assert_allclose(combined, union, atol=1e-12)  # the oracle's own identity
  np.testing.assert_allclose(got[0], combined, atol=2e-5)
  # Not vacuous: some allowed pairs are outside every window, and some are found in several rounds.
  allowed = np.broadcast_to(allowed[:, None], count.shape)
  assert (count[allowed] == 0).any() and (count[allowed] > 1).any()
  # Gradients (buckets fixed): exact attention over the union of the windows, with the self penalty, as a bias.
  bias = np.where((count > 0) & allowed, 0.0, -1e9) - 1e5 * np.eye(T)  # [B,K,T,S]
  _assert_close(got, _exact_with_bias(q, k, v, jnp.asarray(np.repeat(bias, 2, axis=1), jnp.float32)))


def test_causal_masking_no_gradient_from_later_positions():
  # Chunk windows live in the sorted order, so later tokens can move the chunk boundaries seen by an earlier query
  # (its *support* may change when later keys change); the masking is causal, though: out[:, i] never depends on
  # q, k or v at positions j > i (k_j only enters through its integer bucket), so those gradients are exactly 0.
  T = T_CHUNKED
  q, k, v = _qkv(T=T, seed=2)
  seg = np.zeros((2, T), np.int32)
  run, w = _chunked(True), _cotangent(q, v)
  grads = [run(q, k, v, seg, jnp.where((jnp.arange(T) == i)[None, :, None, None], w, 0.0))[1] for i in range(T)]
  later = np.arange(T)[None, :] > np.arange(T)[:, None]  # [row, position]
  for n, name in enumerate("qkv"):
    g = np.stack([np.abs(np.asarray(row[n])).sum(axis=(0, 2, 3)) for row in grads])  # [row, position]
    assert np.all(g[later] == 0), name
    assert (g[~later] > 0).mean() > 0.3 if name != "q" else (np.diag(g) > 0).mean() > 0.5, name  # not vacuous
  # Later values do not change any bucket, so earlier outputs are bit-identical when they change.
  v2 = v.copy()
  v2[:, 7:] = np.random.default_rng(6).normal(size=v2[:, 7:].shape)
  out, out2 = np.asarray(run(q, k, v, seg, w)[0]), np.asarray(run(q, k, v2, seg, w)[0])
  np.testing.assert_array_equal(out[:, :7], out2[:, :7])
  assert not np.array_equal(out[:, 7:], out2[:, 7:])


def test_mask_self():
  # The brute-force test checks mask_self=True (values and gradients) against exact attention with the -1e5 self
  # penalty; here its effect, per row i, batch b and kv head: out is linear in v, so d(w·out_i)/dv_j is the weight
  # of j (times w_i). A row whose window holds other visible keys gives its own value ~0 weight; a row that sees
  # only itself (causal row 0, or an unlucky window) returns its own value.
  T = T_CHUNKED
  q, k, v = _qkv(T=T, seed=3)
  seg = np.zeros((2, T), np.int32)
  run, w = _chunked(True), _cotangent(q, v)
  out = np.asarray(run(q, k, v, seg, w)[0]).reshape(2, T, 2, 2, -1)  # [B,T,K,G,Hv]
  alone = 0
  for i in range(T):
    dv = np.abs(np.asarray(run(q, k, v, seg, jnp.where((jnp.arange(T) == i)[None, :, None, None], w, 0.0))[1][2]))
    for b in range(2):
      for kh in range(2):
        if dv[b, :i, kh].max(initial=0.0) > 1e-3:  # other visible keys
          assert dv[b, i, kh].max() < 1e-6, (i, b, kh)
        else:
          alone += 1
          np.testing.assert_allclose(out[b, i, kh], np.broadcast_to(v[b, i, kh], (2, 6)), atol=1e-6)
  assert 4 <= alone < T  # row 0 in each (b, kh), and most rows do have other keys


def test_rows_without_keys_give_zeros_and_finite_gradients():
  # A real row always sees itself, so only padded rows reach this path inside lsh_attention: test the helpers.
  rng = np.random.default_rng(8)
  logits = jnp.asarray(rng.normal(size=(2, 3, 4, 5)), jnp.float32)  # [2, G=3, c=4, W=5]
  values = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
  visible = jnp.asarray(rng.random((2, 1, 4, 5)) < 0.5).at[:, :, 1].set(False)  # row 1 sees nothing

  def loss(logits, values):
    out, lse = _attend(logits, visible, values)
    both = _combine_rounds(jnp.stack([out, out]), jnp.stack([lse, jnp.full_like(lse, -jnp.inf)]), axis=0)
    return jnp.sum(out) + jnp.sum(both), (out, lse, both)

  grads, (out, lse, both) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(logits, values)
  assert np.all(np.asarray(out)[:, :, 1] == 0) and np.all(np.isneginf(np.asarray(lse)[:, :, 1]))
  assert np.all(np.asarray(both)[:, :, 1] == 0)
  np.testing.assert_allclose(both, out, atol=1e-6)  # a round with lse = -inf gets weight 0
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
  assert np.all(np.asarray(grads[0])[:, :, 1] == 0)
  # Padded rows (T = 5 is not a multiple of 3) and bfloat16 in/out; empty sequences.
  q, k, v = _qkv(T=5, seed=4)
  rotations = lsh_rotations(jax.random.key(6), 2, H, 4)
  out = jax.jit(lambda q, k, v: lsh_attention(q, k, v, rotations, chunk_size=3))(jnp.asarray(q, jnp.bfloat16), k, v)
  assert out.shape == (2, 5, 4, 6) and out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))
  assert lsh_attention(q[:, :0], k[:, :0], v[:, :0], rotations).shape == (2, 0, 4, 6)


@pytest.mark.parametrize("call,match", [
    (lambda q, k, v, r: lsh_rotations(jax.random.key(0), 2, H, 5), "n_buckets must be a positive even int"),
    (lambda q, k, v, r: lsh_rotations(jax.random.key(0), 0, H, 4), "n_hashes must be a positive int"),
    (lambda q, k, v, r: lsh_attention(q, k[:, :10], v[:, :10], r), "needs T == S"),
    (lambda q, k, v, r: lsh_attention(q, k, v, r[:, :4]), "rotations must be .* with H=8"),
    (lambda q, k, v, r: lsh_attention(q, k, v, r[0]), "rotations must be"),
    (lambda q, k, v, r: lsh_attention(q, k, v, r, chunk_size=0), "chunk_size must be a positive int"),
    (lambda q, k, v, r: lsh_attention(q, k, v, r, chunk_size=2.5), "chunk_size must be a positive int"),
    (lambda q, k, v, r: lsh_attention(q, k, v, r, segment_ids=np.zeros((2, 11), np.int32)), "segment_ids must"),
    (lambda q, k, v, r: lsh_attention(q, k, v, r, segment_ids=np.zeros((2, 12))), "must be integers"),
    (lambda q, k, v, r: lsh_attention(q[:, :, :3], k, v, r), "multiple of kv heads"),
])
def test_bad_arguments_raise(call, match):
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=match):
    call(q, k, v, lsh_rotations(jax.random.key(0), 2, H, 4))
