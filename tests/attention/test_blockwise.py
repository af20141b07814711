"""The blockwise (FlashAttention-2 style) backend against the reference backend: values, lse and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxformer.attention.blockwise as blockwise
from jaxformer.attention import attention, available_backends
from jaxformer.attention.masks import MaskSpec
from jaxformer.attention.reference import reference_attention
from tests.attention._compare import assert_matches


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
  """Blocks of 16 so that T, S in {33, 64} run the multi-block, padded and skipping paths."""
  monkeypatch.setattr(blockwise, "BLOCK_Q", 16)
  monkeypatch.setattr(blockwise, "BLOCK_K", 16)


def _qkv(B=2, T=33, S=33, N=4, K=2, D=8, Dv=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, N, D)).astype(np.float32), rng.normal(size=(B, S, K, D)).astype(np.float32),
          rng.normal(size=(B, S, K, Dv)).astype(np.float32))


def _run(impl, q, k, v, bias, kw):
  """out, lse and the gradients of a random-weighted sum of out wrt q, k, v (and bias)."""
  w = jnp.asarray(np.random.default_rng(7).normal(size=q.shape[:3] + v.shape[-1:]), q.dtype)

  fn = lambda q, k, v, bias: attention(q, k, v, bias=bias, implementation=impl, return_lse=True, **kw)
  (out, lse), vjp = jax.vjp(fn, q, k, v, bias)
  grads = vjp((w, jnp.zeros_like(lse)))
  return out, lse, grads if bias is not None else grads[:3]


def _check(q, k, v, bias=None, atol=1e-5, grad_atol=1e-4, **kw):
  """Both backends in one jitted program (one compile per case keeps the file fast)."""
  both = jax.jit(lambda q, k, v, bias: (_run("blockwise", q, k, v, bias, kw), _run("reference", q, k, v, bias, kw)))
  got, want = both(q, k, v, bias)
  assert_matches(got, want, atol=atol, grad_atol=grad_atol, names="qkvb")
  out, lse, grads = got
  return out, lse, grads


_rng = np.random.default_rng(1)
CASES = {
    "plain": {},
    "causal": dict(causal=True),
    "window": dict(window=(3, 2)),
    "window_left_unbounded": dict(window=(None, 2)),
    "window_right_unbounded": dict(window=(4, None)),
    "causal_window": dict(causal=True, window=(5, 0)),
    "segments": dict(segment_ids=np.repeat(np.array([[1, 2, 2, 3], [1, 1, 1, 1]]), [9, 8, 8, 8], axis=1)),
    "segments_causal_with_padding": dict(causal=True, segment_ids=np.repeat(
        np.array([[1, 1, 2, 0], [1, 2, 3, 3]]), [9, 8, 8, 8], axis=1)),
    "lengths": dict(q_lengths=np.array([20, 33]), kv_lengths=np.array([17, 30])),
    "bias_full": dict(bias=_rng.normal(size=(2, 4, 33, 33)).astype(np.float32)),
    "bias_broadcast": dict(bias=_rng.normal(size=(2, 1, 1, 33)).astype(np.float32)),
    "bias_per_head_rows": dict(bias=_rng.normal(size=(1, 4, 33, 1)).astype(np.float32)),
    "softcap_scale": dict(softcap=2.0, scale=0.5),
    "softcap_bias_causal": dict(softcap=1.5, causal=True, bias=_rng.normal(size=(1, 4, 33, 33)).astype(np.float32)),
    "q_offset_scalar": dict(causal=True, q_offset=5),
    "q_offset_per_batch": dict(causal=True, window=(6, None), q_offset=np.array([0, 20])),
    "q_offset_negative": dict(causal=True, q_offset=np.array([-20, 3])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference(case):
  q, k, v = _qkv()
  kw = dict(CASES[case])
  _check(q, k, v, bias=kw.pop("bias", None), **kw)


@pytest.mark.parametrize("T, S", [(1, 1), (1, 64), (7, 33), (64, 7), (33, 64), (64, 64)])
def test_shapes_cross_attention(T, S):
  """T != S with a decode-style offset (the queries are the last T positions of S)."""
  q, k, v = _qkv(T=T, S=S)
  _check(q, k, v, causal=True, q_offset=max(S - T, 0))
  _check(q, k, v, window=(4, 3))


@pytest.mark.parametrize("N, K, D, Dv", [(4, 2, 8, 8), (4, 1, 8, 8), (3, 3, 8, 8), (4, 2, 8, 5), (2, 1, 4, 12)])
def test_gqa_mqa_and_value_dim(N, K, D, Dv):
  q, k, v = _qkv(T=33, S=40, N=N, K=K, D=D, Dv=Dv)
  out, _, _ = _check(q, k, v, causal=True, q_offset=7, bias=np.ones((1, N, 1, 40), np.float32))
  assert out.shape == (2, 33, N, Dv)


def test_query_segment_without_keys_is_zero_with_finite_gradients():
  q, k, v = _qkv(T=33, S=40)
  seg_q = np.repeat(np.array([[1, 3, 3], [1, 1, 2]]), [10, 16, 7], axis=1)  # segment 3 has no keys
  seg_kv = np.repeat(np.array([[1, 2, 2], [1, 2, 2]]), [13, 14, 13], axis=1)
  out, lse, grads = _check(q, k, v, segment_ids=(seg_q, seg_kv))
  assert np.all(np.asarray(out)[0, 10:] == 0)
  assert np.all(np.asarray(lse)[0, :, 10:] == -np.inf)
  assert np.all(np.asarray(grads[0])[0, 10:] == 0)
  # Everything masked (no key at all for anyone).
  out, lse, grads = _check(q, k, v, kv_lengths=np.array([0, 0]))
  assert np.all(np.asarray(out) == 0) and np.all(np.asarray(lse) == -np.inf)
  assert all(np.all(np.asarray(g) == 0) for g in grads)


def test_lse_gradient():
  q, k, v = _qkv()
  w = np.random.default_rng(3).normal(size=(2, 4, 33)).astype(np.float32)

  def grads(impl):
    def loss(q, k, v):
      out, lse = attention(q, k, v, causal=True, implementation=impl, return_lse=True)
      return jnp.sum(lse * w) + jnp.sum(out)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

  for g, want in zip(grads("blockwise"), grads("reference")):
    np.testing.assert_allclose(g, want, atol=1e-4)


def test_bfloat16():
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv())
  _check(q, k, v, causal=True, atol=3e-2, grad_atol=1e-1)


def test_jit_vmap_and_traced_offset():
  q, k, v = _qkv()

  @jax.jit
  def both(q, k, v, offset):
    kw = dict(causal=True, window=(8, None), q_offset=offset)
    f = lambda impl: jax.value_and_grad(lambda q, k, v: jnp.sum(attention(q, k, v, implementation=impl, **kw) ** 2),
                                        argnums=(0, 1, 2))(q, k, v)
    return f("blockwise"), f("reference")

  for offset in (jnp.int32(9), jnp.array([3, 30], jnp.int32)):
    got, want = both(q, k, v, offset)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, atol=1e-4)
  # vmap over an extra leading axis, with the offset batched too (per-example dynamic block ranges).
  offsets = jnp.array([0, 17], jnp.int32)
  g = lambda impl: jax.jit(jax.vmap(jax.grad(lambda q, o: jnp.sum(attention(q, k, v, causal=True, q_offset=o,
                                                                    implementation=impl) ** 2))))
  np.testing.assert_allclose(g("blockwise")(jnp.stack([q, -q]), offsets),
                             g("reference")(jnp.stack([q, -q]), offsets), atol=1e-4)


RANGE_CASES = [  # (T, S, MaskSpec kwargs, whether the skipped block ranges must be exact, not just covering)
    (64, 64, dict(causal=True), True),
    (33, 64, dict(causal=True, q_offset=31), True),
    (64, 33, dict(causal=True, q_offset=-20), True),
    (64, 64, dict(window=(5, 3)), True),
    (48, 64, dict(window=(None, 2), q_offset=9), True),
    (64, 40, dict(window=(20, None)), True),
    (64, 64, dict(causal=True, window=(20, 0), q_offset=np.array([0, 20])), False),
    (64, 64, dict(causal=True, q_lengths=np.array([20, 40]), kv_lengths=np.array([17, 40])), False),
    (33, 50, dict(causal=True, q_segment_ids=np.zeros((2, 33), int), kv_segment_ids=np.zeros((2, 50), int)), False),
]


@pytest.mark.parametrize("T, S, spec, exact", RANGE_CASES)
def test_skipped_blocks_are_exactly_the_invisible_ones(T, S, spec, exact):
  """The dynamic loop bounds (forward: key blocks per query block; backward: the transpose) against the dense mask."""
  mask = MaskSpec(**spec)
  cfg, masks = blockwise._prepare(mask, T, S, block_q=16, block_k=16)
  nq, nk = cfg.num_q_blocks, cfg.num_k_blocks
  dense = np.zeros((2, nq * 16, nk * 16), bool)
  dense[:, :T, :S] = np.broadcast_to(mask.visible(jnp.arange(T), jnp.arange(S)), (2, T, S))
  needed = dense.reshape(2, nq, 16, nk, 16).any(axis=(0, 2, 4))  # [nq, nk]
  lo, hi = (np.asarray(x) for x in blockwise._key_block_ranges(cfg, masks))
  fwd = (np.arange(nk)[None] >= lo[:, None]) & (np.arange(nk)[None] < hi[:, None])
  lo, hi = (np.asarray(x) for x in blockwise._query_block_ranges(cfg, masks))
  bwd = (np.arange(nq)[:, None] >= lo[None]) & (np.arange(nq)[:, None] < hi[None])
  assert not (needed & ~fwd).any() and not (needed & ~bwd).any()  # never skips a visible block
  if exact:
    np.testing.assert_array_equal(fwd, needed)
    np.testing.assert_array_equal(bwd, needed)
  if spec.get("causal") and "q_segment_ids" not in spec:
    assert fwd.sum() < nq * nk  # something is skipped


def test_dropout_is_rejected_with_a_reason():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="dropout"):
    attention(q, k, v, implementation="blockwise", dropout_rate=0.1, dropout_rng=jax.random.key(0))
  assert "blockwise" in available_backends()


def _shapes(jaxpr):
  """Every value shape produced anywhere in a jaxpr, sub-jaxprs (scan, while, cond, custom_vjp) included."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield tuple(getattr(var.aval, "shape", ()))
    for sub in _subjaxprs(eqn):
      yield from _shapes(sub)


