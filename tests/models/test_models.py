"""Model-level properties: causality, padding, logical axis names, determinism, overfitting."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxformer.models import DecoderOnly, EncoderClassifier, EncoderDecoder, TransformerConfig

TINY = dict(vocab_size=13, d_model=32, num_heads=4, mlp_dim=64, num_layers=2, max_len=32, dropout_rate=0.0)
STYLES = {
    "gpt2": TransformerConfig.gpt2(**TINY),
    "bloom": TransformerConfig.bloom(**{**TINY, "num_heads": 8, "d_model": 48}),
    "llama": TransformerConfig.llama(**{**TINY, "num_kv_heads": 2}),
    "aiayn_postln": TransformerConfig.aiayn_base(**TINY),
}


def _tokens(shape, seed=0, low=1):
  return jnp.asarray(np.random.default_rng(seed).integers(low, 13, size=shape), jnp.int32)


def _init(model, *args):
  variables = model.init(jax.random.key(0), *args)
  return variables, nn.unbox(variables)["params"]


@pytest.mark.parametrize("style", sorted(STYLES))
def test_decoder_only_is_causal(style):
  model = DecoderOnly(STYLES[style])
  x = _tokens((2, 10))
  _, p = _init(model, x)
  base = model.apply({"params": p}, x)
  for t in (0, 4, 8):
    changed = x.at[:, t + 1:].set(_tokens((2, 9 - t), seed=t + 1))
    out = model.apply({"params": p}, changed)
    np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])  # bit-identical
    assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


def test_decoder_only_gradient_causality():
  """d logits_i / d embedding_j = 0 for j > i, via the input embedding."""
  cfg = STYLES["llama"]
  model = DecoderOnly(cfg)
  x = _tokens((1, 8))
  _, p = _init(model, x)

  def logit_at(emb, i):
    return model.apply({"params": {**p, "embedder": {"tokens": {"embedding": emb}}}}, x)[0, i].sum()

  emb = p["embedder"]["tokens"]["embedding"]
  for i in (2, 5):
    g = jax.grad(logit_at)(emb, i)
    later = np.asarray(x[0, i + 1:])
    earlier = set(np.asarray(x[0, : i + 1]).tolist())
    only_later = [t for t in later if t not in earlier]
    assert only_later == [] or np.all(np.asarray(g)[only_later] == 0)
    assert np.any(np.asarray(g)[list(earlier)] != 0)


def test_encoder_decoder_decoder_is_causal():
  model = EncoderDecoder(STYLES["aiayn_postln"])
  src, tgt = _tokens((2, 7)), _tokens((2, 9), seed=1)
  _, p = _init(model, src, tgt)
  base = model.apply({"params": p}, src, tgt)
  changed = tgt.at[:, 5:].set(_tokens((2, 4), seed=3))
  out = model.apply({"params": p}, src, changed)
  np.testing.assert_array_equal(out[:, :5], base[:, :5])
  assert not np.allclose(out[:, 5:], base[:, 5:])
  # the source is fully visible: changing its last token changes the first output
  assert not np.allclose(model.apply({"params": p}, src.at[:, -1].set(12 - src[:, -1]), tgt)[:, 0], base[:, 0])


def test_changing_pad_tokens_changes_nothing():
  """Padding (id 0) keys get zero attention weight: with pad_id set, the values at pad
  positions cannot influence real positions. Checked by comparing with a model that
  does not mask padding (pad_id=None), which must differ."""
  cfg = STYLES["aiayn_postln"]
  model = EncoderDecoder(cfg)
  src = _tokens((2, 8)).at[0, 5:].set(0)
  tgt = _tokens((2, 6), seed=1).at[1, 4:].set(0)
  _, p = _init(model, src, tgt)
  base = model.apply({"params": p}, src, tgt)
  # The embedding of the pad token changes what pad positions hold; real positions must not notice.
  p2 = jax.tree.map(lambda a: a, p)
  emb = p2["embedder"]["tokens"]["embedding"]
  p2["embedder"]["tokens"]["embedding"] = emb.at[0].set(emb[0] + 5.0)
  out = model.apply({"params": p2}, src, tgt)
  real = np.asarray(tgt != 0)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(base)[real], atol=1e-5)
  unmasked = EncoderDecoder(cfg.replace(pad_id=None))
  a = unmasked.apply({"params": p}, src, tgt)
  b = unmasked.apply({"params": p2}, src, tgt)
  assert not np.allclose(np.asarray(a)[real], np.asarray(b)[real], atol=1e-3)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_classifier_ignores_padding(pooling):
  model = EncoderClassifier(TransformerConfig(**{**TINY, "num_classes": 3, "pooling": pooling}))
  x = _tokens((2, 9)).at[:, 6:].set(0)
  _, p = _init(model, x)
  base = model.apply({"params": p}, x)
  p2 = jax.tree.map(lambda a: a, p)
  emb = p2["embedder"]["tokens"]["embedding"]
  p2["embedder"]["tokens"]["embedding"] = emb.at[0].set(emb[0] * -3 + 1)
  assert base.shape == (2, 3)
  np.testing.assert_allclose(model.apply({"params": p2}, x), base, atol=1e-5)


def test_packed_segments_do_not_mix():
  """Two sequences packed in one row give the same logits as each alone."""
  model = DecoderOnly(STYLES["llama"])
  a, b = _tokens((1, 5), seed=1), _tokens((1, 4), seed=2)
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 4])
  pos = jnp.array([list(range(5)) + list(range(4))])
  _, p = _init(model, packed)
  out = model.apply({"params": p}, packed, segment_ids=seg, positions=pos)
  np.testing.assert_allclose(out[:, :5], model.apply({"params": p}, a), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:], model.apply({"params": p}, b), atol=1e-5)


@pytest.mark.parametrize("kind", ["decoder_only", "encoder_decoder", "encoder_classifier"])
def test_every_parameter_has_logical_axis_names(kind):
  cfg = STYLES["llama"] if kind == "decoder_only" else STYLES["aiayn_postln"]
  model = {"decoder_only": DecoderOnly, "encoder_decoder": EncoderDecoder,
           "encoder_classifier": EncoderClassifier}[kind](cfg)
  x = _tokens((1, 4))
  variables, params = _init(model, *((x, x) if kind == "encoder_decoder" else (x,)))
  leaves = jax.tree.leaves(variables["params"], is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
  for v in leaves:
    assert len(v.names) == v.value.ndim
  names = {n for v in leaves for n in v.names}
  assert {"embed", "mlp", "heads", "kv", "vocab"} <= names


def test_post_ln_and_pre_ln_differ_and_tying_is_shared():
  x = _tokens((1, 6))
  pre = DecoderOnly(STYLES["gpt2"])
  post = DecoderOnly(STYLES["gpt2"].replace(pre_norm=False))
  _, p_pre = _init(pre, x)
  _, p_post = _init(post, x)
  assert "final_norm" in p_pre["decoder"] and "final_norm" not in p_post["decoder"]
  untied = DecoderOnly(STYLES["gpt2"].replace(tie_embeddings=False))
  _, p_untied = _init(untied, x)
  assert "head" in p_untied and "head" not in p_pre


def test_same_seed_gives_bit_identical_params_and_training():
  model = DecoderOnly(STYLES["gpt2"])
  x = _tokens((2, 8))

  def run():
    _, p = _init(model, x)
    tx = optax.adam(1e-2)
    state = tx.init(p)
    for _ in range(3):
      g = jax.grad(lambda p: model.apply({"params": p}, x).mean())(p)
      u, state = tx.update(g, state)
      p = optax.apply_updates(p, u)
    return p

  a, b = run(), run()
  for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(la, lb)


def test_bfloat16_compute_keeps_float32_params():
  cfg = STYLES["llama"].replace(dtype="bfloat16")
  model = DecoderOnly(cfg)
  x = _tokens((2, 8))
  _, p = _init(model, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p))
  logits = model.apply({"params": p}, x)
  assert logits.dtype == jnp.float32
  full = DecoderOnly(cfg.replace(dtype="float32")).apply({"params": p}, x)
  np.testing.assert_allclose(logits, full, atol=0.1)
  assert not np.array_equal(logits, full)
