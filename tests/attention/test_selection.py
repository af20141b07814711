"""Backend selection (automatic, lists, explicit, errors), the cudnn backend's checks, and composition with jit,
vmap, higher-order grad and shard_map."""
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxformer.attention.cudnn as cudnn
from jaxformer.attention import api, attention
from jaxformer.attention.api import Request


@pytest.fixture(autouse=True)
def fresh_log_state(monkeypatch):
  """Each test sees the once-per-process fallback warnings afresh."""
  monkeypatch.setattr(api, "_logged", set())


@pytest.fixture
def chosen(monkeypatch):
  """The names of the backends `attention` picked, in call order."""
  names = []
  choose = api._choose

  def recording(request, implementation):
    backend = choose(request, implementation)
    names.append(backend.name)
    return backend

  monkeypatch.setattr(api, "_choose", recording)
  return names


def _qkv(B=2, T=12, S=12, N=4, K=2, D=8, Dv=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, N, D)).astype(np.float32), rng.normal(size=(B, S, K, D)).astype(np.float32),
          rng.normal(size=(B, S, K, Dv)).astype(np.float32))


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "jaxformer.attention" and r.levelno == logging.WARNING]


DROPOUT = dict(dropout_rate=0.1, dropout_rng=jax.random.key(0))


# ---------------------------------------------------------------------------------------------------------------------
# Selection


def test_cpu_default_is_blockwise(chosen, caplog):
  q, k, v = _qkv()
  out = attention(q, k, v, causal=True)
  assert chosen == ["blockwise"] and not _warnings(caplog)
  np.testing.assert_allclose(out, attention(q, k, v, causal=True, implementation="reference"), atol=1e-5)


def test_one_query_row_prefers_the_reference_einsum(chosen, caplog):
  """A decoding step (T = 1 against a KV cache) has nothing to tile: the einsum is picked, silently."""
  q, k, v = _qkv(T=1, S=40)
  attention(q, k, v, causal=True, q_offset=39)
  assert chosen == ["reference"] and not _warnings(caplog)


def test_unsupported_feature_falls_back_to_reference_and_warns_once(chosen, caplog):
  q, k, v = _qkv()
  with caplog.at_level(logging.WARNING, logger="jaxformer.attention"):
    attention(q, k, v, **DROPOUT)
    attention(q, k, v, causal=True, **DROPOUT)  # same reason: no second warning
  assert chosen == ["reference", "reference"]
  warnings = _warnings(caplog)
  assert len(warnings) == 1, warnings
  assert "'blockwise'" in warnings[0] and "dropout" in warnings[0]


def test_a_list_means_the_first_that_supports_the_call(chosen, caplog):
  q, k, v = _qkv()
  with caplog.at_level(logging.WARNING, logger="jaxformer.attention"):
    attention(q, k, v, implementation=["blockwise", "reference"], **DROPOUT)
    attention(q, k, v, implementation=["blockwise", "reference"])
    attention(q, k, v, implementation=("reference", "blockwise"))
  assert chosen == ["reference", "blockwise", "reference"]
  warnings = _warnings(caplog)
  assert len(warnings) == 1 and "'blockwise'" in warnings[0] and "dropout" in warnings[0]


def test_a_list_with_no_capable_backend_raises_with_every_reason():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"no attention implementation in \['blockwise'\].*dropout"):
    attention(q, k, v, implementation=["blockwise"], **DROPOUT)


def test_explicit_backend_that_cannot_honour_a_feature_raises_naming_it():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="'blockwise' cannot serve this call: dropout"):
    attention(q, k, v, implementation="blockwise", **DROPOUT)


@pytest.mark.parametrize("implementation", ["flashy", ["flashy", "reference"], ("blockwise", "flashy")])
def test_unknown_backend_raises(implementation):
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"unknown attention implementation.*'flashy'"):
    attention(q, k, v, implementation=implementation, **DROPOUT)  # dropout: blockwise passes the call on


# ---------------------------------------------------------------------------------------------------------------------
# The cudnn backend (it cannot run here: its checks are tested on fake GPU requests)


def _gpu_request(**overrides):
  fields = dict(platform="gpu", dtype="bfloat16", batch=2, q_len=128, kv_len=128, num_heads=8, num_kv_heads=2,
                head_dim=64, value_head_dim=64, causal=True, window=False, window_size=None, segments=False, lengths=False,
                bias=False, softcap=False, dropout=False, q_offset=False, q_offset_kind="none", return_lse=False,
                cross=False)
  fields.update(overrides)
  return Request(**fields)


@pytest.fixture
def probe_ok(monkeypatch):
  monkeypatch.setattr(cudnn, "_probe", lambda: None)
  monkeypatch.setattr(cudnn, "_max_head_dim", lambda: 256)


def test_cudnn_on_cpu_raises_naming_the_platform():
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _qkv())
  with pytest.raises(ValueError, match="'cudnn' cannot serve this call: does not run on platform 'cpu'"):
    attention(q, k, v, implementation="cudnn")


