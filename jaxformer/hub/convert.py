"""Weights: HF state-dict tensors <-> jaxformer `DecoderOnly` params, in both directions.

Each family is one table (`layout`) of `Entry`s: an HF tensor name, its shape, the
jaxformer param path(s) it holds, and the two reshapes between them. Loading and
export walk the same table, so one is the inverse of the other by construction.

HF layouts: torch `Linear` weights are [out, in]; GPT-2's `Conv1D` weights are
[in, out] with q, k, v fused as [D, 3D]; BLOOM fuses them as [3D, D] with rows
ordered (head, q/k/v, head_dim).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.hub.config import LLAMA_FAMILY, SUPPORTED
from jaxformer.models.transformer import DecoderOnly
from jaxformer.nn.config import TransformerConfig

log = logging.getLogger("jaxformer.hub")

# Where the LM-head classes (GPT2LMHeadModel, LlamaForCausalLM, ...) keep the base model;
# checkpoints of the base classes (GPT2Model, LlamaModel) have no prefix.
PREFIX = {"gpt2": "transformer.", "bloom": "transformer.", **{k: "model." for k in LLAMA_FAMILY}}
# Non-parameter buffers some checkpoints carry (causal masks, RoPE tables).
IGNORED = re.compile(r"(\.attn\.(masked_)?bias|rotary_emb\.inv_freq)$")

Path_ = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor and the jaxformer params it holds (three for a fused q/k/v projection)."""
  name: str
  shape: tuple[int, ...]
  paths: tuple[Path_, ...]
  to_jax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[..., np.ndarray]


def same(name: str, path: Path_, shape: tuple[int, ...]) -> Entry:
  return Entry(name, tuple(shape), (path,), lambda w: (w,), lambda p: p)


def reshaped(name: str, path: Path_, shape: tuple[int, ...]) -> Entry:
  """A bias [prod(shape)] <-> [*shape] (e.g. [N*H] <-> [N, H])."""
  return Entry(name, (math.prod(shape),), (path,), lambda w: (w.reshape(shape),), lambda p: p.reshape(-1))


def linear(name: str, path: Path_, kernel: tuple[int, ...], n_in: int = 1, conv1d: bool = False) -> Entry:
  """A torch Linear weight [out, in] (or GPT-2 Conv1D [in, out]) <-> a DenseGeneral kernel whose first
  `n_in` axes are the inputs, e.g. [D, N, H] (n_in=1) or [N, H, D] (n_in=2)."""
  d_in, d_out = math.prod(kernel[:n_in]), math.prod(kernel[n_in:])
  if conv1d:
    return Entry(name, (d_in, d_out), (path,), lambda w: (w.reshape(kernel),), lambda k: k.reshape(d_in, d_out))
  return Entry(name, (d_out, d_in), (path,), lambda w: (w.T.reshape(kernel),), lambda k: k.reshape(d_in, d_out).T)


def gpt2_qkv(name: str, paths: tuple[Path_, ...], D: int, N: int, H: int, bias: bool) -> Entry:
  """GPT-2 c_attn: Conv1D [D, 3D] (bias [3D]), columns ordered (q/k/v, head, head_dim)."""
  if bias:
    return Entry(name, (3 * N * H,), paths, lambda b: tuple(b.reshape(3, N, H)), lambda *p: np.stack(p).reshape(-1))
  return Entry(name, (D, 3 * N * H), paths, lambda w: tuple(np.moveaxis(w.reshape(D, 3, N, H), 1, 0)),
               lambda *p: np.stack(p, axis=1).reshape(D, -1))


def bloom_qkv(name: str, paths: tuple[Path_, ...], D: int, N: int, H: int, bias: bool) -> Entry:
  """BLOOM query_key_value: Linear [3D, D] (bias [3D]), rows ordered (head, q/k/v, head_dim)."""
  if bias:
    return Entry(name, (3 * N * H,), paths, lambda b: tuple(np.moveaxis(b.reshape(N, 3, H), 1, 0)),
                 lambda *p: np.stack(p, axis=1).reshape(-1))
  return Entry(name, (3 * N * H, D), paths,
               lambda w: tuple(np.transpose(w.reshape(N, 3, H, D), (1, 3, 0, 2))),  # -> 3 x [D, N, H]
               lambda *p: np.stack([np.transpose(k, (1, 2, 0)) for k in p], axis=1).reshape(-1, D))


