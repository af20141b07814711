"""Packing, bucketing, shuffling, sharding and exact resume of the batch iterators."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.attention import attention
from jaxformer.data.pipeline import (
  BucketedBatches,
  PackedBatches,
  PaddedBatches,
  StepBatches,
  StreamBatches,
  examples,
  shift_right,
)
from jaxformer.models import build_model
from jaxformer.nn.config import TransformerConfig


def _toy_examples(n=200, seed=0, max_len=12):
  """Example i: inputs of random length filled with distinct ids encoding i, targets likewise."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    a, b = rng.integers(1, max_len + 1, size=2)
    out.append({"inputs": np.full(a, 1000 + i, np.int32) + np.arange(a, dtype=np.int32) * 0,
                "targets": np.arange(b, dtype=np.int32) + 1 + 100 * (i % 7), "id": i})
  return out


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_each_epoch_is_a_new_permutation_and_shards_split_the_data():
  src = list(range(50))
  ds = examples(src, seed=3)
  first, second = [ds[i] for i in range(50)], [ds[i] for i in range(50, 100)]
  assert sorted(first) == src and sorted(second) == src and first != second
  assert [examples(src, seed=3)[i] for i in range(100)] == first + second  # a pure function of the seed
  assert [examples(src, seed=4)[i] for i in range(50)] != first
  a = {examples(src, seed=3, shard=(0, 2), num_epochs=1)[i] for i in range(25)}
  b = {examples(src, seed=3, shard=(1, 2), num_epochs=1)[i] for i in range(25)}
  assert not a & b and a | b == set(src)
  with pytest.raises(ValueError, match="sharded"):
    examples(src[:1], seed=0, shard=(0, 2))


def test_packing_keeps_examples_whole_and_apart():
  exs = _toy_examples()
  it = PackedBatches(examples(exs, seed=0, shuffle=False, num_epochs=1), 4, {"inputs": 16, "targets": 20})
  seen = []
  for batch in it:
    for row in range(4):
      segs = batch["inputs_segment_ids"][row]
      assert np.array_equal(np.unique(segs[segs > 0]), np.unique(batch["targets_segment_ids"][row][
          batch["targets_segment_ids"][row] > 0]))
      for s in np.unique(segs[segs > 0]):
        x = batch["inputs"][row][segs == s]
        i = int(x[0]) - 1000
        assert np.array_equal(x, exs[i]["inputs"])  # one whole example, nothing else, in order
        t_seg = batch["targets_segment_ids"][row]
        assert np.array_equal(batch["targets"][row][t_seg == s], exs[i]["targets"])
        assert np.array_equal(batch["inputs_positions"][row][segs == s], np.arange(len(x)))
        assert np.array_equal(batch["targets_positions"][row][t_seg == s], np.arange(len(exs[i]["targets"])))
        seen.append(i)
      assert np.all(batch["inputs"][row][segs == 0] == 0)
  assert sorted(seen) == list(range(len(exs)))  # every example exactly once, none truncated or lost


def test_packed_tokens_attend_only_within_their_example():
  """The attention API with the packed segment ids gives, for every example, exactly the output of
  attending over that example alone."""
  exs = _toy_examples(40, max_len=10)
  batch = next(PackedBatches(examples(exs, seed=1, num_epochs=1), 2, {"inputs": 32, "targets": 32}))
  seg = jnp.asarray(batch["inputs_segment_ids"])
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 32, 2, 8)), jnp.float32) for _ in range(3))
  for causal in (False, True):
    packed = attention(q, k, v, segment_ids=seg, causal=causal, implementation="reference")
    for row in range(2):
      for s in np.unique(batch["inputs_segment_ids"][row]):
        if s == 0:
          continue
        idx = np.flatnonzero(batch["inputs_segment_ids"][row] == s)
        alone = attention(q[row:row + 1, idx], k[row:row + 1, idx], v[row:row + 1, idx], causal=causal,
                          implementation="reference")
        np.testing.assert_allclose(packed[row, idx], alone[0], atol=1e-6)


def test_packed_encoder_decoder_equals_each_example_alone():
  """The whole model on a packed batch (segment ids, positions, per-segment BOS) gives every example
  the logits it gets when run by itself."""
  cfg = TransformerConfig.aiayn_base(vocab_size=1200, d_model=32, num_heads=2, mlp_dim=64, num_layers=2,
                                     dropout_rate=0.0)
  model = build_model("encoder_decoder", cfg)
  rng = np.random.default_rng(0)
  exs = [{"inputs": rng.integers(3, 1200, size=rng.integers(2, 9)).astype(np.int32),
          "targets": rng.integers(3, 1200, size=rng.integers(2, 9)).astype(np.int32)} for _ in range(12)]
  b = next(PackedBatches(examples(exs, seed=0, shuffle=False, num_epochs=1), 2, {"inputs": 24, "targets": 24}))
  dec = shift_right(b["targets"], b["targets_segment_ids"], 2)
  params = jax.jit(model.init)(jax.random.key(0), b["inputs"], dec)
  apply = jax.jit(model.apply)
  packed = apply(params, b["inputs"], dec, inputs_positions=b["inputs_positions"],
                 inputs_segment_ids=b["inputs_segment_ids"], decoder_positions=b["targets_positions"],
                 decoder_segment_ids=b["targets_segment_ids"])
  checked = 0
  for row in range(2):
    for s in np.unique(b["inputs_segment_ids"][row]):
      if s == 0:
        continue
      src = b["inputs"][row][b["inputs_segment_ids"][row] == s]
      t_idx = np.flatnonzero(b["targets_segment_ids"][row] == s)
      tgt = b["targets"][row][t_idx]
      alone = apply(params, src[None], shift_right(tgt[None], None, 2))
      np.testing.assert_allclose(packed[row, t_idx], alone[0], atol=2e-5)
      checked += 1
  assert checked >= 4