@pytest.mark.parametrize("overrides, reason", [
    (dict(platform="cpu"), "runs only on GPU"),
    (dict(dtype="float32"), "dtype float32"),
    (dict(head_dim=60, value_head_dim=60), "head dim 60"),
    (dict(head_dim=264, value_head_dim=264), "head dim 264"),
    (dict(value_head_dim=32), "value head dim 32"),
    (dict(segments=True), "segment ids"),
    (dict(softcap=True), "softcap"),
    (dict(dropout=True), "dropout"),
    (dict(q_offset=True, q_offset_kind="static"), "q_offset"),
    (dict(return_lse=True), "return_lse"),
    (dict(window=True, window_size=(3, 0), causal=False), "only a left sliding window on a causal mask"),
    (dict(window=True, window_size=(3, -1)), "only a left sliding window on a causal mask"),
    (dict(bias=True, q_len=127, cross=True), "bias with odd T=127"),
    (dict(kv_len=1, cross=True), "kv length 1"),
    (dict(q_len=1, cross=True), "causal decode"),
])
def test_cudnn_rejects_what_it_cannot_do_exactly(probe_ok, overrides, reason):
  assert reason in (cudnn._supports(_gpu_request(**overrides)) or "")


@pytest.mark.parametrize("overrides", [{}, dict(dtype="float16", causal=False), dict(window=True, window_size=(3, 0)),
                                       dict(window=True, window_size=(3, None)), dict(bias=True),
                                       dict(lengths=True, q_len=64, cross=True), dict(head_dim=256, value_head_dim=256),
                                       dict(q_len=1, causal=False, cross=True)])
def test_cudnn_accepts_what_maps_exactly(probe_ok, overrides):
  assert cudnn._supports(_gpu_request(**overrides)) is None


def test_cudnn_failed_probe_falls_back_with_a_warning(monkeypatch, caplog):
  monkeypatch.setattr(cudnn, "_probe", lambda: "XlaRuntimeError: no cuDNN here")
  monkeypatch.setattr(cudnn, "_max_head_dim", lambda: 256)
  with caplog.at_level(logging.WARNING, logger="jaxformer.attention"):
    backend = api._choose(_gpu_request(), None)
  assert backend.name in ("pallas_gpu", "blockwise")
  warnings = _warnings(caplog)
  assert any("'cudnn'" in w and "failed its probe on this machine: XlaRuntimeError: no cuDNN here" in w
             for w in warnings), warnings


def test_cudnn_probe_runs_once_and_reports_the_error(monkeypatch):
  monkeypatch.setattr(cudnn, "_probe_result", [])
  first = cudnn._probe()
  assert cudnn._probe_result == [first] and cudnn._probe() is first  # cached
  if jax.default_backend() != "gpu":
    assert first and "cuDNN" in first, first


CUDNN_CASES = {  # mask kwargs for the wrapper; T, S
    "causal": (dict(causal=True), 12, 12),
    "causal_cross": (dict(causal=True), 8, 12),
    "causal_window": (dict(causal=True, window=(3, 2)), 12, 12),
    "causal_window_past_the_keys": (dict(causal=True, window=(2, None)), 20, 6),
    "lengths": (dict(q_lengths=np.array([5, 12]), kv_lengths=np.array([0, 7])), 12, 12),
    "causal_lengths_window": (dict(causal=True, window=(4, 0), kv_lengths=np.array([3, 12])), 12, 12),
    "bias": (dict(bias=np.random.default_rng(1).normal(size=(1, 4, 12, 12)).astype(np.float32)), 12, 12),
    "bias_broadcast": (dict(bias=np.random.default_rng(2).normal(size=(2, 1, 1, 12)).astype(np.float32)), 12, 12),
}


@pytest.mark.parametrize("case", sorted(CUDNN_CASES))
def test_cudnn_wrapper_maps_masks_exactly(monkeypatch, case):
  """The wrapper's mapping (window, lengths, bias shape, dead rows), run with jax.nn's xla implementation."""
  nn_attention = jax.nn.dot_product_attention

  def xla_instead(*args, implementation=None, **kwargs):
    assert implementation == "cudnn"
    if kwargs.get("local_window_size") is not None:
      assert kwargs["local_window_size"][1] == 0 and kwargs["is_causal"]
    if kwargs.get("bias") is not None:
      assert kwargs["bias"].shape[2:] == args[0].shape[1:2] + args[1].shape[1:2]  # full T and S
    return nn_attention(*args, implementation="xla", **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", xla_instead)
  kw, T, S = CUDNN_CASES[case]
  q, k, v = _qkv(T=T, S=S)
  ct = np.random.default_rng(3).normal(size=q.shape).astype(np.float32)

  def grads(impl):
    f = lambda q, k, v: jnp.sum(attention(q, k, v, implementation=impl, **kw) * ct)
    return jax.value_and_grad(f, argnums=(0, 1, 2))(q, k, v)

  with monkeypatch.context() as mp:  # let the cudnn backend run here
    mp.setitem(api._BACKENDS, "cudnn", api.Backend("cudnn", cudnn.cudnn_attention, lambda req: None))
    got = grads("cudnn")
    out = attention(q, k, v, implementation="cudnn", **kw)
  want = grads("reference")
  np.testing.assert_allclose(out, attention(q, k, v, implementation="reference", **kw), atol=1e-5)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-4)


