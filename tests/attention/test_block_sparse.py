"""Block-sparse (BigBird) attention against a dense masked softmax over the expanded token mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention import attention
from jaxformer.attention.variants.block_sparse import _plan, bigbird_layout, block_sparse_attention


def _qkv(B=2, T=29, N=4, K=2, H=8, Hv=6, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, N, H)).astype(np.float32), rng.normal(size=(B, T, K, H)).astype(np.float32),
          rng.normal(size=(B, T, K, Hv)).astype(np.float32))


def _segments(B, T, seed=0):
  return np.sort(np.random.default_rng(seed).integers(0, 3, size=(B, T)), axis=1).astype(np.int32)


def _token_mask(layout, bs, T, causal, segment_ids):
  """[B|1, T, T]: the layout expanded to tokens (np.kron) AND the causal / segment masks."""
  mask = np.kron(layout, np.ones((bs, bs), bool)).astype(bool)[:T, :T][None]
  if causal:
    mask = mask & np.tril(np.ones((T, T), bool))
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return mask


def _dense(q, k, v, mask, dout):
  """float64 numpy oracle: masked softmax over exactly the visible keys (rows that see nothing give 0), and the
  gradients of sum(out * dout) wrt q, k, v written out:
  dV = Pᵀ dO, dS = P ∘ (dO Vᵀ − rowsum) · scale, dQ = dS K, dK = dSᵀ Q."""
  q, k, v, dout = (np.asarray(x, np.float64) for x in (q, k, v, dout))
  B, T, N, H = q.shape
  G, scale = N // k.shape[2], H ** -0.5
  kr, vr = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)  # query head n reads kv head n // G
  visible = mask[:, None]  # [B|1, 1, T, S]
  logits = np.where(visible, np.einsum("btnh,bsnh->bnts", q, kr) * scale, -np.inf)
  row_max = np.max(logits, axis=-1, keepdims=True)
  p = np.where(visible, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
  denom = np.sum(p, axis=-1, keepdims=True)
  p = p / np.where(denom > 0, denom, 1.0)
  out = np.einsum("bnts,bsnv->btnv", p, vr)
  dp = np.einsum("btnv,bsnv->bnts", dout, vr)
  ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True)) * scale
  dq = np.einsum("bnts,bsnh->btnh", ds, kr)
  fold = lambda x: x.reshape(x.shape[:2] + (k.shape[2], G, x.shape[-1])).sum(axis=3)  # sum a kv head's G queries
  dk = fold(np.einsum("bnts,btnh->bsnh", ds, q))
  dv = fold(np.einsum("bnts,btnv->bsnv", p, dout))
  return out, (dq, dk, dv)


def _random_layout(nb, seed=0):
  layout = np.random.default_rng(seed).random((nb, nb)) < 0.3
  layout[2] = False  # a query block that sees nothing
  layout[4] = True  # a dense block in the middle (exact kernel, non-causal)
  return layout


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["bigbird", "random"])
def test_matches_dense_masked_softmax(causal, kind):
  T, bs = 29, 3  # nb = 10, T not a multiple of bs
  nb = -(-T // bs)
  layout = (bigbird_layout(nb, num_global=1, num_window=3, num_random=1, causal=causal, seed=3) if kind == "bigbird"
            else _random_layout(nb))
  q, k, v = _qkv(T=T)
  seg = _segments(2, T)
  mask = _token_mask(layout, bs, T, causal, seg)
  w = np.random.default_rng(1).normal(size=(2, T, 4, 6)).astype(np.float32)

  def loss(q, k, v, s):
    out = block_sparse_attention(q, k, v, layout, block_size=bs, causal=causal, segment_ids=s)
    return jnp.sum(out * w), out

  g_got, got = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v, seg)  # values and grads, one compile
  want, g_want = _dense(q, k, v, mask, w)
  assert got.shape == (2, T, 4, 6) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if kind == "random":
    assert np.all(np.asarray(got)[:, 2 * bs:3 * bs] == 0)  # the empty block row
  for name, a, b in zip("qkv", g_got, g_want):
    assert np.all(np.isfinite(a)), name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("T,bs,causal", [(13, 4, True), (5, 16, False)])
def test_all_true_layout_is_exact_attention(T, bs, causal):
  q, k, v = _qkv(T=T, N=4, K=1)
  seg = _segments(2, T, seed=2)
  nb = -(-T // bs)
  both = jax.jit(lambda q, k, v, s: (
      block_sparse_attention(q, k, v, np.ones((nb, nb), bool), block_size=bs, causal=causal, segment_ids=s),
      attention(q, k, v, causal=causal, segment_ids=s, implementation="reference")))
  got, want = both(q, k, v, seg)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_plan_sends_global_rows_to_the_exact_kernel():
  layout = bigbird_layout(10, num_global=2, num_window=3, num_random=2, seed=0)
  rows, idx, valid, runs = _plan(layout, causal=False)
  assert runs == [(0, 2)] and list(rows) == list(range(2, 10))
  assert idx.shape[1] == valid.sum(axis=1).max() == layout[2:].sum(axis=1).max()
  for n, i in enumerate(rows):  # padded with a repeated index, each visible block listed exactly once
    assert sorted(idx[n][valid[n]]) == list(np.flatnonzero(layout[i]))
  _, _, _, runs = _plan(bigbird_layout(10, num_global=2, causal=True), causal=True)
  assert runs == []  # causal global rows see only blocks 0 .. i: cheap, through the gather path


@pytest.mark.parametrize("nb,g,w,r", [(12, 2, 3, 2), (16, 1, 5, 3), (6, 1, 3, 4), (1, 1, 3, 2), (9, 0, 1, 2)])
def test_bigbird_layout_properties(nb, g, w, r):
  half = w // 2
  layout = bigbird_layout(nb, num_global=g, num_window=w, num_random=r, seed=7)
  assert layout.shape == (nb, nb) and layout.dtype == bool
  assert layout[:g].all() and layout[:, :g].all()
  i, j = np.indices((nb, nb))
  window = np.abs(i - j) <= half
  assert layout[window].all()
  for row in range(g, nb):
    base = window[row] | (np.arange(nb) < g)
    extra = layout[row] & ~base  # the random blocks: distinct by construction, in range, not already visible
    assert extra.sum() == min(r, (~base).sum())
    if row - half >= g and row + half < nb and nb - g - w >= r:
      assert layout[row].sum() == g + w + r
  np.testing.assert_array_equal(layout, bigbird_layout(nb, num_global=g, num_window=w, num_random=r, seed=7))

  causal = bigbird_layout(nb, num_global=g, num_window=w, num_random=r, causal=True, seed=7)
  assert not np.triu(causal, 1).any()
  assert causal[np.tril(window) | (np.tril(np.ones((nb, nb), bool)) & (j < g))].all()
  for row in range(g, nb):
    earlier = ~(np.tril(window)[row] | (np.arange(nb) < g)) & (np.arange(nb) < row)
    assert (causal[row] & earlier).sum() == min(r, earlier.sum())
    if row - half >= g and row - half - g >= r:
      assert causal[row].sum() == g + half + 1 + r


def test_bigbird_layout_seed():
  a = bigbird_layout(16, num_random=3, seed=0)
  assert not np.array_equal(a, bigbird_layout(16, num_random=3, seed=1))
  assert not np.array_equal(bigbird_layout(16, causal=True, seed=0), bigbird_layout(16, causal=True, seed=1))
  np.testing.assert_array_equal(a, bigbird_layout(16, num_random=3, seed=0))


@pytest.mark.parametrize("kind", ["bigbird", "ones"])
def test_causal_and_sparsity_of_the_gradient(kind):
  T, bs = 13, 2  # nb = 7
  nb = -(-T // bs)
  layout = bigbird_layout(nb, num_random=1, seed=1) if kind == "bigbird" else np.ones((nb, nb), bool)
  q, k, v = _qkv(B=1, T=T, N=2, K=1, H=4, Hv=3)
  fn = lambda q, k, v: block_sparse_attention(q, k, v, layout, block_size=bs, causal=True)
  jac = jax.jit(jax.jacrev(fn, argnums=(0, 1, 2)))(q, k, v)  # each [1,T,N,Hv, 1,T,heads,dim]
  allowed = _token_mask(layout, bs, T, True, None)[0]
  for name, d in zip("qkv", jac):
    assert np.all(np.isfinite(d)), name
    touched = np.abs(np.asarray(d)).sum(axis=(0, 2, 3, 4, 6, 7)) > 0  # [T out, T in]
    if name == "q":
      assert not (touched & ~np.eye(T, dtype=bool)).any()  # rows are independent
    else:
      assert not np.triu(touched, 1).any(), name  # out[:, i] never depends on k/v at j > i
      assert not (touched & ~allowed).any(), name


def test_bfloat16_and_empty_rows_are_finite():
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv(T=10, N=2, K=2))
  layout = np.zeros((3, 3), bool)
  layout[1, 1] = True
  out = jax.jit(lambda q, k, v: block_sparse_attention(q, k, v, layout, block_size=4))(q, k, v)
  assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(out, np.float32)))
  assert np.all(np.asarray(out, np.float32)[:, :4] == 0) and np.all(np.asarray(out, np.float32)[:, 8:] == 0)


def test_bad_arguments():
  q, k, v = _qkv(T=12)
  with pytest.raises(ValueError, match="layout must have shape"):
    block_sparse_attention(q, k, v, np.ones((3, 3), bool), block_size=3)
  with pytest.raises(ValueError, match="boolean"):
    block_sparse_attention(q, k, v, np.ones((4, 4), np.int32), block_size=3)
  with pytest.raises(ValueError, match="block_size"):
    block_sparse_attention(q, k, v, np.ones((4, 4), bool), block_size=0)
  with pytest.raises(ValueError, match="T == S"):
    block_sparse_attention(q[:, :6], k, v, np.ones((2, 2), bool), block_size=3)
  with pytest.raises(ValueError, match="multiple of kv heads"):
    block_sparse_attention(q[:, :, :3], k, v, np.ones((4, 4), bool), block_size=3)
  with pytest.raises(ValueError, match="segment_ids"):
    block_sparse_attention(q, k, v, np.ones((4, 4), bool), block_size=3, segment_ids=np.zeros((2, 5), np.int32))
  with pytest.raises(ValueError, match="static"):
    jax.jit(lambda lay: block_sparse_attention(q, k, v, lay, block_size=3))(np.ones((4, 4), bool))
  with pytest.raises(ValueError, match="odd"):
    bigbird_layout(8, num_window=2)
  for bad in ({"num_window": 0}, {"num_global": -1}, {"num_random": -1}, {"num_window": 3.0}):
    with pytest.raises(ValueError):
      bigbird_layout(8, **bad)
  with pytest.raises(ValueError, match="num_blocks"):
    bigbird_layout(-1)
