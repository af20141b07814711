"""The pallas_gpu backend (Pallas Triton kernels, run by the Pallas interpreter on CPU) against the reference."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

import jaxformer.attention.pallas_gpu as pallas_gpu
from jaxformer.attention import attention, interpret_mode
from jaxformer.attention.masks import MaskSpec
from tests.attention._compare import assert_matches


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
  """Tiles of 16 and 32 (different per kernel) so T, S = 40 run the multi-tile, padded and skipping paths."""
  for name in ("BLOCK_Q", "BLOCK_Q_DQ", "BLOCK_K_DKV"):
    monkeypatch.setattr(pallas_gpu, name, 32)
  for name in ("BLOCK_K", "BLOCK_K_DQ", "BLOCK_Q_DKV"):
    monkeypatch.setattr(pallas_gpu, name, 16)


def _qkv(B=2, T=40, S=40, N=4, K=2, D=16, Dv=None, dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (rng.normal(size=shape).astype(np.float32)
             for shape in ((B, T, N, D), (B, S, K, D), (B, S, K, Dv or D)))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _run(impl, q, k, v, kw):
  """out, lse and the gradients of a random-weighted sum of out (plus a little of lse) wrt q, k, v."""
  rng = np.random.default_rng(7)
  w = jnp.asarray(rng.normal(size=q.shape[:3] + v.shape[-1:]), q.dtype)
  w_lse = jnp.asarray(rng.normal(size=(q.shape[0], q.shape[2], q.shape[1])) * 0.1, jnp.float32)
  fn = lambda q, k, v: attention(q, k, v, implementation=impl, return_lse=True, **kw)
  (out, lse), vjp = jax.vjp(fn, q, k, v)
  return out, lse, vjp((w, jnp.where(jnp.isfinite(lse), w_lse, 0.0)))


# Interpreted on CPU; on a GPU the same tests run the compiled Triton kernels.
INTERPRET = jax.default_backend() != "gpu"


def _jit_quick(fn, *args):
  """jit, compiled without XLA's backend optimizations: the interpreted kernels compile about twice as fast."""
  return jax.jit(fn).trace(*args).lower().compile({"xla_backend_optimization_level": 0})(*args)


def _check(q, k, v, atol=1e-5, grad_atol=1e-4, **kw):
  """Both backends in one jitted program (one compile per case keeps the file fast)."""
  with interpret_mode(INTERPRET):
    both = lambda q, k, v: (_run("pallas_gpu", q, k, v, kw), _run("reference", q, k, v, kw))
    got, want = _jit_quick(both, q, k, v)
  assert_matches(got, want, atol=atol, grad_atol=grad_atol, names="qkv")
  out, lse, grads = got
  return out, lse, grads


def _segments(lengths, ids):
  return np.repeat(np.asarray(ids), lengths, axis=1).astype(np.int32)


CASES = {
    "plain": {},
    "causal": dict(causal=True),
    "window": dict(window=(3, 2)),
    "window_right_only": dict(window=(None, 2)),
    "causal_window": dict(causal=True, window=(5, 0)),
    "segments_causal": dict(causal=True, segment_ids=_segments([9, 15, 16], [[1, 2, 3], [1, 1, 0]])),
    "lengths": dict(q_lengths=np.array([20, 40]), kv_lengths=np.array([17, 30])),
    "softcap_scale": dict(softcap=2.0, scale=0.5, causal=True),
    "q_offset_per_batch": dict(causal=True, window=(6, None), q_offset=np.array([0, 20])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference(case):
  _check(*_qkv(), **CASES[case])


def test_query_segment_that_sees_no_key():
  """Query segment 3 has no key: zeros, lse = -inf and finite (zero) gradients for its rows."""
  q_seg = _segments([16, 16, 8], [[1, 2, 3], [1, 3, 2]])
  kv_seg = _segments([20, 20], [[1, 2], [2, 1]])
  out, lse, grads = _check(*_qkv(), segment_ids=(q_seg, kv_seg))
  dead = q_seg == 3  # [B, T]
  assert np.all(np.asarray(out)[dead] == 0)
  assert np.all(np.isneginf(np.asarray(lse).transpose(0, 2, 1)[dead]))
  assert np.all(np.asarray(grads[0])[dead] == 0)


def test_decode_against_cache():
  """T = 1 query at absolute position q_offset, causal, against S = 40 keys (one padded query tile)."""
  _check(*_qkv(T=1), causal=True, q_offset=37)


def test_cross_attention():
  _check(*_qkv(T=24, S=40, Dv=32), causal=True, q_offset=16)  # also Dv != D


@pytest.mark.parametrize("num_kv_heads", [1, 4], ids=["mqa", "mha"])
def test_kv_head_groups(num_kv_heads):
  _check(*_qkv(K=num_kv_heads), causal=True)


def test_head_dim_not_a_power_of_two():
  _check(*_qkv(D=24, S=16, T=16), causal=True)  # zero-padded to 32 inside


def test_bfloat16():
  _check(*_qkv(dtype=jnp.bfloat16), atol=1e-2, grad_atol=5e-2, causal=True)


def test_jit_grad_without_lse():
  """The common training path: jit(grad) of a loss on out only (the lse cotangent is a symbolic zero)."""
  q, k, v = _qkv()

  def loss(impl, q, k, v):
    return jnp.sum(jnp.sin(attention(q, k, v, causal=True, implementation=impl)))

  with interpret_mode(INTERPRET):
    got = jax.jit(jax.grad(lambda *a: loss("pallas_gpu", *a), argnums=(0, 1, 2)))(q, k, v)
  want = _jit_quick(jax.grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2)), q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4)