def _norm(cfg: TransformerConfig, hf: str, path: Path_) -> list[Entry]:
  module = "RMSNorm_0" if cfg.norm == "rmsnorm" else "LayerNorm_0"
  out = [same(f"{hf}.weight", (*path, module, "scale"), (cfg.d_model,))]
  if cfg.norm == "layernorm":
    out.append(same(f"{hf}.bias", (*path, module, "bias"), (cfg.d_model,)))
  return out


def _head(cfg: TransformerConfig) -> list[Entry]:
  if cfg.tie_embeddings:
    return []
  return [linear("lm_head.weight", ("head", "DenseGeneral_0", "kernel"), (cfg.d_model, cfg.vocab_size))]


def gpt2_layout(cfg: TransformerConfig) -> list[Entry]:
  D, N, H, F = cfg.d_model, cfg.num_heads, cfg.dim_per_head, cfg.mlp_dim
  out = [same("wte.weight", ("embedder", "tokens", "embedding"), (cfg.vocab_size, D)),
         same("wpe.weight", ("embedder", "positions", "embedding"), (cfg.max_len, D))]
  for i in range(cfg.num_layers):
    h, p = f"h.{i}", ("decoder", f"layers_{i}")
    att = (*p, "self_attention")
    qkv = tuple((*att, n) for n in ("query", "key", "value"))
    out += [*_norm(cfg, f"{h}.ln_1", (*p, "self_attention_norm")),
            gpt2_qkv(f"{h}.attn.c_attn.weight", tuple((*x, "kernel") for x in qkv), D, N, H, bias=False),
            gpt2_qkv(f"{h}.attn.c_attn.bias", tuple((*x, "bias") for x in qkv), D, N, H, bias=True),
            linear(f"{h}.attn.c_proj.weight", (*att, "out", "kernel"), (N, H, D), n_in=2, conv1d=True),
            same(f"{h}.attn.c_proj.bias", (*att, "out", "bias"), (D,)),
            *_norm(cfg, f"{h}.ln_2", (*p, "mlp_norm")),
            linear(f"{h}.mlp.c_fc.weight", (*p, "mlp", "wi", "kernel"), (D, F), conv1d=True),
            same(f"{h}.mlp.c_fc.bias", (*p, "mlp", "wi", "bias"), (F,)),
            linear(f"{h}.mlp.c_proj.weight", (*p, "mlp", "wo", "kernel"), (F, D), conv1d=True),
            same(f"{h}.mlp.c_proj.bias", (*p, "mlp", "wo", "bias"), (D,))]
  return out + _norm(cfg, "ln_f", ("decoder", "final_norm")) + _head(cfg)


def bloom_layout(cfg: TransformerConfig) -> list[Entry]:
  D, N, H, F = cfg.d_model, cfg.num_heads, cfg.dim_per_head, cfg.mlp_dim
  out = [same("word_embeddings.weight", ("embedder", "tokens", "embedding"), (cfg.vocab_size, D)),
         *_norm(cfg, "word_embeddings_layernorm", ("embedder", "norm"))]
  for i in range(cfg.num_layers):
    h, p = f"h.{i}", ("decoder", f"layers_{i}")
    att = (*p, "self_attention")
    qkv = tuple((*att, n) for n in ("query", "key", "value"))
    out += [*_norm(cfg, f"{h}.input_layernorm", (*p, "self_attention_norm")),
            bloom_qkv(f"{h}.self_attention.query_key_value.weight", tuple((*x, "kernel") for x in qkv), D, N, H,
                      bias=False),
            bloom_qkv(f"{h}.self_attention.query_key_value.bias", tuple((*x, "bias") for x in qkv), D, N, H,
                      bias=True),
            linear(f"{h}.self_attention.dense.weight", (*att, "out", "kernel"), (N, H, D), n_in=2),
            same(f"{h}.self_attention.dense.bias", (*att, "out", "bias"), (D,)),
            *_norm(cfg, f"{h}.post_attention_layernorm", (*p, "mlp_norm")),
            linear(f"{h}.mlp.dense_h_to_4h.weight", (*p, "mlp", "wi", "kernel"), (D, F)),
            same(f"{h}.mlp.dense_h_to_4h.bias", (*p, "mlp", "wi", "bias"), (F,)),
            linear(f"{h}.mlp.dense_4h_to_h.weight", (*p, "mlp", "wo", "kernel"), (F, D)),
            same(f"{h}.mlp.dense_4h_to_h.bias", (*p, "mlp", "wo", "bias"), (D,))]
  return out + _norm(cfg, "ln_f", ("decoder", "final_norm")) + _head(cfg)


