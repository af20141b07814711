"""The jitted train step: gradient accumulation, determinism, overfitting, NaN guard."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxformer.models import DecoderOnly, EncoderDecoder, TransformerConfig
from jaxformer.train import (
  create_train_state,
  cross_entropy,
  forward,
  init_params,
  make_eval_step,
  make_optimizer,
  make_train_step,
)

CFG = TransformerConfig.llama(vocab_size=17, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, num_layers=2,
                              max_len=16, dropout_rate=0.1, pad_id=0)
OPTIM = ml_collections.ConfigDict(dict(name="adamw", lr=3e-3, schedule="constant", warmup_steps=0, min_lr_ratio=0.1,
                                       b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, clip_norm=1.0, label_smoothing=0.0))


def _lm_batch(B=8, T=12, seed=0):
  x = np.random.default_rng(seed).integers(1, 17, size=(B, T + 1)).astype(np.int32)
  x[1, 9:] = 0  # some padding: weight 0
  return {"inputs": x[:, :-1], "targets": x[:, 1:]}


def _setup(cfg=CFG, kind="decoder_only", batch=None, **step_kw):
  model = (DecoderOnly if kind == "decoder_only" else EncoderDecoder)(cfg)
  tx, schedule = make_optimizer(OPTIM, cfg.d_model, 100)
  params, _ = init_params(model, kind, batch or _lm_batch(), seed=0)
  state = create_train_state(params, tx, seed=0)
  return model, state, jax.jit(make_train_step(model, kind, tx, schedule, **step_kw))


def test_gradient_accumulation_equals_one_big_batch():
  cfg = CFG.replace(dropout_rate=0.0)
  batch = _lm_batch()
  _, state, step1 = _setup(cfg)
  _, state4, step4 = _setup(cfg, grad_accum=4)
  s1, m1 = step1(state, batch)
  s4, m4 = step4(state4, batch)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(a, b, atol=2e-5)  # Adam divides by sqrt(v): float-order noise shows


def test_step_is_deterministic_and_uses_per_step_dropout():
  batch = _lm_batch()
  _, state, step = _setup()
  a, ma = step(state, batch)
  b, mb = step(state, batch)
  np.testing.assert_array_equal(ma["loss"], mb["loss"])
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  # a different step number draws a different dropout mask
  _, mc = step(state.replace(step=state.step + 1), batch)
  assert float(mc["loss"]) != float(ma["loss"])


def test_overfits_one_batch_to_near_zero_loss():
  cfg = CFG.replace(dropout_rate=0.0)
  batch = _lm_batch(B=4, T=10)
  model, state, step = _setup(cfg, batch=batch)
  first = None
  for _ in range(150):
    state, m = step(state, batch)
    first = float(m["loss"]) if first is None else first
  assert first > 2.0
  assert float(m["loss"]) < 0.05
  ev = jax.jit(make_eval_step(model, "decoder_only"))(state.params, batch)
  assert float(ev["correct"]) >= 0.95 * float(ev["weight"])  # non-pad targets predicted
  assert float(ev["nll"]) / float(ev["weight"]) < 0.05


def test_encoder_decoder_step_and_label_smoothing_metric():
  cfg = TransformerConfig.aiayn_base(vocab_size=17, d_model=32, num_heads=4, mlp_dim=64, num_layers=1,
                                     dropout_rate=0.0)
  rng = np.random.default_rng(0)
  src = rng.integers(3, 17, size=(4, 6)).astype(np.int32)
  tgt = np.concatenate([src[:, ::-1], np.full((4, 1), 2)], 1).astype(np.int32)
  batch = {"inputs": src, "decoder_inputs": np.concatenate([np.ones((4, 1), np.int32), tgt[:, :-1]], 1),
           "targets": tgt}
  model, state, step = _setup(cfg, "encoder_decoder", batch, label_smoothing=0.1)
  _, m = step(state, batch)
  logits = forward(model, "encoder_decoder", state.params, batch)
  want = cross_entropy(logits, jnp.asarray(tgt), label_smoothing=0.1)
  np.testing.assert_allclose(m["loss"], want["loss"] / tgt.size, rtol=1e-5)
  np.testing.assert_allclose(m["nll"], want["nll"] / tgt.size, rtol=1e-5)
  assert abs(float(m["loss"]) - float(m["nll"])) > 1e-3
  assert float(m["tokens"]) == tgt.size


def test_mixed_precision_step_keeps_float32_params_and_tracks_float32():
  batch = _lm_batch()
  _, state32, step32 = _setup(CFG.replace(dropout_rate=0.0))
  _, state16, step16 = _setup(CFG.replace(dropout_rate=0.0, dtype="bfloat16"))
  new16, m16 = step16(state16, batch)
  _, m32 = step32(state32, batch)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(new16.params))
  assert abs(float(m16["loss"]) - float(m32["loss"])) < 0.05
  assert float(m16["loss"]) != float(m32["loss"])