def test_inside_shard_map():
  """pallas_call is not auto-partitioned: under a mesh it runs inside shard_map on per-device shapes (fwd and bwd)."""
  devices = np.array(jax.devices())
  mesh = Mesh(devices, ("data",))
  q, k, v = _qkv(B=2 * devices.size)
  spec = PartitionSpec("data")

  def loss(impl, q, k, v):
    return jnp.sum(jnp.sin(attention(q, k, v, causal=True, implementation=impl)))

  def per_device(q, k, v):
    value, grads = jax.value_and_grad(functools.partial(loss, "pallas_gpu"), argnums=(0, 1, 2))(q, k, v)
    return jax.lax.psum(value, "data"), grads

  with interpret_mode(INTERPRET):
    sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, spec),
                            out_specs=(PartitionSpec(), (spec, spec, spec)))
    value, grads = jax.jit(sharded)(q, k, v)
  want_value, want_grads = jax.value_and_grad(functools.partial(loss, "reference"), argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-4)


def test_skipped_tiles_are_never_read():
  """Keys past kv_length in whole skipped tiles hold NaN: a kernel that read them (even masked) would return NaN."""
  q, k, v = _qkv(B=1, T=64, S=64)
  poison = (jnp.arange(64) >= 32)[None, :, None, None]  # key tiles 2, 3 (of 16) and 1 (of 32): beyond kv_length
  kw = dict(kv_lengths=np.array([20]), causal=True, q_offset=30, return_lse=True)
  w = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), q.dtype)

  def run(impl, k, v):
    fn = lambda q, k, v: attention(q, k, v, implementation=impl, **kw)
    (out, lse), vjp = jax.vjp(fn, q, k, v)
    return out, lse, vjp((w, jnp.zeros_like(lse)))

  with interpret_mode(INTERPRET):
    got = _jit_quick(functools.partial(run, "pallas_gpu"), jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v))
  want = _jit_quick(functools.partial(run, "reference"), k, v)
  for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w_), atol=1e-4)


def test_tile_ranges_skip_invisible_tiles():
  """Causal and window: each query tile visits only the key tiles its positions can see (per batch offset)."""
  cfg = pallas_gpu._Config(causal=True, window=(16, None), softcap=None, scale=1.0, T=64, S=64, Tp=64, Sp=64,
                           fwd=(16, 16), dq=(16, 16), dkdv=(16, 16), segments=False, q_lengths=False,
                           kv_lengths=False, interpret=True, num_warps=4)
  offset = jnp.array([0, 16], jnp.int32)
  (k_lo, k_hi), (q_lo, q_hi) = pallas_gpu._tile_ranges(cfg, (None, None, None, None, offset), 2, 16, 16)
  np.testing.assert_array_equal(k_lo, [[0, 0, 1, 2], [0, 1, 2, 3]])
  np.testing.assert_array_equal(k_hi, [[1, 2, 3, 4], [2, 3, 4, 4]])
  np.testing.assert_array_equal(q_lo, [[0, 1, 2, 3], [0, 0, 1, 2]])
  np.testing.assert_array_equal(q_hi, [[2, 3, 4, 4], [1, 2, 3, 4]])