def llama_layout(cfg: TransformerConfig) -> list[Entry]:
  """Llama, Mistral and Qwen2 (the same tensors; Qwen2 adds q/k/v biases)."""
  D, N, K, H, F = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.mlp_dim
  out = [same("embed_tokens.weight", ("embedder", "tokens", "embedding"), (cfg.vocab_size, D))]
  for i in range(cfg.num_layers):
    h, p = f"layers.{i}", ("decoder", f"layers_{i}")
    att = (*p, "self_attention")
    out += _norm(cfg, f"{h}.input_layernorm", (*p, "self_attention_norm"))
    for proj, name, heads in (("q_proj", "query", N), ("k_proj", "key", K), ("v_proj", "value", K)):
      out.append(linear(f"{h}.self_attn.{proj}.weight", (*att, name, "kernel"), (D, heads, H)))
      if cfg.qkv_bias:
        out.append(reshaped(f"{h}.self_attn.{proj}.bias", (*att, name, "bias"), (heads, H)))
    out.append(linear(f"{h}.self_attn.o_proj.weight", (*att, "out", "kernel"), (N, H, D), n_in=2))
    if cfg.out_bias:
      out.append(same(f"{h}.self_attn.o_proj.bias", (*att, "out", "bias"), (D,)))
    out += _norm(cfg, f"{h}.post_attention_layernorm", (*p, "mlp_norm"))
    for proj, name, shape in (("gate_proj", "wi_gate", (D, F)), ("up_proj", "wi", (D, F)), ("down_proj", "wo", (F, D))):
      out.append(linear(f"{h}.mlp.{proj}.weight", (*p, "mlp", name, "kernel"), shape))
      if cfg.mlp_bias:
        out.append(same(f"{h}.mlp.{proj}.bias", (*p, "mlp", name, "bias"), shape[-1:]))
  return out + _norm(cfg, "norm", ("decoder", "final_norm")) + _head(cfg)


def layout(cfg: TransformerConfig, model_type: str) -> list[Entry]:
  if model_type not in SUPPORTED:
    raise ValueError(f"model_type {model_type!r} is not supported; jaxformer.hub handles {list(SUPPORTED)}")
  if model_type == "gpt2":
    return gpt2_layout(cfg)
  if model_type == "bloom":
    return bloom_layout(cfg)
  return llama_layout(cfg)


