"""Training on a mesh of 8 simulated CPU devices equals training on one device (fp32, 1e-5)."""
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxformer.models import build_model
from jaxformer.nn.config import TransformerConfig
from jaxformer.parallel import RULES, MeshError, check_batch, make_mesh, mesh_sizes, shard_batch
from jaxformer.parallel.mesh import path_key
from jaxformer.train.optim import make_optimizer
from jaxformer.train.step import init_train_state, make_train_step

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")

CFG = TransformerConfig(vocab_size=64, d_model=32, num_heads=8, num_kv_heads=4, mlp_dim=64, num_layers=2,
                        max_len=16, position="rope", dropout_rate=0.1, activation="swiglu", tie_embeddings=False)
OPTIM = ml_collections.ConfigDict(dict(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1,
                                       b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, clip_norm=1.0))


def _batches(n):
  tokens = np.random.default_rng(0).integers(1, 64, (n, 8, 17)).astype(np.int32)
  return [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]


BATCHES = _batches(5)


def _train(mesh, grad_accum=1, cfg=CFG):
  model = build_model("decoder_only", cfg)
  tx, schedule = make_optimizer(OPTIM, CFG.d_model, 5)
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    state, state_sh = init_train_state(model, "decoder_only", tx, BATCHES[0], 0, mesh)
    step = jax.jit(make_train_step(model, "decoder_only", tx, schedule, grad_accum=grad_accum),
                   out_shardings=(state_sh, None), donate_argnums=0)
    losses = []
    for b in BATCHES:
      state, metrics = step(state, shard_batch(mesh, b))
      losses.append(float(metrics["loss"]))
  return state, losses


@pytest.fixture(scope="module")
def single():
  return _train(make_mesh({"data": 1}, devices=jax.devices()[:1]))


@pytest.mark.parametrize("sizes", [{"data": 8}, {"fsdp": 8}, {"tensor": 4, "data": 2},
                                   {"data": 2, "fsdp": 2, "tensor": 2}])
def test_mesh_training_equals_one_device(single, sizes):
  state1, losses1 = single
  mesh = make_mesh(sizes)
  state, losses = _train(mesh)
  np.testing.assert_allclose(losses, losses1, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
               state.params, state1.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
               state.opt_state, state1.opt_state)
  # The parameters and Adam's moments really are split the way the rules say.
  mlp_in = state.params["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]  # [embed, mlp]
  query = state.params["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]  # [embed, heads, kv]
  embed_axis = "fsdp" if mesh.shape["fsdp"] > 1 else None
  tensor_axis = "tensor" if mesh.shape["tensor"] > 1 else None
  assert query.sharding.spec == P(embed_axis, tensor_axis, None) or query.sharding.spec == P(embed_axis, tensor_axis)
  assert mlp_in.sharding.spec[0] == embed_axis and mlp_in.sharding.spec[-1] == tensor_axis
  shards = mesh.shape["fsdp"] * mesh.shape["tensor"]
  assert query.addressable_shards[0].data.size == query.size // shards
  moments = [x for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
             if "layers_0/self_attention/query/kernel" in "/".join(path_key(path))]
  assert len(moments) == 2 and all(m.sharding == query.sharding for m in moments)  # Adam's mu and nu


def test_sequence_parallel_training_with_ring_attention_equals_one_device(single):
  """data=2 x sequence=4: the batch's length axis is split and attention runs as ring attention; with
  gradient accumulation too (its micro-batches draw their own dropout masks: compared with one device
  accumulating the same way)."""
  import dataclasses

  ring = dataclasses.replace(CFG, attention_impl="ring")
  mesh, one = make_mesh({"data": 2, "sequence": 4}), make_mesh({"data": 1}, devices=jax.devices()[:1])
  for (state, losses), (state1, losses1) in [(_train(mesh, cfg=ring), single),
                                             (_train(mesh, 2, ring), _train(one, 2))]:
    np.testing.assert_allclose(losses, losses1, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5),
                 state.params, state1.params)


def test_mesh_sizes_and_errors():
  assert mesh_sizes({"data": -1, "tensor": 2}, 8) == {"data": 4, "fsdp": 1, "sequence": 1, "tensor": 2}
  assert mesh_sizes(None, 8)["data"] == 8
  with pytest.raises(MeshError, match="does not divide 8"):
    mesh_sizes({"data": -1, "tensor": 3}, 8)
  with pytest.raises(MeshError, match="needs 4 devices but 8"):
    mesh_sizes({"data": 2, "tensor": 2}, 8)
  with pytest.raises(MeshError, match="unknown mesh axes"):
    mesh_sizes({"model": 2}, 8)
  with pytest.raises(MeshError, match="at most one -1"):
    mesh_sizes({"data": -1, "fsdp": -1}, 8)
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  check_batch(mesh, 8, grad_accum=2)
  with pytest.raises(MeshError, match="must be a multiple of 4"):
    check_batch(mesh, 6)
  with pytest.raises(MeshError, match="micro-batch of 2 rows"):
    check_batch(mesh, 8, grad_accum=4)


def test_impossible_mesh_fails_before_anything_is_built(tmp_path, monkeypatch):
  from jaxformer.config import load_config
  from jaxformer.train import loop

  monkeypatch.setattr(loop, "build_dataset", lambda *a, **k: pytest.fail("built the dataset"))
  with pytest.raises(MeshError, match="needs 3 devices"):
    loop.train(load_config("char_lm", ["mesh.data=3"]), tmp_path, progress=False)
  with pytest.raises(MeshError, match="train.batch_size=12"):
    loop.train(load_config("char_lm", ["mesh.data=8", "train.batch_size=12"]), tmp_path, progress=False)


def test_common_shape_pads_rows_with_padding_only():
  from jaxformer.parallel.mesh import common_shape

  mesh = make_mesh({"data": 4, "fsdp": 2})
  batch = {"inputs": np.arange(1, 31).reshape(3, 10), "targets": np.ones((3, 7), np.int32), "label": np.ones(3)}
  out = common_shape(mesh, batch, multiple=2)
  assert out["inputs"].shape == (16, 10) and out["targets"].shape == (16, 7) and out["label"].shape == (16,)
  np.testing.assert_array_equal(out["inputs"][:3], batch["inputs"])
  assert not out["inputs"][3:].any() and not out["targets"][3:].any()  # added rows are padding (weight 0)
  shard_batch(mesh, out)  # now splits over the 8 devices
