"""The three model families, all built from `jaxformer.nn`.

- `DecoderOnly`: GPT-2 / BLOOM / Llama-style language models (pick the style with
  `TransformerConfig.gpt2()` / `.bloom()` / `.llama()` or set the fields directly).
- `EncoderDecoder`: the Transformer of "Attention Is All You Need" (Vaswani et al. 2017),
  with one embedding shared by source, target and output (section 3.4).
- `EncoderClassifier`: a bidirectional encoder with a pooled classification head
  (BERT / Long Range Arena style).
- `DualEncoderClassifier`: one encoder reads each of two documents alone; an MLP classifies
  the pair (Long Range Arena's Retrieval task).

Padding: when `segment_ids` is not given and `cfg.pad_id` is set, tokens equal
to `pad_id` form segment 0 and real tokens segment 1, so no real token attends
to padding. Packed batches pass their own `segment_ids` (0 = padding) and `positions`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxformer.nn.blocks import Stack
from jaxformer.nn.cache import KVCache
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.layers import Embed, Norm, constrain, param_init
from jaxformer.nn.positions import LearnedPositions, sinusoidal


def default_segments(cfg: TransformerConfig, tokens, segment_ids):
  if segment_ids is not None or cfg.pad_id is None:
    return segment_ids
  return (tokens != cfg.pad_id).astype(jnp.int32)


def padding_inputs(attention_mask) -> tuple[jnp.ndarray, jnp.ndarray]:
  """An HF-style attention_mask [B, T] (1 real, 0 padding; left or right) -> (positions, segment_ids)
  with HF generate's positions: cumsum(mask) - 1 for real tokens, 1 at padding (which is masked anyway)."""
  mask = jnp.asarray(attention_mask, jnp.int32)
  return jnp.where(mask == 0, 1, jnp.cumsum(mask, axis=-1) - 1), mask


def default_positions(tokens, positions, cache=None):
  """0, 1, 2, ... per row; with a cache, continuing from the slots already written."""
  if positions is not None:
    return positions
  start = 0 if cache is None else cache.index
  return jnp.broadcast_to(start + jnp.arange(tokens.shape[1]), tokens.shape)


class Embedder(nn.Module):
  """Token embedding (+ absolute positions, + embedding norm) and dropout."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.tokens = Embed(cfg)
    if cfg.position == "learned":
      self.positions = LearnedPositions(cfg.max_len, cfg.d_model, cfg.init_std or 0.02, cfg.param_dtype)
    if cfg.embedding_norm:
      self.norm = Norm(cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, tokens, positions, deterministic: bool = True):
    cfg = self.cfg
    x = self.tokens(tokens)  # [B, T, D]
    if cfg.scale_embeddings:
      x = x * jnp.sqrt(cfg.d_model).astype(x.dtype)
    if cfg.position == "sinusoidal":
      x = x + sinusoidal(positions, cfg.d_model).astype(x.dtype)
    elif cfg.position == "learned":
      x = x + self.positions(positions).astype(x.dtype)
    if cfg.embedding_norm:
      x = self.norm(x)
    x = self.dropout(x, deterministic=deterministic)
    return constrain(x, ("batch", "length", "embed"))

  def logits(self, x):
    """Output projection: tied to the token embedding; fp32 logits [B, T, V]."""
    return self.tokens.attend(x).astype(jnp.float32)


class OutputHead(nn.Module):
  """Untied output projection [D, V]."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    return nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                           param_dtype=jnp.dtype(cfg.param_dtype),
                           kernel_init=param_init(cfg, ("embed", "vocab")))(x).astype(jnp.float32)


