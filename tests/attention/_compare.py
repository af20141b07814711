"""Shared assertion for backend-vs-reference tests: outputs, lse and gradients."""
import jax.numpy as jnp
import numpy as np


def _f32(x):
  return np.asarray(x, np.float32)


def assert_matches(got, want, *, atol: float, grad_atol: float, names: str = "qkvb"):
  """got/want = (out, lse, grads). Same shapes and dtypes, lse in float32, finite gradients, values within tolerance
  (-inf lse rows must agree exactly)."""
  (out, lse, grads), (want_out, want_lse, want_grads) = got, want
  assert out.shape == want_out.shape and out.dtype == want_out.dtype
  assert lse.shape == want_lse.shape and lse.dtype == jnp.float32
  np.testing.assert_allclose(_f32(out), _f32(want_out), atol=atol)
  np.testing.assert_allclose(_f32(lse), _f32(want_lse), atol=atol)
  for name, g, w in zip(names, grads, want_grads):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    assert np.all(np.isfinite(_f32(g))), name
    np.testing.assert_allclose(_f32(g), _f32(w), atol=grad_atol, err_msg=f"d{name}")
