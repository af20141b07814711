"""`model.attention.kind`: every variant runs inside the models (causal where causal, finite gradients), the
softmax-family kinds equal explicit formulas, and misconfigurations are clear errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.config import load_config
from jaxformer.models import DecoderOnly, EncoderClassifier
from jaxformer.nn.config import ATTENTION_KINDS, AttentionConfig, TransformerConfig
from jaxformer.nn.variants import CACHE_KINDS

T = 16
SMALL = dict(window=4, num_features=16, chunk_size=4, projection_len=8, block_size=4, num_hashes=2, num_buckets=4)


def tiny(kind, **kw):
  return TransformerConfig(**{**dict(vocab_size=23, d_model=32, num_heads=2, mlp_dim=32, num_layers=1, max_len=T,
                                     dropout_rate=0.0, position="rope", attention=dict(SMALL, kind=kind)), **kw})


def _tokens(seed=0, batch=2):
  return jax.random.randint(jax.random.key(seed), (batch, T), 1, 23)


CAUSAL_KINDS = [kind for kind in ATTENTION_KINDS if kind != "linformer"]


@pytest.mark.parametrize("kind", CAUSAL_KINDS)
def test_decoder_only_is_causal_with_finite_gradients(kind):
  model = DecoderOnly(tiny(kind))
  tokens = _tokens()
  params = model.init(jax.random.key(1), tokens)["params"]
  fn = jax.jit(lambda p, t: model.apply({"params": p}, t))
  logits = fn(params, tokens)
  changed = fn(params, tokens.at[:, 9:].set(tokens[:, 9:] % 22 + 1))  # every token from 9 on differs
  if kind != "lsh":  # Reformer's causal LSH masks future keys, but later tokens move the sorted chunks' edges
    np.testing.assert_allclose(changed[:, :9], logits[:, :9], atol=1e-5, rtol=1e-5)
  assert not np.allclose(changed[:, 9:], logits[:, 9:], atol=1e-3)
  if kind in ("softmax", "local"):  # the kernel's own gradients are tested against the reference elsewhere
    return

  def loss(p):
    out = model.apply({"params": p}, tokens, deterministic=False, rngs={"dropout": jax.random.key(2)})
    return jnp.mean(jax.nn.log_softmax(out)[..., 0])
  grads = jax.jit(jax.grad(loss))(params)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_encoder_classifier_ignores_padding(kind):
  """Bidirectional: the pooled output of a padded row does not depend on what sits in the padding."""
  model = EncoderClassifier(tiny(kind, num_classes=3, pad_id=0))
  tokens = np.array(_tokens(3))
  tokens[0, 11:] = 0
  params = model.init(jax.random.key(1), tokens)["params"]
  segments = jnp.asarray(tokens != 0, jnp.int32)
  fn = jax.jit(lambda t: model.apply({"params": params}, t, segment_ids=segments))
  out = fn(jnp.asarray(tokens))
  padded_differently = tokens.copy()
  padded_differently[0, 11:] = 5  # new values under the same (zero) segment ids: must not matter
  np.testing.assert_allclose(fn(jnp.asarray(padded_differently))[0], out[0], atol=1e-5, rtol=1e-5)
  assert np.isfinite(out).all()


def test_local_with_a_wide_window_is_softmax_and_narrow_window_is_the_kernel_window():
  tokens = _tokens()
  softmax = DecoderOnly(tiny("softmax"))
  params = softmax.init(jax.random.key(1), tokens)["params"]
  want = softmax.apply({"params": params}, tokens)
  wide = DecoderOnly(tiny("local", attention=dict(kind="local", window=T)))
  np.testing.assert_allclose(wide.apply({"params": params}, tokens), want, atol=1e-5, rtol=1e-5)
  narrow = DecoderOnly(tiny("local", attention=dict(kind="local", window=2)))
  assert not np.allclose(narrow.apply({"params": params}, tokens), want, atol=1e-3)


def _mixer_inputs(seed=0, B=2, N=2, H=8):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32) for _ in range(3))
  return q, k, v


def _mixer(kind, q, k, v, params=None, causal=True, layer=0, **attention):
  from jaxformer.nn.variants import Mixer
  cfg = tiny(kind, attention=dict(SMALL, kind=kind, **attention))
  mixer = Mixer(cfg, layer)
  x = jnp.ones(q.shape[:2] + (cfg.d_model,))
  kw = dict(causal=causal, segment_ids=None, bias=None, q_offset=0, dropout_rate=0.0, dropout_rng=None,
            implementation="reference")
  if params is None:
    params = nn.unbox(mixer.init(jax.random.key(0), q, k, v, x, kw=kw).get("params", {}))
  return mixer.apply({"params": params}, q, k, v, x, kw=kw), params


def _softmax(logits, mask):
  logits = np.where(mask, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def test_sinks_equal_softmax_with_an_extra_sink_column():
  q, k, v = _mixer_inputs()
  params = {"sink_logits": jnp.asarray([0.5, -1.0])}
  out, _ = _mixer("sinks", q, k, v, params=params)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
  sink = np.broadcast_to(np.asarray(params["sink_logits"])[None, :, None, None], logits.shape[:3] + (1,))
  mask = np.concatenate([np.ones_like(sink, bool), np.broadcast_to(np.tril(np.ones((T, T), bool)), logits.shape)], -1)
  p = _softmax(np.concatenate([sink, logits], -1), mask)[..., 1:]  # the sink column absorbs mass, carries no value
  np.testing.assert_allclose(out, np.einsum("bnts,bsnh->btnh", p, v), atol=1e-5, rtol=1e-5)


def test_differential_equals_its_formula():
  q, k, v = _mixer_inputs(1)
  out, params = _mixer("differential", q, k, v, layer=2)
  lam_init = 0.8 - 0.6 * np.exp(-0.3 * 2)
  p = {name: np.asarray(value) for name, value in params.items()}
  lam = np.exp(p["lambda_q1"] @ p["lambda_k1"]) - np.exp(p["lambda_q2"] @ p["lambda_k2"]) + lam_init
  causal = np.tril(np.ones((T, T), bool))
  maps = [_softmax(np.einsum("btnh,bsnh->bnts", q[..., s], k[..., s]) / 2.0, causal) for s in (slice(0, 4), slice(4, 8))]
  diff = np.einsum("bnts,bsnh->btnh", maps[0] - lam * maps[1], v)
  want = diff / np.sqrt(np.mean(diff ** 2, -1, keepdims=True) + 1e-5) * p["subln_scale"] * (1 - lam_init)
  np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def test_linformer_with_identity_projections_is_softmax():
  q, k, v = _mixer_inputs(2)
  eye = jnp.eye(T)
  out, _ = _mixer("linformer", q, k, v, params={"key_projection": eye, "value_projection": eye}, causal=False,
                  projection_len=T)
  want = np.einsum("bnts,bsnh->btnh", _softmax(np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8), True), v)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def test_random_synthesizer_is_a_learned_causal_softmax():
  q, k, v = _mixer_inputs(3)
  out, params = _mixer("synthesizer", q, k, v, synthesizer="random")
  table = np.asarray(params["synth_random"])[None]  # [1,N,T,T]
  want = np.einsum("bnts,bsnh->btnh", _softmax(table, np.tril(np.ones((T, T), bool))), v)
  np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def test_performer_redraws_features_in_training_only():
  model = DecoderOnly(tiny("performer"))
  tokens = _tokens()
  params = model.init(jax.random.key(1), tokens)["params"]
  train = lambda seed: model.apply({"params": params}, tokens, deterministic=False,  # noqa: E731
                                   rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(train(0), train(1), atol=1e-4)
  np.testing.assert_array_equal(model.apply({"params": params}, tokens), model.apply({"params": params}, tokens))
  fixed = DecoderOnly(tiny("performer", attention=dict(SMALL, kind="performer", redraw=False)))
  np.testing.assert_array_equal(fixed.apply({"params": params}, tokens, deterministic=False,
                                            rngs={"dropout": jax.random.key(0)}),
                                model.apply({"params": params}, tokens))


def test_config_key_and_errors():
  config = load_config("char_lm", ["--config.model.attention.kind=performer",
                                   "--config.model.attention.num_features=32"])
  cfg = TransformerConfig.from_dict(config.model.to_dict())
  assert cfg.attention == AttentionConfig(kind="performer", num_features=32)
  assert TransformerConfig.from_dict(cfg.to_dict()) == cfg  # model.json round trip
  assert TransformerConfig(attention="linear").attention.kind == "linear"
  with pytest.raises(ValueError, match="expected one of"):
    TransformerConfig(attention="fast")
  with pytest.raises(ValueError, match="unknown model.attention key"):
    TransformerConfig(attention=dict(kind="linear", features=3))
  with pytest.raises(ValueError, match="ring"):
    TransformerConfig(attention="linear", attention_impl="ring")
  with pytest.raises(ValueError, match="ALiBi"):
    TransformerConfig(attention="performer", position="alibi")
  with pytest.raises(ValueError, match="num_kv_heads"):
    TransformerConfig(attention="lsh", num_heads=4, num_kv_heads=2)
  with pytest.raises(ValueError, match="attention_dropout_rate"):
    TransformerConfig(attention="linear", attention_dropout_rate=0.1)
  with pytest.raises(ValueError, match="bidirectional"):
    DecoderOnly(tiny("linformer")).init(jax.random.key(0), _tokens())


@pytest.mark.parametrize("kind", sorted(set(ATTENTION_KINDS) - set(CACHE_KINDS) - {"linformer"}))
def test_kinds_without_cache_decoding_say_so(kind):
  from jaxformer.nn.cache import KVCache
  cfg = tiny(kind)
  model = DecoderOnly(cfg)
  tokens = _tokens()
  params = model.init(jax.random.key(1), tokens)["params"]
  with pytest.raises(ValueError, match="cannot decode with a KV cache"):
    model.apply({"params": params}, tokens[:, :4], cache=KVCache.empty(cfg, 2, T))


@pytest.mark.parametrize("kind", ["softmax", "local", "sinks", "differential", "sigmoid"])
def test_rope_kinds_depend_only_on_relative_positions(kind):
  """Shifting every position leaves the logits unchanged (differential: RoPE rotates each half-head alone)."""
  model = DecoderOnly(tiny(kind))
  tokens = _tokens()
  params = model.init(jax.random.key(1), tokens)["params"]
  positions = jnp.broadcast_to(jnp.arange(T), tokens.shape)
  fn = jax.jit(lambda p: model.apply({"params": params}, tokens, positions=p))
  np.testing.assert_allclose(fn(positions + 9), fn(positions), atol=2e-5, rtol=2e-5)


def test_packed_rows_need_a_kind_that_keeps_sequences_apart():
  from jaxformer.nn.variants import check_kind
  packed = {"inputs": np.ones((2, 8)), "segment_ids": np.array([[1, 1, 2, 2, 3, 3, 0, 0]] * 2)}
  for kind in ("performer", "linformer", "synthesizer"):
    with pytest.raises(ValueError, match="cannot keep the packed sequences"):
      check_kind(tiny(kind), "encoder_classifier", packed)
  with pytest.raises(ValueError, match="num_segments to at least 4"):
    check_kind(tiny("linear"), "decoder_only", packed)
  check_kind(tiny("linear", attention=dict(kind="linear", num_segments=4)), "decoder_only", packed)
  for kind in ("softmax", "sigmoid", "bigbird", "lsh", "local"):
    check_kind(tiny(kind), "decoder_only", packed)
  check_kind(tiny("performer"), "decoder_only", {"segment_ids": np.array([[1, 1, 0]])})  # padding only: fine
  with pytest.raises(ValueError, match="bidirectional"):
    check_kind(tiny("linformer"), "decoder_only")


def test_linear_keeps_packed_sequences_apart_with_enough_segments():
  """A packed row gives each sequence the output it has alone (num_segments covers the ids)."""
  model = DecoderOnly(tiny("linear", attention=dict(SMALL, kind="linear", num_segments=4), pad_id=None))
  tokens = _tokens(5, batch=1)
  params = model.init(jax.random.key(1), tokens)["params"]
  seg = jnp.asarray([[1] * 5 + [2] * 6 + [3] * 5])
  pos = jnp.asarray([list(range(5)) + list(range(6)) + list(range(5))])
  packed = model.apply({"params": params}, tokens, positions=pos, segment_ids=seg)
  alone = model.apply({"params": params}, tokens[:, 11:], positions=pos[:, 11:])
  np.testing.assert_allclose(packed[:, 11:], alone, atol=1e-5, rtol=1e-5)