class DecoderOnly(nn.Module):
  """Causal language model: tokens [B, T] -> logits [B, T, V] (float32)."""
  cfg: TransformerConfig

  def setup(self):
    self.embedder = Embedder(self.cfg)
    self.decoder = Stack(self.cfg, self.cfg.num_layers, causal=True)
    if not self.cfg.tie_embeddings:
      self.head = OutputHead(self.cfg)

  def __call__(self, tokens, *, positions=None, segment_ids=None, deterministic: bool = True,
               cache: KVCache | None = None):
    """With a `cache` (see `jaxformer.nn.cache`), the tokens continue the cached ones and the call
    returns (logits, cache); positions then default to the cache slots they occupy."""
    positions = default_positions(tokens, positions, cache)
    segment_ids = default_segments(self.cfg, tokens, segment_ids)
    x = self.embedder(tokens, positions, deterministic)
    if cache is not None:
      cache = cache.write(positions, jnp.ones(tokens.shape, jnp.int32) if segment_ids is None else segment_ids)
      x, cache = self.decoder(x, positions=positions, segment_ids=segment_ids, deterministic=deterministic,
                              cache=cache)
      cache = cache.replace(index=cache.index + tokens.shape[1])
    else:
      x = self.decoder(x, positions=positions, segment_ids=segment_ids, deterministic=deterministic)
    logits = constrain(self.embedder.logits(x) if self.cfg.tie_embeddings else self.head(x),
                       ("batch", "length", "vocab"))
    return logits if cache is None else (logits, cache)


class EncoderDecoder(nn.Module):
  """Vaswani et al. 2017: source [B, S] and shifted target [B, T] -> logits [B, T, V]."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.embedder = Embedder(cfg)  # shared by encoder, decoder and output (section 3.4)
    self.encoder = Stack(cfg, cfg.encoder_layers)
    self.decoder = Stack(cfg, cfg.num_layers, causal=True, cross=True)
    if not cfg.tie_embeddings:
      self.head = OutputHead(cfg)

  def encode(self, inputs, *, positions=None, segment_ids=None, deterministic: bool = True):
    positions = default_positions(inputs, positions)
    segment_ids = default_segments(self.cfg, inputs, segment_ids)
    x = self.embedder(inputs, positions, deterministic)
    return self.encoder(x, positions=positions, segment_ids=segment_ids, deterministic=deterministic)

  def decode(self, encoded, inputs, decoder_inputs, *, positions=None, segment_ids=None,
             encoder_segment_ids=None, deterministic: bool = True, cache: KVCache | None = None):
    """`inputs` (the source tokens) only supply the encoder padding mask.

    With a `cache`, decoder_inputs continue the cached tokens and the call returns (logits, cache).
    The first such call projects the cross-attention keys/values from `encoded` into the cache;
    later calls may pass `encoded=None, inputs=None`.
    """
    positions = default_positions(decoder_inputs, positions, cache)
    segment_ids = default_segments(self.cfg, decoder_inputs, segment_ids)
    if cache is not None and cache.encoder_segment_ids is not None:
      encoder_segment_ids = cache.encoder_segment_ids
    else:
      encoder_segment_ids = default_segments(self.cfg, inputs, encoder_segment_ids)
    cross = None
    if encoder_segment_ids is not None:
      cross = (segment_ids if segment_ids is not None else jnp.ones(decoder_inputs.shape, jnp.int32),
               encoder_segment_ids)
    y = self.embedder(decoder_inputs, positions, deterministic)
    kw = dict(positions=positions, segment_ids=segment_ids, cross_segment_ids=cross, deterministic=deterministic)
    if cache is not None:
      if cache.encoder_segment_ids is None:
        cache = cache.replace(encoder_segment_ids=jnp.ones(encoded.shape[:2], jnp.int32)
                              if encoder_segment_ids is None else encoder_segment_ids)
      cache = cache.write(positions, jnp.ones(decoder_inputs.shape, jnp.int32) if segment_ids is None else segment_ids)
      y, cache = self.decoder(y, encoded, cache=cache, **kw)
      cache = cache.replace(index=cache.index + decoder_inputs.shape[1])
    else:
      y = self.decoder(y, encoded, **kw)
    logits = constrain(self.embedder.logits(y) if self.cfg.tie_embeddings else self.head(y),
                       ("batch", "length", "vocab"))
    return logits if cache is None else (logits, cache)

  def __call__(self, inputs, decoder_inputs, *, inputs_positions=None, inputs_segment_ids=None,
               decoder_positions=None, decoder_segment_ids=None, deterministic: bool = True):
    encoded = self.encode(inputs, positions=inputs_positions, segment_ids=inputs_segment_ids,
                          deterministic=deterministic)
    return self.decode(encoded, inputs, decoder_inputs, positions=decoder_positions,
                       segment_ids=decoder_segment_ids, encoder_segment_ids=inputs_segment_ids,
                       deterministic=deterministic)


def encode_pooled(cfg: TransformerConfig, embedder: Embedder, encoder: Stack, tokens, positions, segment_ids,
                  deterministic: bool):
  """tokens [B, T] -> one vector per row [B, D]: the encoder's output at the first token (`pooling="first"`) or
  averaged over the real (non-padding) tokens ("mean")."""
  positions = default_positions(tokens, positions)
  segment_ids = default_segments(cfg, tokens, segment_ids)
  x = embedder(tokens, positions, deterministic)
  x = encoder(x, positions=positions, segment_ids=segment_ids, deterministic=deterministic)  # [B, T, D]
  if cfg.pooling == "first":
    return x[:, 0]
  keep = (segment_ids > 0 if segment_ids is not None else jnp.ones(tokens.shape, bool))[..., None]
  return jnp.sum(jnp.where(keep, x, 0), axis=1) / jnp.maximum(jnp.sum(keep, axis=1), 1)


def _dense(cfg: TransformerConfig, features: int, axes: tuple, name: str):
  return nn.DenseGeneral(features, dtype=cfg.compute_dtype, param_dtype=jnp.dtype(cfg.param_dtype),
                         kernel_init=param_init(cfg, axes), bias_init=param_init(cfg, axes[-1:], "zeros"), name=name)


class EncoderClassifier(nn.Module):
  """Bidirectional encoder + pooling + linear head: tokens [B, T] -> logits [B, num_classes]."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, *, positions=None, segment_ids=None, deterministic: bool = True):
    cfg = self.cfg
    pooled = encode_pooled(cfg, Embedder(cfg, name="embedder"), Stack(cfg, cfg.num_layers, name="encoder"), tokens,
                           positions, segment_ids, deterministic)
    return _dense(cfg, cfg.num_classes, ("embed", "classes"), "head")(pooled).astype(jnp.float32)


