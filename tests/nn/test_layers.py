"""Layers against hand-written numpy versions of the same equations."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.nn import MLP, MultiHeadAttention, Norm, TransformerConfig

CFG = TransformerConfig(vocab_size=11, d_model=16, num_heads=4, num_kv_heads=2, mlp_dim=32, num_layers=1,
                        dropout_rate=0.0)


def _init(module, *args, **kw):
  variables = module.init(jax.random.key(0), *args, **kw)
  return nn.unbox(variables)["params"]


def test_gqa_attention_layer_matches_numpy():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 16)), jnp.float32)
  layer = MultiHeadAttention(CFG, causal=True)
  p = _init(layer, x)
  got = layer.apply({"params": p}, x)
  q = np.einsum("btd,dnh->btnh", x, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("btd,dnh->btnh", x, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("btd,dnh->btnh", x, p["value"]["kernel"]) + p["value"]["bias"]
  k, v = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)  # head n uses kv head n // 2
  s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(4)
  s = np.where(np.tril(np.ones((5, 5), bool)), s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum("bnts,bsnh->btnh", w, v)
  want = np.einsum("btnh,nhd->btd", o, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_cross_attention_uses_the_context():
  x = jnp.ones((1, 3, 16))
  ctx = jnp.asarray(np.random.default_rng(0).normal(size=(1, 7, 16)), jnp.float32)
  layer = MultiHeadAttention(CFG)
  p = _init(layer, x, ctx)
  a = layer.apply({"params": p}, x, ctx)
  b = layer.apply({"params": p}, x, ctx.at[:, 4].add(1.0))
  assert a.shape == (1, 3, 16) and not np.allclose(a, b)
  # masking context position 4 makes it irrelevant again
  seg = (jnp.ones((1, 3), jnp.int32), jnp.array([[1, 1, 1, 1, 0, 1, 1]]))
  np.testing.assert_array_equal(layer.apply({"params": p}, x, ctx, segment_ids=seg),
                                layer.apply({"params": p}, x, ctx.at[:, 4].add(1.0), segment_ids=seg))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norms(norm):
  cfg = CFG.replace(norm=norm, norm_eps=1e-6)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 16)) * 3 + 1, jnp.float32)
  module = Norm(cfg)
  p = _init(module, x)
  got = module.apply({"params": p}, x)
  xn = np.asarray(x, np.float64)
  if norm == "layernorm":
    want = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-6)
  else:
    want = xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_mlp(activation):
  cfg = CFG.replace(activation=activation)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 16)), jnp.float32)
  module = MLP(cfg)
  p = _init(module, x)
  got = module.apply({"params": p}, x)
  h = np.asarray(x) @ p["wi"]["kernel"] + p["wi"]["bias"]
  if activation == "relu":
    h = np.maximum(h, 0)
  elif activation == "gelu":
    h = np.asarray(jax.nn.gelu(h, approximate=False))
  else:
    g = np.asarray(x) @ p["wi_gate"]["kernel"] + p["wi_gate"]["bias"]
    h = g / (1 + np.exp(-g)) * h
  np.testing.assert_allclose(got, h @ p["wo"]["kernel"] + p["wo"]["bias"], atol=1e-5)
  from scipy.special import erf  # exact GELU, independent of jax
  if activation == "gelu":
    z = np.asarray(x) @ p["wi"]["kernel"] + p["wi"]["bias"]
    np.testing.assert_allclose(h, 0.5 * z * (1 + erf(z / np.sqrt(2))), atol=1e-5)


def test_bad_model_config_is_a_clear_error():
  with pytest.raises(ValueError, match="num_kv_heads"):
    TransformerConfig(num_heads=8, num_kv_heads=3)
  with pytest.raises(ValueError, match="model.position"):
    TransformerConfig(position="absolute")
  with pytest.raises(ValueError, match="unknown model config key"):
    TransformerConfig.from_dict({"num_layer": 3})