@pytest.mark.parametrize("kw", [dict(window=(2, 2)), dict(causal=True, window=(2, -1))])
def test_cudnn_wrapper_rejects_windows_that_do_not_map(kw):
  mask = api.MaskSpec(**kw)
  with pytest.raises(ValueError, match="does not map to cuDNN's sliding window"):
    cudnn._left_window(mask)


# ---------------------------------------------------------------------------------------------------------------------
# Composition


def test_jit_and_vmap_over_an_extra_leading_axis():
  q, k, v = _qkv()
  qs = np.stack([q, -q, 2 * q])
  lengths = np.array([[12, 5], [3, 12], [0, 7]], np.int32)
  for impl in ("blockwise", "reference"):
    f = lambda q, n, impl=impl: attention(q, k, v, causal=True, kv_lengths=n, implementation=impl)
    got = jax.jit(jax.vmap(f))(qs, lengths)
    want = np.stack([attention(qs[i], k, v, causal=True, kv_lengths=lengths[i], implementation="reference")
                     for i in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_blockwise_gradient_matches_reference():
  q, k, v = _qkv(T=20, S=28)
  bias = np.random.default_rng(4).normal(size=(1, 4, 20, 28)).astype(np.float32)

  def grads(impl):
    f = lambda q, k, v, b: jnp.sum(jnp.sin(attention(q, k, v, bias=b, causal=True, q_offset=8, implementation=impl)))
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(q, k, v, bias)

  for g, w in zip(grads("blockwise"), grads("reference")):
    np.testing.assert_allclose(g, w, atol=1e-4)


def test_reference_grad_of_grad():
  """Second derivatives (e.g. for gradient penalties) through the reference backend: forward-over-reverse and
  reverse-over-reverse Hessian-vector products agree with each other and with finite differences of the gradient."""
  q, k, v = _qkv(B=1, T=5, S=6, N=2, K=1)
  f = lambda q: jnp.sum(attention(q, k, v, causal=True, q_offset=1, softcap=3.0, implementation="reference") ** 2)
  g = jax.grad(f)
  direction = np.random.default_rng(5).normal(size=q.shape).astype(np.float32)
  hvp = jax.jit(lambda q: jax.jvp(g, (q,), (direction,))[1])(q)
  hvp_rev = jax.jit(jax.grad(lambda q: jnp.vdot(g(q), direction)))(q)
  np.testing.assert_allclose(hvp_rev, hvp, rtol=1e-4, atol=1e-5)
  eps = 1e-2  # float32: larger steps drown the rounding error; the O(eps^2) error stays below the tolerance
  fd = (jax.jit(g)(q + eps * direction) - jax.jit(g)(q - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(hvp, fd, rtol=1e-2, atol=2e-3)
  assert np.abs(hvp).max() > 0.1  # not trivially zero


SHARD_MAP_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    from jaxformer.attention import attention
    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    B, T, N, K, D = 8, 40, 4, 2, 16
    q, k, v, ct = (jnp.asarray(rng.normal(size=s), jnp.float32)
                   for s in ((B, T, N, D), (B, T, K, D), (B, T, K, D), (B, T, N, D)))
    lengths = jnp.asarray(rng.integers(1, T + 1, size=B), jnp.int32)
    for impl in IMPLS:
      def local(q, k, v, lengths, ct, impl=impl):
        def loss(q, k, v):
          out = attention(q, k, v, causal=True, kv_lengths=lengths, implementation=impl)
          return jnp.sum(out * ct), out
        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads
      spec = P("data")
      sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 5, out_specs=(spec, (spec,) * 3),
                                      check_vma=CHECK_VMA))
      out, grads = sharded(q, k, v, lengths, ct)
      assert len(out.sharding.device_set) == 8
      want_out, want_grads = jax.jit(local)(q, k, v, lengths, ct)
      np.testing.assert_allclose(out, want_out, atol=1e-5)
      for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-4)
    print("OK")
""")


def _run_sharded(impls, check_vma):
  code = f"IMPLS = {impls!r}\nCHECK_VMA = {check_vma!r}\n" + SHARD_MAP_SCRIPT
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr[-3000:]


def test_shard_map_over_8_devices_matches_unsharded():
  """Batch-sharded over 8 simulated CPU devices, with shard_map's type checks on: values and gradients
  equal the unsharded ones."""
  _run_sharded(("reference", "blockwise"), True)
