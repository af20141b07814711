"""Model FLOPs for MFU (model FLOPs utilization): an analytic count, independent of how XLA runs the model.

Convention (PaLM, Chowdhery et al. 2022, appendix B; Chinchilla, Hoffmann et al. 2022, appendix F;
Kaplan et al. 2020, section 2.1):
- A matmul with an [m, n] weight costs 2·m·n FLOPs per token forward (a multiply and an add).
  The matmul parameters N_mm are every Dense kernel (attention q/k/v/out, MLP wi/wi_gate/wo) plus
  the output projection D·V, counted once whether it is tied to the token embedding or not.
  Not counted: the embedding lookups (token and learned positions: a gather, no FLOPs), biases,
  norms, activations, softmax, RoPE/ALiBi and the loss (elementwise, O(D) per token).
- Attention scores q·kᵀ and the weighted sum p·v cost 2·2·d_attn FLOPs per visible (query, key) pair
  forward, d_attn = num_heads · head_dim (query heads; GQA shares keys/values but every query head
  still scores every key, so it saves projection FLOPs only).
- Training = forward + backward = 3 × forward (the backward computes gradients for both the
  activations and the weights: 2 × forward). So per token, with full attention over T keys,
      6·N_mm + 12·L·T·d_attn,
  which is PaLM's 6N + 12·L·H·Q·T.
- Unlike PaLM, a causal layer counts only the visible pairs: T(T+1)/2 of T² (the fraction is
  `visible_fraction`, exact, also for a sliding window), as FlashAttention's benchmarks do. Pass
  `causal=False` for PaLM's count, which is also what a dense kernel (and XLA's cost analysis)
  computes.
"""
from __future__ import annotations

import numpy as np

from jaxformer.nn.config import TransformerConfig

TRAINING_MULTIPLIER = 3  # forward + backward (2x forward)
MODEL_KINDS = ("decoder_only", "encoder_decoder", "encoder_classifier")


def visible_fraction(seq_len: int, causal: bool, window: tuple[int | None, int | None] | None = None) -> float:
  """Exact number of visible (query, key) pairs of self-attention over T² (T = seq_len).

  Same rule as `jaxformer.attention.MaskSpec`: key j is visible from query i iff j <= i (causal) and
  i - left <= j <= i + right for window=(left, right) (None = unbounded on that side). Causal:
  T(T+1)/2 pairs, a fraction (T+1)/(2T).
  """
  if window is not None and not isinstance(window, (tuple, list)):
    raise ValueError(f"window must be a (left, right) pair as in jaxformer.attention, got {window!r}")
  T = seq_len
  i = np.arange(T, dtype=np.int64)
  lo = np.zeros(T, np.int64)
  hi = np.full(T, T - 1, np.int64)
  if causal:
    hi = np.minimum(hi, i)
  if window is not None:
    left, right = window
    if left is not None:
      lo = np.maximum(lo, i - left)
    if right is not None:
      hi = np.minimum(hi, i + right)
  return float(np.maximum(hi - lo + 1, 0).sum()) / (T * T)


def _attention_params(cfg: TransformerConfig) -> tuple[int, int]:
  """(q + out, k + v) kernel sizes of one attention layer: q and out act on the queries' tokens,
  k and v on the context's (the same tokens in self-attention, the source in cross-attention)."""
  D, N, K, H = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
  return 2 * D * N * H, 2 * D * K * H


def _mlp_params(cfg: TransformerConfig) -> int:
  return (3 if cfg.activation in ("swiglu", "geglu") else 2) * cfg.d_model * cfg.mlp_dim  # wi (+ wi_gate), wo


def matmul_params(cfg: TransformerConfig, model_kind: str) -> int:
  """N_mm: the parameters that take part in a matmul (every Dense kernel, plus the D·V output projection
  once, tied or not). Excludes embeddings used as lookups, biases and norm scales."""
  q_out, kv = _attention_params(cfg)
  layer = q_out + kv + _mlp_params(cfg)
  if model_kind == "decoder_only":
    return cfg.num_layers * layer + cfg.d_model * cfg.vocab_size
  if model_kind == "encoder_decoder":
    return cfg.encoder_layers * layer + cfg.num_layers * (layer + q_out + kv) + cfg.d_model * cfg.vocab_size
  if model_kind == "encoder_classifier":
    return cfg.num_layers * layer + cfg.d_model * cfg.num_classes
  raise ValueError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")