def param_shapes(cfg: TransformerConfig) -> dict[Path_, tuple[int, ...]]:
  """Every param path of `DecoderOnly(cfg)` and its shape, without allocating anything."""
  init = lambda: nn.unbox(DecoderOnly(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]  # noqa: E731
  leaves = jax.tree_util.tree_flatten_with_path(jax.eval_shape(init))[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in leaves}


def _check_layout(entries: list[Entry], cfg: TransformerConfig, model_type: str):
  """The table must cover exactly the params `DecoderOnly(cfg)` creates (a bug here, never the checkpoint's)."""
  ours = {p for e in entries for p in e.paths}
  want = param_shapes(cfg)
  if ours != set(want):
    raise RuntimeError(f"jaxformer.hub's {model_type} layout is out of date with DecoderOnly: params it does not "
                       f"fill {sorted(set(want) - ours)}, paths it fills that do not exist {sorted(ours - set(want))}")
  return want


def _nest(flat: Mapping[Path_, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _listing(names, limit: int = 10) -> str:
  names = sorted(names)
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def params_from_hf(tensors, cfg: TransformerConfig, model_type: str, *, strict: bool = True,
                   source: str = "the checkpoint") -> dict:
  """HF tensors -> `DecoderOnly(cfg)` params (a plain nested dict of jnp arrays in cfg.param_dtype).

  tensors: a mapping-like object with `keys()`, `shape(name)` and `get(name)` (see `jaxformer.hub.io`),
  or a plain dict of arrays. Names may carry the LM-head prefix (`transformer.` / `model.`) or not.
  Raises ValueError naming every missing tensor and every shape mismatch; unexpected tensors raise
  too (strict) or are logged (strict=False).
  """
  tensors = _as_reader(tensors)
  entries = layout(cfg, model_type)
  want = _check_layout(entries, cfg, model_type)
  available = set(tensors.keys())
  prefix = PREFIX[model_type] if any(n.startswith(PREFIX[model_type]) for n in available) else ""
  resolved, missing, wrong = {}, [], []
  for e in entries:
    name = e.name if e.name == "lm_head.weight" else prefix + e.name
    if name not in available:
      missing.append(name)
    elif tuple(tensors.shape(name)) != e.shape:
      wrong.append(f"{name}: expected {e.shape}, found {tuple(tensors.shape(name))}")
    else:
      resolved[e] = name
  if missing:
    raise ValueError(f"{source} lacks {len(missing)} tensor(s) a {model_type} model with this config.json needs: "
                     f"{_listing(missing)}")
  if wrong:
    raise ValueError(f"{source} has {len(wrong)} tensor(s) of the wrong shape for its config.json: {'; '.join(wrong)}")
  used = set(resolved.values())
  extra = {n for n in available - used if not IGNORED.search(n)}
  if cfg.tie_embeddings:
    extra.discard("lm_head.weight")  # some checkpoints store the tied copy too
  if extra and strict:
    raise ValueError(f"{source} has {len(extra)} tensor(s) a {model_type} DecoderOnly has no place for: "
                     f"{_listing(extra)}; pass strict=False to ignore them")
  if extra:
    log.warning("ignoring %d tensor(s) of %s that a %s DecoderOnly has no place for: %s", len(extra), source,
                model_type, _listing(extra))
  dtype = jnp.dtype(cfg.param_dtype)
  flat = {}
  for e, name in resolved.items():
    for path, value in zip(e.paths, e.to_jax(np.asarray(tensors.get(name))), strict=True):
      if value.shape != want[path]:
        raise RuntimeError(f"jaxformer.hub's {model_type} layout turned {name} into {value.shape}, not the "
                           f"{want[path]} of {'/'.join(path)}")
      flat[path] = jnp.asarray(value, dtype)
  return _nest(flat)


def params_to_hf(params, cfg: TransformerConfig, model_type: str) -> dict[str, np.ndarray]:
  """`DecoderOnly(cfg)` params -> the state dict of the HF LM-head model (prefixed names, contiguous numpy)."""
  params = nn.unbox(params)
  entries = layout(cfg, model_type)
  want = _check_layout(entries, cfg, model_type)
  prefix = PREFIX[model_type]
  out = {}
  for e in entries:
    parts = []
    for path in e.paths:
      node = params
      for key in path:
        node = node[key]
      if tuple(node.shape) != want[path]:
        raise ValueError(f"param {'/'.join(path)} has shape {tuple(node.shape)}; the config says {want[path]}")
      parts.append(np.asarray(node))
    name = e.name if e.name == "lm_head.weight" else prefix + e.name
    out[name] = np.ascontiguousarray(e.to_hf(*parts))
  return out


class _DictReader:
  def __init__(self, tensors: Mapping[str, np.ndarray]):
    self._tensors = tensors

  def keys(self):
    return self._tensors.keys()

  def shape(self, name):
    return tuple(np.shape(self._tensors[name]))

  def get(self, name):
    return np.asarray(self._tensors[name])


def _as_reader(tensors):
  return tensors if hasattr(tensors, "shape") and not isinstance(tensors, Mapping) else _DictReader(tensors)
