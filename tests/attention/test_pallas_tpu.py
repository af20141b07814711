"""The pallas_tpu backend (splash attention) in interpret mode on CPU against the reference backend.

Tolerances: float32 out/lse atol 1e-5, gradients atol 1e-4 (measured errors are ~1e-6: the
kernels accumulate in float32 like the reference). bfloat16 compares against the reference run
on the same bf16 inputs: lse stays float32 (atol 1e-3; measured 5e-7), out is rounded to bf16
(atol 1e-2; measured 1e-3) and the backward kernels round p and dS to bf16 before their matmuls,
so gradients of size ~4 differ by an ulp or two (2^-6 each): atol 4e-2 (measured 1.6e-2).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxformer.attention.pallas_tpu as pallas_tpu
from jaxformer.attention import attention, available_backends, interpret_mode


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
  """Blocks of 128 (splash's minimum) so that T, S = 256 run the multi-block and block-skipping paths."""
  monkeypatch.setattr(pallas_tpu, "BLOCK_Q", 128)
  monkeypatch.setattr(pallas_tpu, "BLOCK_KV", 128)


def _qkv(B=1, T=256, S=256, N=4, K=2, D=64, Dv=64, dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=shape).astype(dtype) for shape in ((B, T, N, D), (B, S, K, D), (B, S, K, Dv)))


def _run(impl, q, k, v, w, g, kw):
  """out, lse and the VJP of (out, lse) with cotangents (w, g); g=None differentiates out only."""
  fn = lambda q, k, v: attention(q, k, v, implementation=impl, return_lse=True, **kw)
  if g is None:  # the lse cotangent stays a symbolic zero
    (out, lse), grads = fn(q, k, v), jax.grad(lambda *a: jnp.sum(fn(*a)[0].astype(jnp.float32) * w), (0, 1, 2))(q, k, v)
  else:
    (out, lse), vjp = jax.vjp(fn, q, k, v)
    grads = vjp((w.astype(out.dtype), g))
  return out, lse, grads


def _check(q, k, v, atol=1e-5, grad_atol=1e-4, lse_atol=None, lse_grad=True, **kw):
  """Both backends in one jitted program, traced in interpret mode; every array is an argument (no constant folding)."""
  rng = np.random.default_rng(7)
  w = rng.normal(size=q.shape[:3] + v.shape[-1:]).astype(np.float32)
  g = rng.normal(size=(q.shape[0], q.shape[2], q.shape[1])).astype(np.float32) if lse_grad else None
  both = lambda q, k, v, w, g: (_run("pallas_tpu", q, k, v, w, g, kw), _run("reference", q, k, v, w, g, kw))
  with interpret_mode():
    (out, lse, grads), (want_out, want_lse, want_grads) = jax.jit(both)(q, k, v, w, g)
  assert out.shape == want_out.shape and out.dtype == want_out.dtype
  assert lse.shape == want_lse.shape and lse.dtype == jnp.float32
  f32 = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(f32(out), f32(want_out), atol=atol)
  np.testing.assert_allclose(f32(lse), f32(want_lse), atol=lse_atol or atol)  # -inf rows must agree exactly
  for name, grad, want in zip("qkv", grads, want_grads):
    assert grad.shape == want.shape and grad.dtype == want.dtype, name
    assert np.all(np.isfinite(f32(grad))), name
    np.testing.assert_allclose(f32(grad), f32(want), atol=grad_atol, err_msg=f"d{name}")
  return out, lse


def test_registered():
  assert "pallas_tpu" in available_backends()


def test_block_choice():
  assert pallas_tpu._round_up(200, 128) == 256
  assert [pallas_tpu._block(n, 512) for n in (128, 256, 640, 1536, 2048)] == [128, 256, 128, 512, 512]


