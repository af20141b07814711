"""Property sweep: every attention backend against `reference` (hypothesis, derandomized so CI is deterministic).

Each backend module (`jaxformer.attention.<name>`) is imported if it exists; one not written yet is skipped.
Pallas backends run inside `interpret_mode()`. A backend whose platform is not this one and that cannot be
interpreted (cudnn on CPU) only has its rejections checked.

Each drawn case is a random mix of shapes (B 1-2, T and S 1-70, N = K·(1..3), K 1-2, D in {8, 16, 32}, Dv == D or
not), dtype and mask features (causal, window, segment ids incl. a query segment without keys, q/kv lengths, bias
[1|B, 1|N, T, S], softcap, q_offset scalar or [B], return_lse). If the backend's `supports` rejects the request,
`attention(implementation=name)` must raise a ValueError carrying that reason; otherwise out, lse and the gradients
of sum(out · cotangent) wrt q, k, v (and bias) must match the reference:

  float32:  out and lse atol = rtol = 1e-5; gradients atol = rtol = 1e-4.
  bfloat16: the reference runs in float32 on the same bf16-rounded inputs; out and lse atol = rtol = 1e-2,
            gradients atol = rtol = 5e-2, each atol scaled by max(1, max |reference|) of that array.

The blockwise backend runs with 16×16 blocks so that the multi-block, padding and skipping paths are exercised.
Matmuls run at "highest" precision (no TF32 on GPUs). Budget: 40 examples for blockwise (~35 s on 2 idle cores,
~65 s with both cores busy), 8 per Pallas backend (interpret mode is slow); no shrinking (every example compiles).
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jaxformer.attention import api, attention, interpret_mode

BACKENDS = ("blockwise", "pallas_gpu", "pallas_tpu", "cudnn")
EXAMPLES = {"blockwise": 40, "pallas_gpu": 8, "pallas_tpu": 8, "cudnn": 20}
SMALL_BLOCKS = {"blockwise": 16}  # module constants BLOCK_Q/BLOCK_K patched to this
# dtype -> (out and lse tolerance, gradient tolerance, whether atol scales with the reference's magnitude)
TOLERANCE = {"float32": (1e-5, 1e-4, False), "bfloat16": (1e-2, 5e-2, True)}


def _load(name):
  """The backend's module, or skip if it has not been written yet (an import error inside it still fails)."""
  module_name = f"jaxformer.attention.{name}"
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name == module_name:
      pytest.skip(f"{module_name} does not exist yet")
    raise


@st.composite
def cases(draw):
  """One attention call: arrays (numpy) and keyword arguments."""
  B, T = draw(st.integers(1, 2)), draw(st.integers(1, 70))
  S = T if draw(st.booleans()) else draw(st.integers(1, 70))  # self-attention half the time
  K = draw(st.integers(1, 2))
  N = K * draw(st.integers(1, 3))
  D = draw(st.sampled_from([8, 16, 32]))
  Dv = draw(st.sampled_from([D, 8, 16, 32]))
  dtype = draw(st.sampled_from(["float32", "bfloat16"]))
  rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
  kw = {}
  if draw(st.booleans()):
    kw["causal"] = True
  if draw(st.booleans()):
    side = st.one_of(st.none(), st.integers(0, 24))
    kw["window"] = (draw(side), draw(side))
  if draw(st.booleans()):
    # Sorted small ids give runs (packed sequences); kv ids stop at 2, so a query segment 3 has no keys.
    q_seg = np.sort(rng.integers(0, 4, size=(B, T)), axis=1)
    kv_seg = np.sort(rng.integers(0, 3, size=(B, S)), axis=1)
    kw["segment_ids"] = (q_seg.astype(np.int32), kv_seg.astype(np.int32))
  if draw(st.booleans()):
    kw["q_lengths"] = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)), np.int32)
  if draw(st.booleans()):
    kw["kv_lengths"] = np.array(draw(st.lists(st.integers(0, S), min_size=B, max_size=B)), np.int32)
  bias = None
  if draw(st.booleans()):
    bias = rng.normal(size=(draw(st.sampled_from([1, B])), draw(st.sampled_from([1, N])), T, S)).astype(np.float32)
  kw["softcap"] = draw(st.sampled_from([None, 1.0, 5.0]))
  offset = draw(st.sampled_from(["zero", "scalar", "batch"]))
  if offset == "scalar":
    kw["q_offset"] = draw(st.integers(-10, 40))
  elif offset == "batch":
    kw["q_offset"] = np.array(draw(st.lists(st.integers(-10, 40), min_size=B, max_size=B)), np.int32)
  kw["return_lse"] = draw(st.booleans())
  q = rng.normal(size=(B, T, N, D))
  k = rng.normal(size=(B, S, K, D))
  v = rng.normal(size=(B, S, K, Dv))
  cotangent = rng.normal(size=(B, T, N, Dv)).astype(np.float32)
  if dtype == "bfloat16":  # the reference sees exactly the rounded values
    q, k, v = (x.astype(jnp.bfloat16).astype(np.float32) for x in (q, k, v))
    bias = None if bias is None else bias.astype(jnp.bfloat16).astype(np.float32)
  q, k, v = (np.asarray(x, np.float32) for x in (q, k, v))
  return dict(q=q, k=k, v=v, bias=bias, cotangent=cotangent, dtype=dtype, kw=kw)


