"""Attention diagnostics from a model: the sown per-head statistics and maps equal those of the layer's full
attention matrix, rebuilt here from the captured q and k; and `train.diagnostics=True` logs them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.config import load_config
from jaxformer.models import DecoderOnly, EncoderClassifier
from jaxformer.nn.config import TransformerConfig
from jaxformer.train import train
from jaxformer.train.diagnostics import attention_maps, flat_scalars, make_diagnostics_fn
from jaxformer.train.metrics import read_metrics

T = 12


def _cfg(**kw):
  return TransformerConfig(**{**dict(vocab_size=19, d_model=16, num_heads=2, mlp_dim=16, num_layers=2, max_len=T,
                                     dropout_rate=0.0, position="learned", pad_id=0), **kw})


def _dense_stats(q, k, causal, valid):
  """numpy float64: softmax of q·k/sqrt(H) over visible keys -> per-head means over valid rows, and the weights."""
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  visible = valid[:, None, :, None] == valid[:, None, None, :]  # segments 0 (padding) and 1
  if causal:
    visible = visible & np.tril(np.ones((T, T), bool))
  s = np.where(visible, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  per_row = {"entropy": -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1),
             "max_logit": s.max(-1), "max_prob": p.max(-1), "sink_mass": p[..., 0]}
  rows = np.broadcast_to(valid[:, None, :] != 0, p.shape[:3])
  return {name: (x * rows).sum((0, 2)) / rows.sum((0, 2)) for name, x in per_row.items()}, p


@pytest.mark.parametrize("model_cls,causal", [(DecoderOnly, True), (EncoderClassifier, False)])
def test_stats_and_maps_equal_the_full_attention_matrix(model_cls, causal):
  model = model_cls(_cfg())
  tokens = np.array(jax.random.randint(jax.random.key(0), (3, T), 1, 19))
  tokens[1, 8:] = 0  # padding rows are left out of the means
  params = model.init(jax.random.key(1), tokens)["params"]
  _, captured = model.apply({"params": params}, tokens, capture_intermediates=True, mutable=["intermediates"])
  kind = "decoder_only" if causal else "encoder_classifier"
  stats, maps = make_diagnostics_fn(model, kind)({"params": params}["params"], {"inputs": jnp.asarray(tokens)})
  stack = "decoder" if causal else "encoder"
  assert sorted(stats) == [f"{stack}/layers_{i}/self_attention" for i in range(2)]
  for i in range(2):
    layer = captured["intermediates"][stack][f"layers_{i}"]["self_attention"]
    q, k = layer["query"]["__call__"][0], layer["key"]["__call__"][0]
    want, weights = _dense_stats(q, k, causal, (tokens != 0).astype(int))
    got = stats[f"{stack}/layers_{i}/self_attention"]
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(maps[f"{stack}/layers_{i}/self_attention"], weights, rtol=1e-5, atol=1e-6)
  scalars = flat_scalars(stats)
  assert len(scalars) == 2 * 4 * 2 and all(np.isfinite(list(scalars.values())))


def test_kinds_without_one_softmax_are_skipped_and_linear_maps_are_its_weights():
  model = DecoderOnly(_cfg(attention="performer"))
  tokens = jnp.ones((1, T), jnp.int32)
  params = model.init(jax.random.key(1), tokens)["params"]
  stats, maps = make_diagnostics_fn(model, "decoder_only")(params, {"inputs": tokens})
  assert stats == {} and maps == {}
  linear = DecoderOnly(_cfg(attention="linear"))
  maps = attention_maps(linear, "decoder_only", params, {"inputs": tokens})
  weights = np.asarray(maps["decoder/layers_0/self_attention"])
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)  # rows are distributions
  assert np.all(np.triu(weights[0, 0], 1) == 0)  # causal


def test_training_logs_attention_statistics(tmp_path):
  overrides = ["model.num_layers=1", "model.d_model=16", "model.num_heads=2", "model.mlp_dim=16", "model.max_len=16",
               "data.seq_len=16", "data.max_chars=20000", "train.steps=4", "train.batch_size=8", "train.log_every=2",
               "train.eval_every=2", "train.eval_batches=1", "train.eval_batch_size=8", "train.diagnostics=True",
               "optim.warmup_steps=1", "sample.num_tokens=4"]
  train(load_config("char_lm", overrides), tmp_path, progress=False)
  records = [r for r in read_metrics(tmp_path) if r["split"] == "attention"]
  assert [r["step"] for r in records] == [2, 4]
  for record in records:
    entropies = [v for k, v in record.items() if "/entropy/" in k]
    assert len(entropies) == 2 and all(0 <= e <= np.log(16) + 1e-6 for e in entropies)
  tags = _event_tags(tmp_path / "tensorboard")
  assert tags["attention/decoder/layers_0/entropy/head_0"] == "simple_value"
  assert tags["attention_maps/decoder/layers_0/self_attention"] == "image"


def _event_tags(folder) -> dict[str, str]:
  """{tag: kind of value} from TensorBoard event files (TFRecord framing: length, crc, Event proto, crc)."""
  import struct

  from tensorboardX.proto.event_pb2 import Event
  tags = {}
  for path in folder.glob("events.out.tfevents.*"):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        tags[value.tag] = value.WhichOneof("value")
  return tags
