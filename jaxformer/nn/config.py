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
NORMS = ("layernorm", "rmsnorm", "none")  # none: no normalisation (e.g. the grokking model of Nanda et al.)
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu")
# model.attention.kind: "softmax" is exact attention through the kernel API (every backend); the rest are the
# variants of jaxformer/nn/variants.py. Kinds in SOFTMAX_KINDS are exact softmax attention under some mask or
# reparametrisation and run on the kernel API's backends too.
ATTENTION_KINDS = ("softmax", "local", "sinks", "differential", "sigmoid", "linear", "performer", "linformer",
                   "bigbird", "lsh", "synthesizer")
SOFTMAX_KINDS = ("softmax", "local", "sinks", "differential")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """`model.attention`: which attention mechanism the self-attention layers use, and its settings.

  Each setting names the kinds that read it; the others ignore it. Cross-attention (encoder-decoder)
  is always exact softmax attention.
  """
  kind: str = "softmax"
  window: int = 128  # local: keys within `window` positions each side (left only when causal)
  sink_window: int = 0  # sinks: 0 = all keys (off-by-one softmax); > 0 a sliding window (StreamingLLM-like)
  feature_map: str = "elu1"  # linear: "elu1" (Katharopoulos et al.) or "relu"
  num_features: int = 128  # performer: random features M
  redraw: bool = True  # performer, lsh: fresh random features / rotations every training step
  chunk_size: int = 64  # linear, performer (causal prefix-sum chunks), lsh (sorted chunk length)
  num_segments: int = 2  # linear: segment ids per row must lie in [0, num_segments) (2 = padding only)
  projection_len: int = 64  # linformer: keys/values projected from max_len to this many
  block_size: int = 32  # bigbird: block length
  num_global_blocks: int = 1  # bigbird
  num_window_blocks: int = 3  # bigbird (odd)
  num_random_blocks: int = 2  # bigbird
  num_hashes: int = 2  # lsh: hash rounds
  num_buckets: int = 8  # lsh (even)
  synthesizer: str = "dense"  # synthesizer: "dense" (logits from each token) or "random" (learned logits)
  seed: int = 0  # performer, lsh (evaluation features / rotations), bigbird (random blocks)

  def __post_init__(self):
    if self.kind not in ATTENTION_KINDS:
      raise ValueError(f"model.attention.kind={self.kind!r}; expected one of {ATTENTION_KINDS}")
    if self.feature_map not in ("elu1", "relu"):
      raise ValueError(f"model.attention.feature_map={self.feature_map!r}; expected 'elu1' or 'relu'")
    if self.synthesizer not in ("dense", "random"):
      raise ValueError(f"model.attention.synthesizer={self.synthesizer!r}; expected 'dense' or 'random'")
    positive = ("num_features", "chunk_size", "num_segments", "projection_len", "block_size", "num_hashes",
                "num_buckets", "num_window_blocks")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"model.attention.{name}={getattr(self, name)} must be >= 1")
    for name in ("window", "sink_window", "num_global_blocks", "num_random_blocks"):
      if getattr(self, name) < 0:
        raise ValueError(f"model.attention.{name}={getattr(self, name)} must be >= 0")
    if self.kind == "local" and self.window < 1:
      raise ValueError("model.attention.kind='local' needs model.attention.window >= 1")
    if self.num_buckets % 2 or self.num_window_blocks % 2 == 0:
      raise ValueError("model.attention.num_buckets must be even and num_window_blocks odd; got "
                       f"{self.num_buckets} and {self.num_window_blocks}")

  @classmethod
  def from_dict(cls, d) -> AttentionConfig:
    if isinstance(d, str):
      return cls(kind=d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model.attention key(s) {unknown}; valid keys: {sorted(names)}")
    return cls(**dict(d))


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
  attention: AttentionConfig = AttentionConfig()  # the mechanism (kind) of self-attention; a dict or kind also do
  dtype: str = "float32"  # compute dtype; "bfloat16" for mixed precision
  param_dtype: str = "float32"
  init_std: float | None = None  # None = variance scaling (fan-in); else normal(std)

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict) or isinstance(self.rope_scaling, list):
      items = self.rope_scaling.items() if isinstance(self.rope_scaling, dict) else self.rope_scaling
      frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items))
      object.__setattr__(self, "rope_scaling", frozen or None)
    if not isinstance(self.attention, AttentionConfig):
      object.__setattr__(self, "attention", AttentionConfig.from_dict(self.attention))
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
    kind = self.attention.kind
    if kind != "softmax" and self.attention_impl == "ring":
      raise ValueError(f"model.attention_impl='ring' is exact softmax attention; model.attention.kind={kind!r} "
                       "cannot use it (set model.attention.kind='softmax' or another attention_impl)")
    if self.attention_dropout_rate > 0 and kind not in SOFTMAX_KINDS:
      raise ValueError(f"model.attention_dropout_rate applies to the softmax kinds {SOFTMAX_KINDS}; "
                       f"set it to 0 for model.attention.kind={kind!r}")
    if self.position == "alibi" and kind not in SOFTMAX_KINDS + ("sigmoid",):
      raise ValueError(f"ALiBi is an attention-logit bias; model.attention.kind={kind!r} has no logits to bias "
                       "(use position='rope', 'learned' or 'sinusoidal')")
    if kind == "lsh" and self.kv_heads != self.num_heads:
      raise ValueError("model.attention.kind='lsh' shares queries and keys (Reformer), so it needs "
                       "model.num_kv_heads = model.num_heads")
    halves = 4 if self.position == "rope" else 2  # RoPE then rotates each half on its own
    if kind == "differential" and self.dim_per_head % halves:
      raise ValueError(f"model.attention.kind='differential' splits each head in two: needs a head dim divisible by "
                       f"{halves} (got {self.dim_per_head})")

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
    d = dict(d)
    if hasattr(d.get("attention"), "to_dict"):  # a ConfigDict section
      d["attention"] = d["attention"].to_dict()
    return cls(**d)

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