def _run(impl, q, k, v, bias, cotangent, kw):
  """(out, lse or None, grads of sum(out · cotangent) wrt q, k, v[, bias])."""
  return_lse = kw["return_lse"]

  def loss(q, k, v, bias):
    res = attention(q, k, v, bias=bias, implementation=impl, **kw)
    out, lse = res if return_lse else (res, None)
    return jnp.sum(out.astype(jnp.float32) * cotangent), (out, lse)

  argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
  grads, (out, lse) = jax.grad(loss, argnums=argnums, has_aux=True)(q, k, v, bias)
  return out, lse, grads


def _close(name, got, want, tol, scaled):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  assert np.array_equal(np.isfinite(got), np.isfinite(want)), f"{name}: non-finite entries differ"
  finite = np.isfinite(want)
  assert np.array_equal(got[~finite], want[~finite]), f"{name}: -inf entries differ"
  scale = max(1.0, float(np.max(np.abs(want[finite]), initial=0.0))) if scaled else 1.0
  np.testing.assert_allclose(got[finite], want[finite], atol=tol * scale, rtol=tol, err_msg=name)


def _check_case(name, case):
  backend = api._BACKENDS[name]
  q, k, v, bias, kw = case["q"], case["k"], case["v"], case["bias"], case["kw"]
  dtype = jnp.dtype(case["dtype"])
  q_in, k_in, v_in = (jnp.asarray(x, dtype) for x in (q, k, v))
  bias_in = None if bias is None else jnp.asarray(bias)
  requests = []
  choose = api._choose

  def recording_choose(request, implementation):
    requests.append(request)
    return choose(request, implementation)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(api, "_choose", recording_choose)
    try:
      got = jax.jit(lambda q, k, v, b: _run(name, q, k, v, b, case["cotangent"], kw))(q_in, k_in, v_in, bias_in)
      error = None
    except ValueError as e:
      error = e
  reason = api._unsupported(backend, requests[0])
  if reason is not None:
    assert error is not None, f"{name} rejects the request ({reason}) but attention() did not raise"
    assert reason in str(error), (reason, str(error))
    return
  if error is not None:
    raise error
  want = jax.jit(lambda q, k, v, b: _run("reference", q, k, v, b, case["cotangent"], kw))(q, k, v, bias)
  out, lse, grads = got
  want_out, want_lse, want_grads = want
  tol_fwd, tol_grad, scaled = TOLERANCE[case["dtype"]]
  assert out.dtype == dtype and out.shape == want_out.shape
  _close("out", out, want_out, tol_fwd, scaled)
  if kw["return_lse"]:
    assert lse.dtype == jnp.float32
    _close("lse", lse, want_lse, tol_fwd, scaled)
  for g_name, g, want_g in zip(("dq", "dk", "dv", "dbias"), grads, want_grads):
    assert np.all(np.isfinite(np.asarray(g, np.float32))), f"{g_name} is not finite"
    _close(g_name, g, want_g, tol_grad, scaled)


@pytest.mark.parametrize("name", BACKENDS)
def test_matches_reference(name, monkeypatch):
  module = _load(name)
  if name in SMALL_BLOCKS:
    monkeypatch.setattr(module, "BLOCK_Q", SMALL_BLOCKS[name])
    monkeypatch.setattr(module, "BLOCK_K", SMALL_BLOCKS[name])
  backend = api._BACKENDS[name]
  # Pallas kernels run natively on their own platform (the GPU check script), interpreted elsewhere.
  interpret = backend.interpretable and jax.default_backend() not in backend.platforms

  @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
            phases=(Phase.explicit, Phase.generate),  # no shrinking: every example compiles, so it would take long
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
  @given(case=cases())
  def sweep(case):
    # "highest": on GPUs float32 matmuls would otherwise run in TF32, far outside the float32 tolerances.
    with jax.default_matmul_precision("highest"), interpret_mode(interpret):
      _check_case(name, case)

  sweep()
