"""In-context linear regression data (Garg et al. 2022): targets recomputed from the inputs, not the generator."""
import ml_collections
import numpy as np
import pytest

from jaxformer.data import build_dataset
from jaxformer.data.regression import LinearRegressionTask, split_prompts


def test_batch_layout_interleaves_x_and_y_and_targets_are_linear_in_x():
  ds = LinearRegressionTask(dim=5, num_points=11, seed=3)
  assert ds.kind == "regression" and ds.tokenizer is None and ds.vocab_size == 0 and ds.seq_len == 22
  b = ds.train_batch(0, 64)
  assert set(b) == {"inputs", "targets", "weights"}
  assert b["inputs"].shape == (64, 22, 5) and b["targets"].shape == b["weights"].shape == (64, 11)
  assert all(x.dtype == np.float32 for x in b.values())
  np.testing.assert_array_equal(b["weights"], 1.0)
  xs, ys = split_prompts(b["inputs"])
  np.testing.assert_array_equal(ys, b["targets"])  # y_i sits right after x_i, as [y_i, 0, ..., 0]
  np.testing.assert_array_equal(b["inputs"][:, 1::2, 1:], 0.0)
  assert np.all(xs != 0.0)
  for x, y in zip(xs.astype(np.float64), ys.astype(np.float64)):
    w = np.linalg.solve(x[:5], y[:5])  # the prompt's function, from its first d points
    np.testing.assert_allclose(x @ w, y, rtol=1e-3, atol=1e-3)  # every y_i = w . x_i, one w per prompt
  ws = np.stack([np.linalg.solve(x[:5], y[:5]) for x, y in zip(xs.astype(np.float64), ys.astype(np.float64))])
  assert np.std(ws[:, 0]) > 0.5  # a fresh w per prompt (w ~ N(0, I))


def test_batches_are_a_pure_function_of_the_step_and_the_held_out_stream_differs():
  ds = LinearRegressionTask(seed=1)
  a, again, other = ds.train_batch(7, 8), LinearRegressionTask(seed=1).train_batch(7, 8), ds.train_batch(8, 8)
  np.testing.assert_array_equal(a["inputs"], again["inputs"])
  assert not np.array_equal(a["inputs"], other["inputs"])
  assert not np.array_equal(a["inputs"], LinearRegressionTask(seed=2).train_batch(7, 8)["inputs"])
  held_out = ds.eval_batches(2, 8)
  np.testing.assert_array_equal(held_out[0]["inputs"], ds.eval_batches(2, 8)[0]["inputs"])
  assert not np.array_equal(held_out[0]["inputs"], held_out[1]["inputs"])
  assert not any(np.array_equal(h["inputs"], ds.train_batch(s, 8)["inputs"]) for h in held_out for s in range(10))


def test_built_from_a_data_config_and_bad_arguments_are_named():
  data = lambda **kw: ml_collections.ConfigDict({"name": "linear_regression", **kw})
  ds = build_dataset(data(dim=3, num_points=4), seed=0)
  assert isinstance(ds, LinearRegressionTask) and ds.train_batch(0, 2)["inputs"].shape == (2, 8, 3)
  with pytest.raises(ValueError, match="unknown data config keys.*num_pointz"):
    build_dataset(data(num_pointz=4), seed=0)
  with pytest.raises(ValueError, match="dim >= 1"):
    LinearRegressionTask(dim=0)
