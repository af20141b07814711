"""Hugging Face `config.json` <-> `TransformerConfig`, for GPT-2, BLOOM and the Llama family.

`config_from_hf` maps every hyper-parameter the forward pass depends on and refuses,
naming the key, any setting `DecoderOnly` cannot reproduce exactly (rather than
loading a model that silently computes something else). `config_to_hf` is its
inverse for export.
"""
from __future__ import annotations

from typing import Any

from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.positions import rope_frequencies

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
SUPPORTED = ("gpt2", "bloom", *LLAMA_FAMILY)

# HF activation names (transformers.activations.ACT2FN) -> jaxformer's
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                     "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
_GATED_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu"}
_REQUIRED = object()


def _get(hf: dict, *names: str, default: Any = _REQUIRED):
  """The first of `names` present in the HF config (some keys have legacy aliases)."""
  for name in names:
    if hf.get(name) is not None:
      return hf[name]
  if default is _REQUIRED:
    raise ValueError(f"{hf.get('model_type')} config.json has no {names[0]!r}")
  return default


def _unsupported(hf: dict, key: str, why: str, supported: Any):
  raise ValueError(f"{hf.get('model_type')} config key {key}={hf.get(key)!r} is not supported: {why}; "
                   f"jaxformer supports {key}={supported!r}")


def _expect(hf: dict, key: str, supported: Any, default: Any, why: str):
  if hf.get(key, default) != supported:
    _unsupported(hf, key, why, supported)


def config_from_hf(hf: dict, *, dtype: str = "float32", param_dtype: str = "float32") -> TransformerConfig:
  """An HF `config.json` dict -> the `TransformerConfig` of an equivalent `DecoderOnly`.

  Raises ValueError naming the key for anything jaxformer cannot reproduce, and for an
  unsupported `model_type`.
  """
  kind = hf.get("model_type")
  if kind not in SUPPORTED:
    raise ValueError(f"model_type {kind!r} is not supported; jaxformer.hub loads {list(SUPPORTED)}")
  common = dict(dropout_rate=0.0, attention_dropout_rate=0.0, pad_id=None, dtype=dtype, param_dtype=param_dtype,
                vocab_size=_get(hf, "vocab_size"))
  if kind == "gpt2":
    return _gpt2(hf, common)
  if kind == "bloom":
    return _bloom(hf, common)
  return _llama(hf, common)


def _gpt2(hf: dict, common: dict) -> TransformerConfig:
  _expect(hf, "scale_attn_weights", True, True, "jaxformer always scales scores by 1/sqrt(head_dim)")
  _expect(hf, "scale_attn_by_inverse_layer_idx", False, False, "no per-layer score scaling in jaxformer")
  _expect(hf, "reorder_and_upcast_attn", False, False, "jaxformer has no reordered attention")
  _expect(hf, "add_cross_attention", False, False, "DecoderOnly has no cross-attention")
  act = hf.get("activation_function", "gelu_new")
  if act not in _GPT2_ACTIVATIONS:
    _unsupported(hf, "activation_function", "no such activation in jaxformer", sorted(_GPT2_ACTIVATIONS))
  d_model = _get(hf, "n_embd", "hidden_size")
  return TransformerConfig(
      **common, d_model=d_model, num_heads=_get(hf, "n_head", "num_attention_heads"),
      num_layers=_get(hf, "n_layer", "num_hidden_layers"), mlp_dim=_get(hf, "n_inner", default=4 * d_model),
      max_len=_get(hf, "n_positions", "max_position_embeddings"), position="learned", norm="layernorm",
      norm_eps=hf.get("layer_norm_epsilon", 1e-5), pre_norm=True, activation=_GPT2_ACTIVATIONS[act],
      tie_embeddings=hf.get("tie_word_embeddings", True))