def test_shift_right_starts_every_segment_with_bos():
  t = np.array([[5, 6, 7, 8, 9, 0]])
  seg = np.array([[1, 1, 2, 2, 2, 0]])
  assert shift_right(t, seg, 2).tolist() == [[2, 5, 2, 7, 8, 0]]
  assert shift_right(t, None, 2).tolist() == [[2, 5, 6, 7, 8, 0]]


def test_bucketing_groups_by_length_and_keeps_every_example():
  exs = _toy_examples(300, max_len=30)
  it = BucketedBatches(examples(exs, seed=0, num_epochs=1), [8, 16, 32], 64, window=100,
                       features=("inputs", "targets"))
  seen, shapes = [], {}
  for batch in it:
    n = batch["inputs"].shape[1]
    assert n in (8, 16, 32) and batch["inputs"].shape == batch["targets"].shape
    assert batch["inputs"].shape[0] * n <= 64 or batch["inputs"].shape[0] == 1
    shapes.setdefault(n, set()).add(batch["inputs"].shape[0])
    for row in range(batch["inputs"].shape[0]):
      x = batch["inputs"][row][batch["inputs"][row] > 0]
      if len(x) == 0:
        continue  # filler row
      i = int(x[0]) - 1000
      longest = max(len(exs[i]["inputs"]), len(exs[i]["targets"]))
      assert longest <= n and (n == 8 or longest > n // 2)  # in the smallest bucket that holds it
      np.testing.assert_array_equal(batch["targets"][row][:len(exs[i]["targets"])], exs[i]["targets"])
      seen.append(i)
  assert sorted(seen) == list(range(300))
  assert all(len(sizes) == 1 for sizes in shapes.values())  # one shape (one compilation) per bucket


@pytest.mark.parametrize("kind", ["packed", "bucketed", "padded", "step"])
def test_restored_iterator_yields_exactly_the_uninterrupted_batches(kind):
  exs = _toy_examples(60)

  def make():
    ds = examples(exs, seed=5)  # endless, reshuffled each epoch: resuming crosses epoch boundaries
    if kind == "packed":
      return PackedBatches(ds, 3, {"inputs": 16, "targets": 16})
    if kind == "bucketed":
      return BucketedBatches(ds, [8, 16], 48, window=25, seed=5)
    if kind == "padded":
      return PaddedBatches(ds, 7, {"inputs": 12, "targets": 12})
    return StepBatches(lambda step, bs: {"x": np.random.default_rng([5, step]).integers(0, 9, (bs, 4))}, 2)

  reference = _take(make(), 40)
  for stop in (1, 13, 27):
    it = make()
    _take(it, stop)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    resumed = make()
    resumed.set_state(state)
    _assert_same(_take(resumed, 40 - stop), reference[stop:])


def test_truncation_is_counted_in_the_log(caplog):
  exs = [{"inputs": np.arange(1, 30, dtype=np.int32), "targets": np.arange(1, 5, dtype=np.int32)}] * 12
  with caplog.at_level("WARNING", "jaxformer.data"):
    batches = list(PaddedBatches(examples(exs, seed=0, num_epochs=1), 4, {"inputs": 8, "targets": 8}))
  assert all(np.array_equal(b["inputs"][0], np.arange(1, 9)) for b in batches)
  assert [r.getMessage().split(" examples")[0] for r in caplog.records] == ["1", "10"]


def test_cut_sentences_keep_their_eos_and_are_counted_once(caplog):
  eos = 3
  exs = [{"inputs": np.r_[np.arange(10, 30), eos].astype(np.int32), "targets": np.r_[5, 6, eos].astype(np.int32)}
         for _ in range(10)]
  with caplog.at_level("WARNING", "jaxformer.data"):
    batches = list(PackedBatches(examples(exs, seed=0, num_epochs=1), 1, {"inputs": 8, "targets": 8},
                                 keep_last=True))
  assert len(batches) == 10  # one cut example per row; each re-read once when it did not fit
  for b in batches:
    assert b["inputs"][0].tolist() == [10, 11, 12, 13, 14, 15, 16, eos]
  assert [r.getMessage().split(" examples")[0] for r in caplog.records] == ["1", "10"]


def test_stream_rows_are_the_token_stream_each_token_a_target_once_and_resume_exactly():
  """nanoGPT's rows: documents of consecutive integers make the stream 0, 1, 2, ...; each row's targets are its
  inputs shifted by one, the rows tile the stream, a restored iterator continues with the same batches, and a
  finite stream ends with a short batch (the tokens after the last full row are dropped)."""
  lengths = [5, 1, 13, 7, 2, 9, 4]  # 41 tokens
  starts = np.cumsum([0] + lengths)
  docs = [{"targets": np.arange(a, b, dtype=np.int32)} for a, b in zip(starts[:-1], starts[1:])]

  def stream():
    return StreamBatches(examples(docs, seed=0, shuffle=False, num_epochs=1), batch_size=2, seq_len=6)

  it = stream()
  first = next(it)
  state = it.get_state()
  rest = list(it)
  targets = np.concatenate([b["targets"].ravel() for b in [first, *rest]])
  inputs = np.concatenate([b["inputs"].ravel() for b in [first, *rest]])
  np.testing.assert_array_equal(inputs, np.arange(len(inputs)))
  np.testing.assert_array_equal(targets, inputs + 1)
  assert [b["targets"].shape for b in [first, *rest]] == [(2, 6)] * 3  # 40 targets make 6 full rows; 4 are dropped
  again = stream()
  again.set_state(json.loads(json.dumps(state)))
  _assert_same(rest, list(again))
