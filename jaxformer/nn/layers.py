"""Small building blocks: initializers with logical axis names, norms, MLP, token embedding.

Every parameter is created through `param_init` so it carries logical axis names
(`vocab`, `embed`, `heads`, `kv_heads`, `kv`, `mlp`, ...) that
`jaxformer.parallel` maps to mesh axes; modules never mention devices.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxformer.nn.config import TransformerConfig


def param_init(cfg: TransformerConfig, names: Sequence[str | None], kind: str = "kernel"):
  """An initializer tagged with logical axis names.

  kind: "kernel" (normal(init_std) if set, else LeCun-normal; DenseGeneral hands
  the initializer its kernel flattened to [fan_in, fan_out]), "embedding" (normal(init_std), else std 1/sqrt(embed)), "zeros", "ones".
  """
  if kind == "zeros":
    init = nn.initializers.zeros_init()
  elif kind == "ones":
    init = nn.initializers.ones_init()
  elif cfg.init_std is not None:
    init = nn.initializers.normal(cfg.init_std)
  elif kind == "embedding":
    init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
  else:
    init = nn.initializers.lecun_normal()
  names = tuple(names)
  return lambda *args, **kwargs: _Partitioned(init(*args, **kwargs), names)


class _Partitioned(nn.LogicallyPartitioned):
  """flax's DenseGeneral creates its kernel flattened to 2-d and unboxes it before reshaping (also when it
  checks shapes during `apply`); constraining that flat array by the full names would fail under a mesh,
  so only arrays of the names' rank are constrained."""

  def unbox(self, apply_constraint: bool = True):
    if jnp.ndim(self.value) != len(self.names):
      return self.value
    return super().unbox(apply_constraint)


def constrain(x: jnp.ndarray, names: Sequence[str | None]) -> jnp.ndarray:
  """Annotate an activation with logical axis names (a no-op without sharding rules)."""
  return nn.with_logical_constraint(x, tuple(names))


class Norm(nn.Module):
  """LayerNorm (Ba et al. 2016) or RMSNorm (Zhang & Sennrich 2019), per `cfg.norm`; "none" is the identity."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    if cfg.norm == "none":
      return x
    kw = dict(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.dtype(cfg.param_dtype),
              scale_init=param_init(cfg, ("embed",), "ones"))
    if cfg.norm == "rmsnorm":
      return nn.RMSNorm(**kw)(x)
    return nn.LayerNorm(bias_init=param_init(cfg, ("embed",), "zeros"), **kw)(x)


_ACTIVATIONS = {
    "relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "silu": jax.nn.silu,
    "swiglu": jax.nn.silu, "geglu": lambda x: jax.nn.gelu(x, approximate=True),
}


class MLP(nn.Module):
  """Position-wise feed-forward: wo(act(wi x)), or wo(act(wi_gate x) * wi x) when gated
  (SwiGLU/GEGLU, Shazeer 2020)."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    cfg = self.cfg
    dense = lambda feats, names, name: nn.DenseGeneral(  # noqa: E731
        feats, use_bias=cfg.mlp_bias, dtype=cfg.compute_dtype, param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=param_init(cfg, names), bias_init=param_init(cfg, names[1:], "zeros"), name=name)
    act = _ACTIVATIONS[cfg.activation]
    h = dense(cfg.mlp_dim, ("embed", "mlp"), "wi")(x)  # [B, T, F]
    if cfg.activation in ("swiglu", "geglu"):
      h = act(dense(cfg.mlp_dim, ("embed", "mlp"), "wi_gate")(x)) * h
    else:
      h = act(h)
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return dense(x.shape[-1], ("mlp", "embed"), "wo")(h)


class Embed(nn.Module):
  """Token embedding [V, D]; `attend` computes logits against it (tied output)."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = self.param("embedding", param_init(cfg, ("vocab", "embed"), "embedding"),
                                (cfg.vocab_size, cfg.d_model), jnp.dtype(cfg.param_dtype))

  def __call__(self, tokens):
    return jnp.take(self.embedding, tokens, axis=0).astype(self.cfg.compute_dtype)

  def attend(self, x):
    return jnp.einsum("btd,vd->btv", x, self.embedding.astype(x.dtype))