# Segments where query segment 3 has no key at all (cross ids), so its rows are fully masked.
_DEAD_SEGMENT = (np.repeat([[1, 3]], 128, axis=1), np.repeat([[1, 2]], 128, axis=1))
_PACKED = np.repeat([[1, 2, 2, 3]], 64, axis=1)
CASES = {
    "gqa": ({}, {}),
    "causal_mha": (dict(causal=True), dict(K=4)),
    "window_cross_padded": (dict(window=(20, 5)), dict(T=200, S=300)),
    "causal_window_padded": (dict(causal=True, window=(33, None)), dict(T=200, S=200)),
    "segments_dead_rows": (dict(segment_ids=_DEAD_SEGMENT), {}),
    "causal_packed_segments": (dict(causal=True, segment_ids=_PACKED), {}),
    "mqa_causal_value_dim": (dict(causal=True), dict(K=1, Dv=32)),
    "lengths": (dict(q_lengths=np.array([100, 256]), kv_lengths=np.array([50, 0])), dict(B=2, N=2, K=1)),
    "q_offset": (dict(causal=True, q_offset=64), dict(T=128, S=256)),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_reference(name):
  kw, shape = CASES[name]
  out, lse = _check(*_qkv(**shape), **kw)
  if name == "segments_dead_rows":
    assert np.all(np.asarray(out)[:, 128:] == 0) and np.all(np.isneginf(np.asarray(lse)[:, :, 128:]))
  if name == "lengths":
    assert np.all(np.asarray(out)[1] == 0)  # kv_length 0: every row of batch 1 sees nothing


def test_softcap():
  """Softcap differentiates out only: the lse cotangent is a symbolic zero."""
  _check(*_qkv(), causal=True, softcap=5.0, lse_grad=False)


def test_softcap_lse_gradient_raises():
  q, k, v = _qkv()
  fn = lambda q: attention(q, k, v, softcap=5.0, implementation="pallas_tpu", return_lse=True)[1].sum()
  with interpret_mode(), pytest.raises(NotImplementedError, match="lse"):
    jax.eval_shape(jax.grad(fn), q)  # traces only


def test_bfloat16():
  q, k, v = _qkv(dtype=jnp.bfloat16)
  _check(q, k, v, atol=1e-2, grad_atol=4e-2, lse_atol=1e-3, causal=True, window=(64, None))


@pytest.mark.parametrize("feature", ["bias", "dropout"])
def test_unsupported_feature_raises(feature):
  q, k, v = _qkv(T=128, S=128)
  kw = dict(bias=np.zeros((1, 4, 128, 128), np.float32)) if feature == "bias" else dict(
      dropout_rate=0.1, dropout_rng=jax.random.key(0))
  with interpret_mode(), pytest.raises(ValueError, match=feature):
    attention(q, k, v, implementation="pallas_tpu", **kw)


def test_not_on_cpu_outside_interpret_mode():
  if jax.default_backend() == "tpu":
    pytest.skip("runs natively on TPU")
  q, k, v = _qkv(T=128, S=128)
  with pytest.raises(ValueError, match=f"does not run on platform '{jax.default_backend()}'"):
    attention(q, k, v, implementation="pallas_tpu")


def test_dynamic_q_offset_raises():
  q, k, v = _qkv(B=2, T=128, S=128)
  fn = lambda offset: attention(q, k, v, causal=True, q_offset=offset, implementation="pallas_tpu")
  with interpret_mode():
    with pytest.raises(ValueError, match="traced"):
      jax.eval_shape(fn, jnp.int32(3))
    with pytest.raises(ValueError, match="per-batch"):
      jax.eval_shape(lambda: fn(np.array([0, 3])))
    # Without causal/window the offset moves nothing, so a traced one is fine.
    jax.eval_shape(lambda o: attention(q, k, v, q_offset=o, implementation="pallas_tpu"), jnp.int32(3))


def test_inside_shard_map():
  """pallas_call is not auto-partitioned: the supported pattern is shard_map with the batch split over devices.

  check_vma=False: splash declares its outputs without a varying-manual-axes type, which check_vma=True rejects.
  """
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  q, k, v = _qkv(B=len(jax.devices()), T=128, S=128)
  w = np.random.default_rng(3).normal(size=q.shape).astype(np.float32)

  def loss(impl, q, k, v, w):
    attend = lambda q, k, v: attention(q, k, v, causal=True, implementation=impl)
    out = jax.shard_map(attend, mesh=mesh, in_specs=P("data"), out_specs=P("data"), check_vma=False)(q, k, v)
    return jnp.sum(out * w), out

  grad = jax.value_and_grad(loss, (1, 2, 3), has_aux=True)
  both = lambda *a: [grad(impl, *a) for impl in ("pallas_tpu", "reference")]
  with interpret_mode():
    ((_, out), grads), ((_, want_out), want_grads) = jax.jit(both)(q, k, v, w)
  np.testing.assert_allclose(out, want_out, atol=1e-5)
  for grad, want in zip(grads, want_grads):
    np.testing.assert_allclose(grad, want, atol=1e-4)