class DualEncoderClassifier(nn.Module):
  """Long Range Arena's Retrieval model (Tay et al. 2021, section 2.3): two documents [B, T1], [B, T2] ->
  logits [B, num_classes]. One encoder (the same weights) reads each document alone, so nothing attends across
  the pair; the pooled u, v [B, D] are combined as [u, v, u*v, u-v] and classified by the release's MLP
  (`classifier_head_dual`: Dense(mlp_dim), ReLU, Dense(mlp_dim / 2), ReLU, Dense(num_classes))."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    self.embedder = Embedder(cfg)
    self.encoder = Stack(cfg, cfg.num_layers)
    self.mlp = _dense(cfg, cfg.mlp_dim, (None, "mlp"), "mlp")
    self.mlp2 = _dense(cfg, cfg.mlp_dim // 2, ("mlp", None), "mlp2")
    self.head = _dense(cfg, cfg.num_classes, (None, "classes"), "head")

  def encode(self, tokens, *, positions=None, segment_ids=None, deterministic: bool = True):
    """One document per row [B, T] -> its pooled encoding [B, D]."""
    return encode_pooled(self.cfg, self.embedder, self.encoder, tokens, positions, segment_ids, deterministic)

  def classify(self, u, v):
    """The pooled encodings of the two documents [B, D] each -> logits [B, num_classes] (float32)."""
    h = jnp.concatenate([u, v, u * v, u - v], axis=-1)  # [B, 4D]
    h = nn.relu(self.mlp(h))
    h = nn.relu(self.mlp2(h))
    return self.head(h).astype(jnp.float32)

  def __call__(self, inputs1, inputs2, *, inputs1_positions=None, inputs1_segment_ids=None, inputs2_positions=None,
               inputs2_segment_ids=None, deterministic: bool = True):
    u = self.encode(inputs1, positions=inputs1_positions, segment_ids=inputs1_segment_ids,
                    deterministic=deterministic)
    v = self.encode(inputs2, positions=inputs2_positions, segment_ids=inputs2_segment_ids,
                    deterministic=deterministic)
    return self.classify(u, v)
