"""Ring attention over simulated CPU devices equals single-device attention: values, gradients, the model hook."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxformer.attention import attention
from jaxformer.models import DecoderOnly, EncoderDecoder, TransformerConfig
from jaxformer.nn.cache import KVCache
from jaxformer.parallel import ring
from jaxformer.parallel.ring import ring_attention

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8,
                                reason="needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")

B, T, N, K, H = 2, 32, 4, 2, 8  # GQA: 2 query heads per kv head
MESHES = {  # name: (shape, axis names, how the output [B, T, N, H] comes out sharded)
    "seq4": ((4,), ("sequence",), (None, "sequence", None, None)),
    "seq8": ((8,), ("sequence",), (None, "sequence", None, None)),
    "data2_seq4": ((2, 4), ("data", "sequence"), ("data", "sequence", None, None)),
    "seq4_tensor2": ((4, 2), ("sequence", "tensor"), (None, "sequence", "tensor", None)),
}


def _mesh(name):
  shape, names, _ = MESHES[name]
  return Mesh(np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape), names)


def _inputs():
  rng = np.random.default_rng(0)
  q, k, v, ct = (jnp.asarray(rng.normal(size=s), jnp.float32)
                 for s in ((B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)))
  # Packed rows; segment 2 spans the chunk boundary at 8 (n=4) and at 8 and 12 (n=8); row 1 ends in padding.
  seg = np.ones((B, T), np.int32)
  seg[:, 6:] = 2
  seg[:, 13:] = 3
  seg[1, 28:] = 0
  return q, k, v, ct, jnp.asarray(seg)


def _segments():
  """(q, kv) segment ids where queries 10..19 of row 0 are in a segment that has no key: fully masked."""
  seg = _inputs()[-1]
  return seg.at[0, 10:20].set(7), seg


def _value_and_grads(fn, q, k, v, ct):
  """(out, (dq, dk, dv)) of sum(fn(q, k, v) * ct), in one jit."""
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out * ct), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


@functools.cache
def _want(causal):
  q, k, v, ct, _ = _inputs()
  segs = _segments()
  return _value_and_grads(
      lambda q, k, v: attention(q, k, v, causal=causal, segment_ids=segs, implementation="reference"), q, k, v, ct)


def _assert_close(got, want):
  (out, grads), (want_out, want_grads) = got, want
  np.testing.assert_allclose(out, want_out, atol=1e-5)
  for name, g, w in zip("qkv", grads, want_grads):
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"d{name}")


CASES = [(name, causal, stripe) for name in MESHES for causal in (False, True) for stripe in (False, True)
         if (name != "seq4_tensor2" or causal) and (causal or not stripe)]


@pytest.mark.parametrize("mesh_name, causal, stripe", CASES,
                         ids=[f"{n}-{'causal' if c else 'full'}{'-striped' if s else ''}" for n, c, s in CASES])
def test_matches_reference(mesh_name, causal, stripe):
  """Values and dq, dk, dv, with packed segments, GQA and fully masked query rows (zeros, finite gradients).
  Striped on seq8 (T=32 not divisible by n²=64) goes through the all-gather reorder, elsewhere all-to-alls."""
  mesh = _mesh(mesh_name)
  q, k, v, ct, _ = _inputs()
  segs = _segments()
  got = _value_and_grads(lambda q, k, v: ring_attention(q, k, v, causal=causal, segment_ids=segs, mesh=mesh,
                                                        stripe=stripe), q, k, v, ct)
  spec = tuple(got[0].sharding.spec)
  assert spec + (None,) * (4 - len(spec)) == MESHES[mesh_name][2]  # it really ran sharded
  np.testing.assert_array_equal(got[0][0, 10:20], 0.0)
  _assert_close(got, _want(causal))


@pytest.mark.parametrize("stripe", [False, True], ids=["contiguous", "striped"])
def test_gradients_through_another_backend(stripe):
  """The ring VJP drives each chunk's backend VJP with cotangents on (out, lse); with the reference backend
  (plain autodiff) those come out the same as through blockwise's hand-written backward. Striped, the
  reference backend gets the traced q_offset -1 (query row 0 of such a chunk sees no key)."""
  mesh = _mesh("seq4")
  q, k, v, ct, _ = _inputs()
  segs = _segments()
  got = _value_and_grads(lambda q, k, v: ring_attention(q, k, v, causal=True, segment_ids=segs, mesh=mesh,
                                                        implementation="reference", stripe=stripe), q, k, v, ct)
  _assert_close(got, _want(True))


def test_plain_autodiff_striped(monkeypatch):
  """Striped gradients by plain autodiff through the ring loop (the private `_CUSTOM_VJP = False` path) and
  through the permutations are exact too."""
  monkeypatch.setattr(ring, "_CUSTOM_VJP", False)
  mesh = _mesh("data2_seq4")
  q, k, v, ct, _ = _inputs()
  segs = _segments()
  got = _value_and_grads(lambda q, k, v: ring_attention(q, k, v, causal=True, segment_ids=segs, mesh=mesh,
                                                        stripe=True), q, k, v, ct)
  _assert_close(got, _want(True))


@pytest.mark.parametrize("n", [4, 8])
def test_striping_balances_causal_work(n):
  """Counts the (query, key) pairs each device attends to at each ring step, from the causal q_offsets the
  ring itself computes on each device (`_step_offset`, run in a shard_map) and the global positions its
  reorder gives each device's rows (`_reorder` on arange(T)). A compiled program's cost is hard to read on
  CPU, and these counts are what the causal skipping works from.

  Both layouts must cover exactly the causal pairs of the sequence, each once: this fails on a wrong offset
  (e.g. 0 instead of -1 for chunks from later devices counts the pairs n·i + src > n·i + my) or a reorder
  that does not match the offsets. The ring waits for the slowest device at every step, so its time is the
  sum over steps of the largest count. Contiguous: at step s >= 1 the devices r >= s do a full C² pair (the
  others a future chunk: nothing), C(C+1)/2 + (n-1)·C² in all. Striped: every device does C(C±1)/2 pairs at
  every step, n·C(C+1)/2 in all, within n·C/2 of a perfect split of the T(T+1)/2 pairs: 2 - 1/n times less.
  """
  C = 16
  T = n * C
  mesh = Mesh(np.array(jax.devices()[:n]), ("sequence",))
  rows = np.arange(C)
  slowest = {}
  for stripe in (False, True):
    cfg = ring._Ring(axis="sequence", n=n, chunk=C, causal=True, scale=1.0, implementation=None, stripe=stripe)
    offsets = jax.jit(jax.shard_map(lambda: ring._step_offset(cfg, jnp.arange(n))[None], mesh=mesh, in_specs=(),
                                    out_specs=P("sequence")))()
    offsets = np.asarray(offsets)  # [device, step]
    order = np.arange(T)[None]
    if stripe:
      order = ring._reorder(order, n, False, lambda x, dim, shape: x.reshape(shape))
    position = np.asarray(order).reshape(n, C)  # [device, local row]: global position
    seen = np.zeros((T, T), np.int32)
    pairs = np.zeros((n, n), np.int64)  # [step, device]
    for my in range(n):
      for step in range(n):
        src = (my - step) % n  # the chunk visiting at this step (the ring sends device i's chunk to i + 1)
        visible = rows[None, :] <= rows[:, None] + offsets[my, step]  # [query row, key row]
        pairs[step, my] = visible.sum()
        i, j = np.nonzero(visible)
        np.add.at(seen, (position[my, i], position[src, j]), 1)
    np.testing.assert_array_equal(seen, np.tril(np.ones((T, T), np.int32)), err_msg=f"stripe={stripe}")
    slowest[stripe] = pairs.max(axis=1).sum()
    if stripe:
      assert set(pairs[1:].ravel()) == {C * (C + 1) // 2, C * (C - 1) // 2}, pairs
  assert slowest[False] == C * (C + 1) // 2 + (n - 1) * C * C
  assert slowest[True] == n * C * (C + 1) // 2
  assert slowest[True] <= T * (T + 1) / 2 / n + n * C / 2


def test_stripes_by_default_when_causal(monkeypatch, caplog):
  """stripe=None stripes causal rings whose T is divisible by n² (reordering q, k, v and the output back),
  not non-causal ones, nor T=32 on 8 devices (logged): that reorder would need all-gathers (O(T) memory)."""
  monkeypatch.setattr(ring, "_logged", set())
  reordered = []
  reorder = ring._reorder
  monkeypatch.setattr(ring, "_reorder", lambda x, n, inverse, place: reordered.append(inverse) or
                      reorder(x, n, inverse, place))
  q, k, v, _, _ = _inputs()
  for mesh, causal, want in (("seq4", True, [False] * 3 + [True]), ("seq4", False, []), ("seq8", True, [])):
    reordered.clear()
    jax.eval_shape(functools.partial(ring_attention, causal=causal, mesh=_mesh(mesh)), q, k, v)
    assert reordered == want, (mesh, causal)
  assert "T=32 is not divisible by n²=64" in caplog.text


def _grad_temp_bytes(n, custom_vjp, monkeypatch, C=16, H=64):
  """Per-device scratch bytes (XLA's memory analysis of the compiled SPMD program) of the causal ring's
  gradient with n devices, chunks of C and head dim H (wide heads, small chunks: K/V dominate); compiled only."""
  monkeypatch.setattr(ring, "_CUSTOM_VJP", custom_vjp)
  mesh = Mesh(np.array(jax.devices()[:n]), ("sequence",))
  q, kv = jnp.ones((1, n * C, N, H)), jnp.ones((1, n * C, K, H))
  loss = lambda q, k, v: jnp.sum(ring_attention(q, k, v, causal=True, mesh=mesh) ** 2)
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_backward_memory_is_per_chunk(monkeypatch):
  """The custom VJP keeps only local chunks, so with the chunk size C fixed, a device's backward scratch does
  not grow with the ring size n (O(T/n)); plain autodiff through the ring loop (the private `_CUSTOM_VJP = False`
  path) stores every visiting K/V chunk and partial output as a residual, O(T).

  Measured with XLA's memory analysis of the compiled program rather than by running: deterministic on CPU
  and counting exactly the scratch a device holds (arguments and outputs are the same for both paths).
  This is the default, striped, causal ring (T = n·16 is divisible by n²), so the all-to-all buffers of the
  reorder count too. Margins are wide (measured with JAX 0.10.2: custom 286912 B at both n=4 and n=8, 270016 B
  unstriped; autodiff at n=8 603416 B, about 19 K/V chunks more), so XLA scheduling changes should not break it.
  """
  kv_chunk = 2 * 16 * K * 64 * 4  # one device's K and V chunk (C=16, H=64, float32)
  custom4, custom8 = (_grad_temp_bytes(n, True, monkeypatch) for n in (4, 8))
  autodiff8 = _grad_temp_bytes(8, False, monkeypatch)
  assert custom8 <= custom4 + kv_chunk, (custom4, custom8)  # does not grow with n
  assert autodiff8 >= custom8 + 6 * kv_chunk, (custom8, autodiff8)  # autodiff holds at least n - 2 more chunks


def test_errors():
  mesh = _mesh("seq4")
  q, k, v, _, _ = _inputs()
  with pytest.raises(ValueError, match="not divisible"):
    ring_attention(q[:, :30], k[:, :30], v[:, :30], mesh=mesh)
  with pytest.raises(ValueError, match="not in the mesh"):
    ring_attention(q, k, v, mesh=mesh, axis="context")
  with pytest.raises(ValueError, match="self-attention"):
    ring_attention(q, k[:, :16], v[:, :16], mesh=mesh)


def _model_cfg(impl):
  return TransformerConfig.llama(vocab_size=13, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                                 num_layers=1, max_len=T, attention_impl=impl)


def test_decoder_only_ring_matches_reference():
  """attention_impl="ring" under jit with an ambient mesh and sequence-sharded packed inputs; decoding with a
  KV cache falls back to the default backend."""
  mesh = _mesh("data2_seq4")
  _, _, _, _, seg = _inputs()
  tokens = jnp.asarray(np.random.default_rng(1).integers(1, 13, size=(B, T)), jnp.int32)
  positions = jnp.asarray(np.concatenate([np.arange(6), np.arange(7), np.arange(T - 13)]))[None].repeat(B, 0)
  reference = DecoderOnly(_model_cfg("reference"))
  params = jax.jit(reference.init)(jax.random.key(0), tokens)["params"]
  want = jax.jit(reference.apply)({"params": params}, tokens, positions=positions, segment_ids=seg)
  cfg = _model_cfg("ring")
  model = DecoderOnly(cfg)
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", "sequence")))
  with jax.set_mesh(mesh):
    got = jax.jit(lambda p, *xs: model.apply({"params": p}, xs[0], positions=xs[1], segment_ids=xs[2]))(
        params, shard(tokens), shard(positions), shard(seg))
  np.testing.assert_allclose(got, want, atol=1e-5)
  # The first segment (positions 0..5) as a prompt: causal, so its logits are the packed ones.
  decoded, _ = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))(params, tokens[:, :6],
                                                                               KVCache.empty(cfg, B, 8))
  np.testing.assert_allclose(decoded, want[:, :6], atol=1e-5)


def test_encoder_decoder_ring_matches_reference(caplog):
  """Self-attention in the ring, cross-attention through the default backend (logged)."""
  mesh = _mesh("data2_seq4")
  rng = np.random.default_rng(2)
  src, tgt = (jnp.asarray(rng.integers(1, 13, size=(B, T)), jnp.int32) for _ in range(2))
  cfg = lambda impl: TransformerConfig.aiayn_base(vocab_size=13, d_model=32, num_heads=4, mlp_dim=64,  # noqa: E731
                                                  num_layers=1, max_len=T, attention_impl=impl)
  reference = EncoderDecoder(cfg("reference"))
  params = jax.jit(reference.init)(jax.random.key(0), src, tgt)["params"]
  want = jax.jit(reference.apply)({"params": params}, src, tgt)
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", "sequence")))  # noqa: E731
  with jax.set_mesh(mesh):
    got = jax.jit(EncoderDecoder(cfg("ring")).apply)({"params": params}, shard(src), shard(tgt))
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert "cross-attention uses the default attention backend" in caplog.text


def test_model_hook_rejects_alibi():
  bloom = TransformerConfig.bloom(vocab_size=13, d_model=32, num_heads=4, mlp_dim=64, num_layers=1,
                                  attention_impl="ring")
  with pytest.raises(ValueError, match="ALiBi"):
    jax.eval_shape(DecoderOnly(bloom).init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))


def test_unsplittable_heads_and_trivial_rings(caplog):
  """K=1 (MQA) over a tensor axis of 2: heads stay whole (logged); a size-1 axis or no mesh: plain attention."""
  q, k, v, _, _ = _inputs()
  k, v = k[:, :, :1], v[:, :, :1]
  want = attention(q, k, v, causal=True, implementation="reference")
  one = Mesh(np.array(jax.devices()[:1]), ("sequence",))
  for mesh in (_mesh("seq4_tensor2"), one, None):
    got = jax.jit(lambda q, k, v, mesh=mesh: ring_attention(q, k, v, causal=True, mesh=mesh))(q, k, v)
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert "not sharding heads" in caplog.text
