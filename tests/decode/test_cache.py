"""The KV cache: prefill + token-by-token decoding gives the logits of one full forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.models import DecoderOnly, EncoderDecoder
from jaxformer.nn.cache import KVCache
from jaxformer.nn.config import TransformerConfig


def tiny(**kw):
  return TransformerConfig(**{**dict(vocab_size=37, d_model=32, num_heads=4, mlp_dim=64, num_layers=2,
                                     max_len=64, dropout_rate=0.0, pad_id=None), **kw})


STYLES = {
    "gpt2": dict(position="learned", activation="gelu_tanh"),
    "bloom": dict(position="alibi", embedding_norm=True, num_heads=4),
    "bloom3": dict(position="alibi", num_heads=3, d_model=24),
    "llama": dict(position="rope", norm="rmsnorm", activation="swiglu", num_kv_heads=2, qkv_bias=False,
                  tie_embeddings=False),
    "aiayn": dict(position="sinusoidal", pre_norm=False),
    # model.attention kinds that decode with a KV cache (the window, sink logits, two maps, sigmoid bias)
    "local": dict(position="rope", attention=dict(kind="local", window=3)),
    "sinks": dict(position="alibi", attention=dict(kind="sinks", sink_window=4)),
    "differential": dict(position="rope", num_kv_heads=2, attention="differential"),
    "sigmoid": dict(position="alibi", attention="sigmoid"),
}


def left_padded(rng, lengths, total, vocab):
  tokens = np.asarray(jax.random.randint(rng, (len(lengths), total), 1, vocab))
  mask = np.zeros((len(lengths), total), np.int32)
  for row, n in enumerate(lengths):
    mask[row, total - n:] = 1
  tokens = np.where(mask == 1, tokens, 0)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(positions)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_decoder_only_cache_matches_full_forward(style):
  cfg = tiny(**STYLES[style])
  model = DecoderOnly(cfg)
  tokens, mask, positions = left_padded(jax.random.key(0), [9, 5, 7], 9, cfg.vocab_size)
  params = model.init(jax.random.key(1), tokens)["params"]
  full = model.apply({"params": params}, tokens, positions=positions, segment_ids=mask)
  prompt = 4  # prefill the first 4 columns, then one token at a time
  cache = KVCache.empty(cfg, 3, 12)
  logits, cache = model.apply({"params": params}, tokens[:, :prompt], positions=positions[:, :prompt],
                              segment_ids=mask[:, :prompt], cache=cache)
  steps = [logits]
  for t in range(prompt, tokens.shape[1]):
    logits, cache = model.apply({"params": params}, tokens[:, t:t + 1], positions=positions[:, t:t + 1],
                                segment_ids=mask[:, t:t + 1], cache=cache)
    steps.append(logits)
  cached = jnp.concatenate(steps, axis=1)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(cached)[real], np.asarray(full)[real], atol=1e-5, rtol=1e-5)
  assert int(cache.index) == tokens.shape[1]


def test_encoder_decoder_cache_matches_full_forward():
  cfg = tiny(position="sinusoidal", pre_norm=False, pad_id=0)
  model = EncoderDecoder(cfg)
  inputs = jnp.asarray([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
  targets = jnp.asarray([[1, 20, 21, 22, 23], [1, 24, 25, 26, 27]])
  params = model.init(jax.random.key(1), inputs, targets)["params"]
  full = model.apply({"params": params}, inputs, targets)
  encoded = model.apply({"params": params}, inputs, method=model.encode)
  cache = KVCache.empty(cfg, 2, 8)
  logits, cache = model.apply({"params": params}, encoded, inputs, targets[:, :2], cache=cache, method=model.decode)
  assert cache.cross_keys is not None and cache.cross_keys[0].shape == (2, cfg.kv_heads, 6, cfg.dim_per_head)
  steps = [logits]
  for t in range(2, targets.shape[1]):  # later steps need neither the encoder output nor the source
    logits, cache = model.apply({"params": params}, None, None, targets[:, t:t + 1], cache=cache,
                                method=model.decode)
    steps.append(logits)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, axis=1)), np.asarray(full), atol=1e-5, rtol=1e-5)