def _bloom(hf: dict, common: dict) -> TransformerConfig:
  _expect(hf, "apply_residual_connection_post_layernorm", False, False,
          "jaxformer's residual stream always carries the un-normalised input")
  d_model = _get(hf, "n_embed", "hidden_size")
  # BLOOM's GELU is the tanh approximation (bloom_gelu_forward); its MLP is always 4 * hidden_size.
  return TransformerConfig(
      **common, d_model=d_model, num_heads=_get(hf, "n_head", "num_attention_heads"),
      num_layers=_get(hf, "n_layer", "num_hidden_layers"), mlp_dim=4 * d_model, max_len=hf.get("seq_length", 2048),
      position="alibi", norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), pre_norm=True,
      activation="gelu_tanh", embedding_norm=True, tie_embeddings=hf.get("tie_word_embeddings", True))


def _check_no_window(hf: dict):
  window, max_len = hf.get("sliding_window"), hf.get("max_position_embeddings")
  if hf.get("model_type") == "qwen2" and not hf.get("use_sliding_window", False):
    return  # Qwen2 ignores sliding_window unless use_sliding_window is set
  if window is not None and (max_len is None or window < max_len):
    _unsupported(hf, "sliding_window", f"sliding-window attention is not in TransformerConfig (max_position_embeddings="
                 f"{max_len})", None)


def rope_from_hf(hf: dict) -> tuple[float, tuple | None]:
  """(rope_theta, rope_scaling) from either HF's legacy `rope_theta` + `rope_scaling` keys or
  transformers 5's `rope_parameters`; the scaling is checked against what `rope()` supports."""
  params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
  if any(isinstance(v, dict) for v in params.values()):
    _unsupported(hf, "rope_parameters", "per-layer-type RoPE is not in TransformerConfig", "one flat dict")
  theta = float(params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0)
  if params.pop("partial_rotary_factor", None) not in (None, 1.0) or hf.get("partial_rotary_factor") not in (None, 1.0):
    _unsupported(hf, "partial_rotary_factor", "this model family rotates whole heads", 1.0)
  kind = params.pop("rope_type", params.pop("type", "default"))
  if kind == "default":
    return theta, None
  params["rope_type"] = kind
  if kind in ("llama3", "yarn"):  # HF fills these in the same way (standardize_rope_params / yarn)
    params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
  if kind == "yarn" and params.get("factor") is None and hf.get("max_position_embeddings"):
    params["factor"] = hf["max_position_embeddings"] / params["original_max_position_embeddings"]
  try:
    rope_frequencies(2, theta, params)  # fail now, not in the first forward pass
  except (ValueError, NotImplementedError) as e:
    raise ValueError(f"{hf.get('model_type')} config key rope_scaling={params} is not supported: {e}") from None
  return theta, tuple(sorted(params.items()))


def _llama(hf: dict, common: dict) -> TransformerConfig:
  kind = hf["model_type"]
  act = hf.get("hidden_act", "silu")
  if act not in _GATED_ACTIVATIONS:
    _unsupported(hf, "hidden_act", "no such gated activation in jaxformer", sorted(_GATED_ACTIVATIONS))
  _check_no_window(hf)
  theta, scaling = rope_from_hf(hf)
  d_model, num_heads = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
  if kind == "qwen2":  # q/k/v always have biases, o_proj and the MLP never do
    qkv_bias, out_bias, mlp_bias = True, False, False
  else:
    qkv_bias = out_bias = hf.get("attention_bias", False)
    mlp_bias = hf.get("mlp_bias", False)
  return TransformerConfig(
      **common, d_model=d_model, num_heads=num_heads, num_kv_heads=hf.get("num_key_value_heads") or num_heads,
      head_dim=hf.get("head_dim") or d_model // num_heads, mlp_dim=_get(hf, "intermediate_size"),
      num_layers=_get(hf, "num_hidden_layers"), max_len=hf.get("max_position_embeddings", 2048), position="rope",
      rope_theta=theta, rope_scaling=scaling, norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), pre_norm=True,
      activation=_GATED_ACTIVATIONS[act], qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias,
      tie_embeddings=hf.get("tie_word_embeddings", False))


# --- export ----------------------------------------------------------------------------------


def guess_model_type(cfg: TransformerConfig) -> str:
  """The HF family a `TransformerConfig` looks like: ALiBi -> bloom, learned -> gpt2, RoPE -> llama/qwen2."""
  if cfg.position == "alibi":
    return "bloom"
  if cfg.position == "learned":
    return "gpt2"
  if cfg.position == "rope":
    return "qwen2" if cfg.qkv_bias and not cfg.out_bias else "llama"
  raise ValueError(f"no Hugging Face model family uses position={cfg.position!r}; expected learned, alibi or rope")


