"""The attention mechanisms of `model.attention.kind`, as the self-attention layer calls them.

`MultiHeadAttention` projects q, k, v (and applies RoPE); `mix` turns them into the per-head outputs
[B, T, N, Hv] for one kind. The kinds:

  softmax       exact attention through `jaxformer.attention.attention` (every backend)
  local         softmax over a sliding window of `window` keys each side (left only when causal): the
                kernel's window mask, so the blockwise / Pallas / cuDNN backends skip the tiles outside it
  sinks         softmax with a learned per-head sink logit in the denominator ("off-by-one" softmax, as in
                gpt-oss / Miller 2023): out = Σ_j e^{s_j} v_j / (e^{sink} + Σ_j e^{s_j}) = out_softmax ·
                σ(lse − sink), so it runs on the kernel's backends; `window` > 0 makes it StreamingLLM-like
  differential  DIFF Transformer (Ye et al. 2024): (softmax(q1 k1ᵀ) − λ softmax(q2 k2ᵀ)) v, two kernel calls
  sigmoid       σ(q kᵀ·scale + b) v with b = −log(max_len) (Ramapuram et al. 2024)
  linear        Katharopoulos et al. 2020 (elu+1 features, causal prefix sums)
  performer     Choromanski et al. 2021, FAVOR+ (random features redrawn every training step)
  linformer     Wang et al. 2020: keys and values projected along the sequence to `projection_len` rows
  bigbird       Zaheer et al. 2020: global + window + random blocks
  lsh           Reformer (Kitaev et al. 2020): shared-QK attention within LSH buckets
  synthesizer   Tay et al. 2021: attention weights synthesised from each token ("dense") or learned ("random")

Decoding with a KV cache works for softmax, local, sinks, differential and sigmoid; the others raise.
Costs are in each function's docstring (jaxformer/attention/variants/).
"""
from __future__ import annotations

import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.attention import attention
from jaxformer.attention.variants import (
  bigbird_layout,
  block_sparse_attention,
  linear_attention,
  lsh_attention,
  lsh_rotations,
  performer_attention,
  random_features,
  sigmoid_attention,
)
from jaxformer.attention.variants.linear import _feature_map
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.layers import param_init

CACHE_KINDS = ("softmax", "local", "sinks", "differential", "sigmoid")
PROJECTIONS = {"synthesizer": ("value",), "lsh": ("query", "value")}  # kinds that skip some of q, k, v


def projections(kind: str) -> tuple[str, ...]:
  """Which of the query / key / value projections the kind uses."""
  return PROJECTIONS.get(kind, ("query", "key", "value"))


CAUSAL_MODELS = ("decoder_only", "encoder_decoder", "in_context_regression")
NO_PACKING = ("performer", "linformer", "synthesizer")  # cannot keep several sequences of one row apart


def check_kind(cfg: TransformerConfig, model_kind: str, batch: dict | None = None) -> None:
  """Before anything is built: a ValueError when the attention kind cannot serve this model or data. `batch` (host
  arrays) is an example batch: packed rows (segment ids above 1) need a kind that keeps sequences apart."""
  kind = cfg.attention.kind
  if kind == "linformer" and model_kind in CAUSAL_MODELS:
    raise ValueError(f"model.attention.kind='linformer' is bidirectional (its projection mixes every position); "
                     f"model_kind={model_kind!r} is causal: use it in encoders / encoder classifiers")
  packed = max((int(np.max(x)) for name, x in (batch or {}).items() if name.endswith("segment_ids")), default=0)
  if kind in NO_PACKING and packed > 1:
    raise ValueError(f"model.attention.kind={kind!r} cannot keep the packed sequences of a row apart (segment ids up "
                     f"to {packed}); use data without packing or another kind")
  if kind == "linear" and packed >= cfg.attention.num_segments:
    raise ValueError(f"packed rows hold segment ids up to {packed}: set model.attention.num_segments to at least "
                     f"{packed + 1} (linear attention keeps a state per segment id)")


def _segments(segment_ids):
  """The self-attention segment ids [B, T] (a (q, kv) pair from a cache is not used by the non-cache kinds)."""
  return segment_ids[0] if isinstance(segment_ids, (tuple, list)) else segment_ids