def model_flops(cfg: TransformerConfig, model_kind: str, seq_len: int, *, causal: bool,
                window: tuple[int | None, int | None] | None = None, training: bool = True,
                src_len: int | None = None) -> float:
  """Model FLOPs of one example (sequence), forward, or forward + backward if `training`.

  seq_len: the tokens of the example (decoder_only, encoder_classifier) or of the target
  (encoder_decoder, whose source has `src_len` tokens, default seq_len).
  causal: count only the visible (query, key) pairs of causal self-attention layers (the decoder's);
  False counts all T² pairs (PaLM's convention; what dense kernels compute). Encoder layers and
  cross-attention are bidirectional either way. window: a (left, right) window of the self-attention
  layers, as in `jaxformer.attention`. Padding is not subtracted: every position counts.
  """
  T = seq_len
  S = T if src_len is None else src_len
  q_out, kv = _attention_params(cfg)
  mlp = _mlp_params(cfg)
  d_attn = cfg.num_heads * cfg.dim_per_head
  head = cfg.d_model * cfg.vocab_size

  def self_attention_layer(n, is_causal):  # per-layer FLOPs over n tokens: projections, MLP, scores + p·v
    pairs = n * n * visible_fraction(n, is_causal, window)
    return 2 * (q_out + kv + mlp) * n + 4 * d_attn * pairs

  if model_kind == "decoder_only":
    fwd = cfg.num_layers * self_attention_layer(T, causal) + 2 * head * T
  elif model_kind == "encoder_classifier":
    fwd = cfg.num_layers * self_attention_layer(T, False) + 2 * cfg.d_model * cfg.num_classes  # head: once
  elif model_kind == "encoder_decoder":
    cross = 2 * q_out * T + 2 * kv * S + 4 * d_attn * T * S
    fwd = (cfg.encoder_layers * self_attention_layer(S, False)
           + cfg.num_layers * (self_attention_layer(T, causal) + cross) + 2 * head * T)
  else:
    raise ValueError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")
  return float(fwd) * (TRAINING_MULTIPLIER if training else 1)


def model_flops_per_token(cfg: TransformerConfig, model_kind: str, seq_len: int, *, causal: bool,
                          window: tuple[int | None, int | None] | None = None, training: bool = True,
                          src_len: int | None = None) -> float:
  """`model_flops` / seq_len: per token (per target token for encoder_decoder, whose source tokens
  are then a cost of each target token). For decoder_only with full attention this is
  6·N_mm + 12·L·T·d_attn (training) or 2·N_mm + 4·L·T·d_attn (forward)."""
  return model_flops(cfg, model_kind, seq_len, causal=causal, window=window, training=training,
                     src_len=src_len) / seq_len


# Dense (no 2:4 sparsity) peak FLOP/s per chip, by compute dtype. float32 is what JAX runs by default:
# TF32 tensor cores on NVIDIA Ampere and later (jax_default_matmul_precision unset); one bf16 pass on TPU.
# Sources: NVIDIA H100 datasheet (SXM: BF16 989.4, TF32 494.7 TFLOP/s dense; PCIe: 756 / 378); H200 datasheet
# (SXM same silicon and clocks as H100 SXM: 989 / 494; NVL: 835 / 418); A100 datasheet (BF16 312, TF32 156);
# Cloud TPU system-architecture pages (bf16 per chip: v4 275, v5e 197, v5p 459, v6e 918 TFLOP/s).
_PEAK = (  # (substring of the lower-cased device_kind, {dtype: FLOP/s}); first match wins
    ("h200 nvl", {"bfloat16": 835e12, "float16": 835e12, "float32": 418e12}),
    ("h200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("h100 pcie", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("h100", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("a100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("v6 lite", {"bfloat16": 918e12, "float32": 918e12}),
    ("v6e", {"bfloat16": 918e12, "float32": 918e12}),
    ("v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("v5", {"bfloat16": 459e12, "float32": 459e12}),  # v5p reports "TPU v5"
    ("v4", {"bfloat16": 275e12, "float32": 275e12}),
)


def peak_flops(device, dtype) -> float | None:
  """Dense peak FLOP/s of one `device` (a jax Device or its device_kind string) for matmuls in `dtype`;
  None when unknown (any CPU: measure it instead). float32 assumes JAX's default matmul precision
  (TF32 on NVIDIA, bf16 passes on TPU); with precision "highest" NVIDIA's fp32 peak is far lower
  (67 TFLOP/s on H100/H200 SXM, 19.5 on A100)."""
  kind = (device if isinstance(device, str) else getattr(device, "device_kind", "")).lower()
  if getattr(device, "platform", None) == "cpu" or "cpu" in kind:
    return None
  name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
  for key, table in _PEAK:
    if key in kind:
      return table.get(name)
  return None