def test_tile_ranges_segments_and_lengths():
  """Packed segments and lengths narrow the ranges; a query tile with nothing to see gets an empty range."""
  cfg = pallas_gpu._Config(causal=False, window=None, softcap=None, scale=1.0, T=64, S=64, Tp=64, Sp=64,
                           fwd=(16, 16), dq=(16, 16), dkdv=(16, 16), segments=True, q_lengths=True,
                           kv_lengths=False, interpret=True, num_warps=4)
  seg = jnp.asarray(_segments([32, 32], [[1, 2]]))
  masks = (seg, seg, jnp.array([48], jnp.int32), None, None)
  (k_lo, k_hi), _ = pallas_gpu._tile_ranges(cfg, masks, 1, 16, 16)
  np.testing.assert_array_equal(k_lo, [[0, 0, 2, 0]])
  np.testing.assert_array_equal(k_hi, [[2, 2, 4, 0]])


_ALL_MASKS = dict(causal=True, window=(8, None), q_segment_ids=jnp.ones((2, 40), jnp.int32),
                  kv_segment_ids=jnp.ones((2, 24), jnp.int32), q_lengths=jnp.array([30, 40]),
                  kv_lengths=jnp.array([20, 24]), q_offset=jnp.array([0, 3]))


@pytest.mark.parametrize("dtype, heads, dims, mask_kw, softcap", [
    (jnp.bfloat16, (4, 2), (16, 16), _ALL_MASKS, 5.0),
    (jnp.float32, (4, 1), (24, 32), {}, None),  # no masks, IEEE fp32 dots, MQA, padded D and Dv != D
    (jnp.float16, (2, 2), (256, 256), dict(causal=True), None),  # the largest head dim (halved tiles)
], ids=["bf16_all_masks", "f32_plain_mqa", "f16_d256"])
def test_lowers_to_triton_for_cuda(monkeypatch, dtype, heads, dims, mask_kw, softcap):
  """The three kernels pass Pallas' Triton lowering rules for CUDA (PTX is compiled only on a GPU)."""
  if pallas_gpu._TritonParams is None:
    pytest.skip("this jax has no Pallas Triton lowering")
  monkeypatch.setattr(pallas_gpu, "_use_interpreter", lambda: False)
  q, k, v = _qkv(T=40, S=24, N=heads[0], K=heads[1], D=dims[0], Dv=dims[1], dtype=dtype)
  mask = MaskSpec(**mask_kw)

  def grads(q, k, v):
    fn = lambda q, k, v: pallas_gpu.pallas_gpu_attention(q, k, v, mask=mask, scale=0.25, softcap=softcap)
    out, vjp = jax.vjp(fn, q, k, v)
    return vjp(out)

  try:
    text = jax.jit(grads).trace(q, k, v).lower(lowering_platforms=("cuda",)).as_text()
  except ValueError as e:
    if "Cannot lower pallas_call on platform" in str(e):  # this jaxlib has no Triton lowering library
      pytest.skip(str(e))
    raise
  for name in ("fwd", "dq", "dkdv"):
    assert f'name = "pallas_gpu_attention_{name}"' in text
  assert "triton" in text


def test_unsupported_features_name_themselves():
  q, k, v = _qkv()
  with interpret_mode(INTERPRET):
    with pytest.raises(ValueError, match="bias is not supported by pallas_gpu"):
      attention(q, k, v, bias=jnp.zeros((1, 1, 40, 40)), implementation="pallas_gpu")
    with pytest.raises(ValueError, match="dropout is not supported by pallas_gpu"):
      attention(q, k, v, dropout_rate=0.1, dropout_rng=jax.random.key(0), implementation="pallas_gpu")
    big = jnp.zeros((1, 16, 1, 512))
    with pytest.raises(ValueError, match="head_dim 512"):
      attention(big, big, big, implementation="pallas_gpu")


def test_needs_gpu_outside_interpret_mode():
  if jax.default_backend() == "gpu":
    pytest.skip("runs natively here")
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=f"does not run on platform '{jax.default_backend()}'"):
    attention(q, k, v, implementation="pallas_gpu")