def _require(cfg: TransformerConfig, model_type: str, **wanted):
  bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
  if bad:
    raise ValueError(f"this TransformerConfig cannot be exported as an HF {model_type!r} model: {', '.join(bad)}")


def config_to_hf(cfg: TransformerConfig, model_type: str) -> dict:
  """`TransformerConfig` -> HF config.json dict; raises ValueError naming every field HF cannot express."""
  if model_type not in SUPPORTED:
    raise ValueError(f"model_type {model_type!r} is not supported; jaxformer.hub exports {list(SUPPORTED)}")
  _require(cfg, model_type, pre_norm=True, scale_embeddings=False)
  if cfg.attention.kind != "softmax":
    raise ValueError(f"model.attention.kind={cfg.attention.kind!r} cannot be exported as an HF {model_type!r} model: "
                     "HF runs exact softmax attention")
  out = {"model_type": model_type, "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
         "dtype": cfg.param_dtype}
  if model_type == "gpt2":
    _require(cfg, model_type, position="learned", norm="layernorm", embedding_norm=False, qkv_bias=True,
             out_bias=True, mlp_bias=True, kv_heads=cfg.num_heads, dim_per_head=cfg.d_model // cfg.num_heads)
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}.get(cfg.activation)
    _require(cfg, model_type, activation=cfg.activation if act else "gelu_tanh")
    return {**out, "architectures": ["GPT2LMHeadModel"], "n_embd": cfg.d_model, "n_head": cfg.num_heads,
            "n_layer": cfg.num_layers, "n_inner": cfg.mlp_dim, "n_positions": cfg.max_len,
            "layer_norm_epsilon": cfg.norm_eps, "activation_function": act, "resid_pdrop": cfg.dropout_rate,
            "embd_pdrop": cfg.dropout_rate, "attn_pdrop": cfg.attention_dropout_rate}
  if model_type == "bloom":
    _require(cfg, model_type, position="alibi", norm="layernorm", embedding_norm=True, activation="gelu_tanh",
             qkv_bias=True, out_bias=True, mlp_bias=True, mlp_dim=4 * cfg.d_model, kv_heads=cfg.num_heads,
             dim_per_head=cfg.d_model // cfg.num_heads)
    return {**out, "architectures": ["BloomForCausalLM"], "hidden_size": cfg.d_model, "n_head": cfg.num_heads,
            "n_layer": cfg.num_layers, "layer_norm_epsilon": cfg.norm_eps, "seq_length": cfg.max_len,
            "hidden_dropout": cfg.dropout_rate, "attention_dropout": cfg.attention_dropout_rate,
            "apply_residual_connection_post_layernorm": False}
  _require(cfg, model_type, position="rope", norm="rmsnorm", embedding_norm=False, rope_fraction=1.0)
  if cfg.activation not in ("swiglu", "geglu"):
    _require(cfg, model_type, activation="swiglu")
  if model_type == "qwen2":
    _require(cfg, model_type, qkv_bias=True, out_bias=False, mlp_bias=False)
  else:
    _require(cfg, model_type, out_bias=cfg.qkv_bias)  # one attention_bias flag for q, k, v and o
  arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
  out = {**out, "architectures": [arch], "hidden_size": cfg.d_model, "num_attention_heads": cfg.num_heads,
         "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head, "intermediate_size": cfg.mlp_dim,
         "num_hidden_layers": cfg.num_layers, "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
         "hidden_act": "silu" if cfg.activation == "swiglu" else "gelu_pytorch_tanh",
         "attention_dropout": cfg.attention_dropout_rate, "rope_theta": cfg.rope_theta,
         # the legacy key: transformers 4 reads it and transformers 5 converts it to rope_parameters
         "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None}
  if model_type == "llama":
    out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
  elif model_type == "mistral":
    _require(cfg, model_type, qkv_bias=False, mlp_bias=False)
    out.update(sliding_window=None)
  else:
    out.update(use_sliding_window=False, sliding_window=None)
  return out