class Mixer(nn.Module):
  """Self-attention of kind `cfg.attention.kind` for projected q [B,T,N,H], k [B,S,K,H], v [B,S,K,Hv].

  `kw` holds the kernel API's mask arguments (causal, segment_ids, bias, q_offset, dropout...); `x` is the
  layer input [B,T,D] (the dense synthesizer reads it); `layer` the block's depth (0-based).
  """
  cfg: TransformerConfig
  layer: int = 0

  @nn.compact
  def __call__(self, q, k, v, x, *, kw: dict, deterministic: bool = True, cached: bool = False):
    cfg, a = self.cfg, self.cfg.attention
    kind, causal = a.kind, kw["causal"]
    if cached and kind not in CACHE_KINDS:
      raise ValueError(f"model.attention.kind={kind!r} cannot decode with a KV cache; kinds that can: {CACHE_KINDS}")
    if kind == "softmax":
      return attention(q, k, v, **kw)
    if kind == "local":
      return attention(q, k, v, window=(a.window, 0 if causal else a.window), **kw)
    if kind == "sinks":
      w = a.sink_window
      out, lse = attention(q, k, v, window=(w, 0 if causal else w) if w else None, return_lse=True, **kw)  # [B,N,T]
      sink = self.param("sink_logits", param_init(cfg, ("heads",), "zeros"), (q.shape[2],), self.param_dtype)
      keep = jax.nn.sigmoid(lse - sink[:, None])  # = Σ e^s / (e^sink + Σ e^s); 0 for rows that see nothing
      return (out * jnp.swapaxes(keep, 1, 2)[..., None]).astype(out.dtype)
    if kind == "differential":
      return self._differential(q, k, v, kw)
    segment_ids = _segments(kw["segment_ids"])
    if kind == "sigmoid":
      return sigmoid_attention(q, k, v, causal=causal, segment_ids=kw["segment_ids"], bias=kw["bias"],
                               q_offset=kw["q_offset"], sigmoid_bias=-math.log(cfg.max_len))
    if kind == "linear":
      return linear_attention(q, k, v, causal=causal, feature_map=a.feature_map, segment_ids=segment_ids,
                              num_segments=a.num_segments if segment_ids is not None else None,
                              chunk_size=a.chunk_size)
    if kind == "performer":
      features = random_features(self._key(deterministic), a.num_features, q.shape[-1])
      return performer_attention(q, k, v, features, causal=causal, chunk_size=a.chunk_size,
                                 kv_mask=None if segment_ids is None else segment_ids != 0)
    if kind == "linformer":
      return self._linformer(q, k, v, segment_ids, kw)
    if kind == "bigbird":
      T = q.shape[1]
      layout = bigbird_layout(-(-T // a.block_size), num_global=a.num_global_blocks,
                              num_window=a.num_window_blocks, num_random=a.num_random_blocks, causal=causal,
                              seed=a.seed + self.layer)
      return block_sparse_attention(q, k, v, layout, block_size=a.block_size, causal=causal,
                                    segment_ids=segment_ids)
    if kind == "lsh":  # shared-QK (Reformer 2.1): the keys are the unit-norm queries
      if segment_ids is not None:  # padding hashes to a fixed bucket, so its content never moves chunk edges
        q = jnp.where((segment_ids != 0)[:, :, None, None], q, 0)
      k = q / jnp.maximum(jnp.linalg.norm(q.astype(jnp.float32), axis=-1, keepdims=True), 1e-6).astype(q.dtype)
      rotations = lsh_rotations(self._key(deterministic), a.num_hashes, q.shape[-1], a.num_buckets)
      return lsh_attention(q, k, v, rotations, causal=causal, segment_ids=segment_ids, chunk_size=a.chunk_size)
    if kind == "synthesizer":
      return self._synthesizer(v, x, kw)
    raise AssertionError(kind)

  @property
  def param_dtype(self):
    return jnp.dtype(self.cfg.param_dtype)

  def _key(self, deterministic: bool):
    """Random features / rotations: fresh ones every training step (`redraw`, from the dropout stream, which
    differs per layer), a fixed draw per layer otherwise (evaluation, decoding)."""
    a = self.cfg.attention
    if a.redraw and not deterministic and self.has_rng("dropout"):
      return self.make_rng("dropout")
    return jax.random.fold_in(jax.random.key(a.seed), self.layer)

  def _differential(self, q, k, v, kw):
    """Ye et al. 2024, eq. 1-3: each head's q, k split into halves (q1, q2), (k1, k2) of H/2 dims (the paper's
    d), v kept whole (2d); λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init with λ_init = 0.8 − 0.6·exp(−0.3·(l − 1))
    for layer l = 1, 2, ...; the result is RMS-normalised per head and scaled by (1 − λ_init)."""
    h = q.shape[-1] // 2
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * self.layer)
    init = nn.initializers.normal(0.1)
    lq1, lk1, lq2, lk2 = (self.param(name, init, (h,), self.param_dtype).astype(jnp.float32)
                          for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"))
    lam = jnp.exp(jnp.dot(lq1, lk1)) - jnp.exp(jnp.dot(lq2, lk2)) + lam_init
    rngs = (None, None) if kw["dropout_rng"] is None else jax.random.split(kw["dropout_rng"])  # a mask per map
    a1 = attention(q[..., :h], k[..., :h], v, **dict(kw, scale=h ** -0.5, dropout_rng=rngs[0])).astype(jnp.float32)
    a2 = attention(q[..., h:], k[..., h:], v, **dict(kw, scale=h ** -0.5, dropout_rng=rngs[1])).astype(jnp.float32)
    out = a1 - lam * a2  # [B,T,N,Hv]
    out = out * jax.lax.rsqrt(jnp.mean(out * out, axis=-1, keepdims=True) + 1e-5)
    scale = self.param("subln_scale", param_init(self.cfg, ("kv",), "ones"), (v.shape[-1],), self.param_dtype)
    return (out * scale.astype(jnp.float32) * (1.0 - lam_init)).astype(q.dtype)

  def _linformer(self, q, k, v, segment_ids, kw):
    """Wang et al. 2020, eq. 7: softmax(q (E k)ᵀ·scale) (F v) with E, F [projection_len, max_len] learned per layer
    and shared by the heads ("headwise sharing"). Padding keys (segment 0) are zeroed before the projection;
    several packed segments in a row cannot be kept apart. Bidirectional only: E k mixes future keys."""
    cfg, a = self.cfg, self.cfg.attention
    S = k.shape[1]
    if kw["causal"]:
      raise ValueError("model.attention.kind='linformer' is bidirectional (its projection mixes every position): "
                       "use it in encoders / encoder classifiers")
    if S > cfg.max_len:
      raise ValueError(f"linformer projects at most model.max_len={cfg.max_len} keys; got {S}")
    init = nn.initializers.normal(cfg.max_len ** -0.5)
    E = self.param("key_projection", init, (a.projection_len, cfg.max_len), self.param_dtype)[:, :S]
    F = self.param("value_projection", init, (a.projection_len, cfg.max_len), self.param_dtype)[:, :S]
    if segment_ids is not None:
      keep = (segment_ids != 0)[:, :, None, None]
      k, v = jnp.where(keep, k, 0), jnp.where(keep, v, 0)
    k = jnp.einsum("ps,bskh->bpkh", E.astype(jnp.float32), k.astype(jnp.float32)).astype(q.dtype)  # [B,P,K,H]
    v = jnp.einsum("ps,bskh->bpkh", F.astype(jnp.float32), v.astype(jnp.float32)).astype(q.dtype)
    kw = {name: value for name, value in kw.items() if name not in ("causal", "segment_ids", "q_offset")}
    return attention(q, k, v, **kw)

  def _synthesizer(self, v, x, kw):
    """Tay et al. 2021, eq. 1-3: the logits do not come from q·k. "dense": B_i = W2 relu(W1 x_i) [N, max_len] per
    token; "random": a learned [N, max_len, max_len] matrix. The masks (causal, segments) and softmax are the
    kernel's (zero-width q and k, the logits as its bias)."""
    cfg, a = self.cfg, self.cfg.attention
    B, T = x.shape[:2]
    S, N = v.shape[1], cfg.num_heads
    if max(T, S) > cfg.max_len:
      raise ValueError(f"the synthesizer's logits cover model.max_len={cfg.max_len} positions; got {max(T, S)}")
    if a.synthesizer == "dense":
      h = nn.relu(nn.Dense(cfg.d_model, dtype=cfg.compute_dtype, param_dtype=self.param_dtype, name="synth_hidden",
                           kernel_init=param_init(cfg, ("embed", "mlp")))(x))
      logits = nn.DenseGeneral((N, cfg.max_len), dtype=cfg.compute_dtype, param_dtype=self.param_dtype,
                               name="synth_logits", kernel_init=param_init(cfg, ("mlp", "heads", None)))(h)[..., :S]
      logits = jnp.swapaxes(logits, 1, 2)  # [B,N,T,S]
    else:
      table = self.param("synth_random", param_init(cfg, ("heads", None, None)), (N, cfg.max_len, cfg.max_len),
                         self.param_dtype)
      logits = table[None, :, :T, :S]
    zeros = lambda n, length: jnp.zeros((B, length, n, 1), v.dtype)  # noqa: E731
    bias = logits.astype(jnp.float32) + (0.0 if kw["bias"] is None else kw["bias"])
    return attention(zeros(N, T), zeros(v.shape[2], S), v, **dict(kw, bias=bias, scale=1.0))


STATS_KINDS = ("softmax", "local", "sinks")  # kinds whose weights are one softmax over the tokens
MAP_KINDS = STATS_KINDS + ("linear",)
MAX_ROWS = 256  # query rows sampled for the statistics of longer sequences
MAX_MAP_LEN = 256  # attention maps only for inputs up to this long


def diagnose(module: nn.Module, cfg: TransformerConfig, q, k, kw: dict) -> None:
  """Sow this layer's attention diagnostics, when the caller asked for them by making the collection mutable:

    "attention_stats": per-head means [N] over the batch and the non-padding query rows of the entropy, largest
      logit, largest weight and first-token ("sink") mass of each row's attention (`attention_stats`, blockwise,
      never the [T, S] matrix; rows sampled evenly down to MAX_ROWS for long inputs);
    "attention_maps": the weights [B, N, T, S] for inputs up to MAX_MAP_LEN tokens.

  Kinds without one softmax over the tokens are skipped (logged once): stats for STATS_KINDS (for "sinks", the
  softmax over the tokens, without the sink), maps for MAP_KINDS (for "linear", its normalised weights
  phi(q)·phi(k) / Σ).
  """
  from jaxformer.attention.diagnostics import attention_probs, attention_stats, summarize
  kind = cfg.attention.kind
  window = None
  w = cfg.attention.window if kind == "local" else cfg.attention.sink_window if kind == "sinks" else 0
  if w:
    window = (w, 0 if kw["causal"] else w)
  mask = dict(causal=kw["causal"], segment_ids=kw["segment_ids"], window=window, bias=kw["bias"],
              q_offset=kw["q_offset"])
  segments = _segments(kw["segment_ids"])
  T = q.shape[1]
  if module.is_mutable_collection("attention_stats"):
    if kind in STATS_KINDS:
      stats = attention_stats(q, k, rows=None if T <= MAX_ROWS else MAX_ROWS, **mask)
      module.sow("attention_stats", "heads", summarize(stats, segment_ids=segments))
    else:
      _log_skip("statistics", kind)
  if module.is_mutable_collection("attention_maps") and T <= MAX_MAP_LEN:
    if kind in STATS_KINDS:
      module.sow("attention_maps", "weights", attention_probs(q, k, **mask))
    elif kind == "linear":
      module.sow("attention_maps", "weights", _linear_weights(cfg, q, k, kw["causal"], segments))
    else:
      _log_skip("maps", kind)


def _linear_weights(cfg, q, k, causal, segment_ids):
  """Linear attention's implied weights A_ij = phi(q_i)·phi(k_j) / Σ_j' phi(q_i)·phi(k_j') [B,N,T,S]."""
  phi = _feature_map(cfg.attention.feature_map)
  G = q.shape[2] // k.shape[2]
  a = jnp.einsum("btnh,bsnh->bnts", phi(q.astype(jnp.float32)), jnp.repeat(phi(k.astype(jnp.float32)), G, axis=2))
  T, S = a.shape[-2:]
  if causal:
    a = jnp.where(jnp.tril(jnp.ones((T, S), bool)), a, 0.0)
  if segment_ids is not None:
    a = jnp.where(segment_ids[:, None, :, None] == segment_ids[:, None, None, :], a, 0.0)
  return jax.lax.stop_gradient(a / jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), 1e-6))


@functools.cache
def _log_skip(what: str, kind: str) -> None:
  logging.getLogger("jaxformer.nn").warning(
      "attention diagnostics: no %s for model.attention.kind=%r (it has no single softmax over the tokens)", what, kind)