def _subjaxprs(eqn):
  for param in eqn.params.values():
    for p in param if isinstance(param, (tuple, list)) else (param,):
      if hasattr(p, "jaxpr") and hasattr(p.jaxpr, "eqns"):
        yield p.jaxpr
      elif hasattr(p, "eqns"):
        yield p


def test_never_materialises_a_t_by_s_tile():
  T = S = 256
  q, k, v = _qkv(B=1, T=T, S=S, N=2, K=1, D=16, Dv=16)
  mask = MaskSpec(causal=True)

  def fwd_bwd(fn):
    def loss(q, k, v):
      out, lse = fn(q, k, v, mask=mask, scale=0.25)
      return jnp.sum(out) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))

  big = lambda shape: sum(d == T for d in shape) >= 2
  flash = lambda q, k, v, **kw: blockwise.blockwise_attention(q, k, v, block_q=64, block_k=64, **kw)
  shapes = list(_shapes(jax.make_jaxpr(fwd_bwd(flash))(q, k, v).jaxpr))
  assert not [s for s in shapes if big(s)]
  assert any(s[-2:] == (64, 64) for s in shapes)  # the tiles are there
  # The check itself is honest: the reference does build [.., T, S].
  ref = jax.make_jaxpr(fwd_bwd(reference_attention))(q, k, v).jaxpr
  assert any(big(s) for s in _shapes(ref))
