"""`TransformerConfig`: every model hyper-parameter, in one frozen dataclass.

Modules take this one object (as Flax's `TransformerConfig` and Levanter's
`Gpt2Config` do). Run settings (optimizer, data, steps) live in the experiment
config, not here. The classmethods name the published architectures.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

POSITIONS = ("sinusoidal", "learned", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int = 256
  d_model: int = 512
  num_heads: int = 8
  num_kv_heads: int | None = None  # None = num_heads (MHA); 1 = MQA; in between = GQA
  head_dim: int | None = None  # None = d_model // num_heads
  mlp_dim: int = 2048
  num_layers: int = 6  # decoder layers (or encoder layers for EncoderClassifier)
  num_encoder_layers: int | None = None  # EncoderDecoder only; None = num_layers
  max_len: int = 2048  # for learned / sinusoidal tables
  position: str = "sinusoidal"
  rope_theta: float = 10000.0
  rope_fraction: float = 1.0  # rotate only the first fraction of each head (GPT-NeoX style)
  # RoPE frequency scaling, HF `rope_scaling` keys (e.g. {"rope_type": "llama3", "factor": 8.0, ...});
  # given as a dict, stored as a sorted tuple of (key, value) pairs so the config stays hashable.
  rope_scaling: Any = None
  norm: str = "layernorm"
  norm_eps: float = 1e-6
  pre_norm: bool = True  # False = post-LN, the original Transformer
  activation: str = "relu"
  qkv_bias: bool = True
  out_bias: bool = True
  mlp_bias: bool = True
  tie_embeddings: bool = True  # output projection = token embedding transposed
  scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (AIAYN 3.4)
  embedding_norm: bool = False  # LayerNorm right after the embedding (BLOOM)
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  pad_id: int | None = 0  # tokens equal to pad_id are masked out as keys; None = no padding
  num_classes: int = 2  # EncoderClassifier only
  pooling: str = "mean"  # EncoderClassifier: "mean" over non-pad tokens or "first" token
  attention_impl: str | None = None  # None = best backend for the platform; "ring" = jaxformer.parallel.ring
  dtype: str = "float32"  # compute dtype; "bfloat16" for mixed precision
  param_dtype: str = "float32"
  init_std: float | None = None  # None = variance scaling (fan-in); else normal(std)

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict) or isinstance(self.rope_scaling, list):
      items = self.rope_scaling.items() if isinstance(self.rope_scaling, dict) else self.rope_scaling
      frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items))
      object.__setattr__(self, "rope_scaling", frozen or None)
    def check(field, allowed):
      if getattr(self, field) not in allowed:
        raise ValueError(f"model.{field}={getattr(self, field)!r}; expected one of {allowed}")
    check("position", POSITIONS)
    check("norm", NORMS)
    check("activation", ACTIVATIONS)
    check("pooling", ("mean", "first"))
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f"model.d_model={self.d_model} is not divisible by model.num_heads="
                       f"{self.num_heads}; set model.head_dim explicitly")
    if self.num_heads % self.kv_heads:
      raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                       f"model.num_kv_heads={self.kv_heads}")
    if self.position == "rope" and int(self.dim_per_head * self.rope_fraction) % 2:
      raise ValueError("RoPE needs an even number of rotated dimensions per head")

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def encoder_layers(self) -> int:
    return self.num_layers if self.num_encoder_layers is None else self.num_encoder_layers

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kw) -> TransformerConfig:
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
    """Build from a (ConfigDict-like) mapping, naming any unknown key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**dict(d))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  # --- published architectures -------------------------------------------------------------
  @classmethod
  def aiayn_base(cls, **kw):
    """Vaswani et al. 2017, Table 3 "base": N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1."""
    return cls(**{**dict(d_model=512, num_heads=8, mlp_dim=2048, num_layers=6, dropout_rate=0.1,
                         position="sinusoidal", norm="layernorm", pre_norm=False, activation="relu",
                         tie_embeddings=True, scale_embeddings=True, norm_eps=1e-6), **kw})

  @classmethod
  def aiayn_big(cls, **kw):
    """Vaswani et al. 2017, Table 3 "big": d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
    return cls.aiayn_base(**{**dict(d_model=1024, num_heads=16, mlp_dim=4096, dropout_rate=0.3), **kw})

  @classmethod
  def gpt2(cls, **kw):
    """GPT-2 (Radford et al. 2019): learned positions, pre-LN, GELU(tanh), tied output."""
    return cls(**{**dict(vocab_size=50257, d_model=768, num_heads=12, mlp_dim=3072, num_layers=12,
                         max_len=1024, position="learned", norm="layernorm", norm_eps=1e-5,
                         pre_norm=True, activation="gelu_tanh", tie_embeddings=True,
                         dropout_rate=0.1, pad_id=None, init_std=0.02), **kw})

  @classmethod
  def bloom(cls, **kw):
    """BLOOM (BigScience 2022): ALiBi, LayerNorm after the embedding, GELU, tied output."""
    return cls(**{**dict(vocab_size=250880, d_model=1024, num_heads=16, mlp_dim=4096, num_layers=24,
                         position="alibi", norm="layernorm", norm_eps=1e-5, pre_norm=True,
                         activation="gelu_tanh", embedding_norm=True, tie_embeddings=True,
                         dropout_rate=0.0, pad_id=None, init_std=0.02), **kw})

  @classmethod
  def llama(cls, **kw):
    """Llama (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, no biases, untied output, GQA."""
    return cls(**{**dict(vocab_size=32000, d_model=4096, num_heads=32, num_kv_heads=8, mlp_dim=11008,
                         num_layers=32, max_len=4096, position="rope", rope_theta=10000.0,
                         norm="rmsnorm", norm_eps=1e-5, pre_norm=True, activation="swiglu",
                         qkv_bias=False, out_bias=False, mlp_bias=False, tie_embeddings=False,
                         dropout_rate=0.0, pad_id=None, init_std=0.02), **kw})
