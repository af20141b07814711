"""In-context regression (Garg et al. 2022): the model's causality and read-out positions, the squared-error loss,
the least-squares reference of the experiment's `analyze`, and a short end-to-end run."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.config import import_file, load_config, resolve_experiment
from jaxformer.data.regression import LinearRegressionTask, split_prompts
from jaxformer.models import InContextRegressor, TransformerConfig, build_model
from jaxformer.train import load_run, train
from jaxformer.train.losses import squared_error
from jaxformer.train.metrics import read_metrics
from jaxformer.train.step import init_params, make_eval_step

CFG = TransformerConfig.gpt2(vocab_size=0, d_model=32, num_heads=2, mlp_dim=64, num_layers=2, max_len=16,
                             dropout_rate=0.0)
EXPERIMENT = "garg_icl_linear_regression"


@pytest.fixture(scope="module")
def setup():
  """A tiny regressor, its parameters and 2 prompts of 6 points in 3 dimensions (12 vectors)."""
  model = InContextRegressor(CFG)
  batch = LinearRegressionTask(dim=3, num_points=6).train_batch(0, 2)
  params, _ = init_params(model, "in_context_regression", batch, seed=0)
  return model, params, batch


def test_prediction_i_sees_x_1_to_x_i_and_y_before_it_only(setup):
  """Changing y_i or anything after it leaves predictions 1..i bit-identical; changing x_i changes prediction i."""
  model, params, batch = setup
  inputs = jnp.asarray(batch["inputs"])
  apply = jax.jit(lambda x: model.apply({"params": params}, x))
  base = apply(inputs)
  assert base.shape == (2, 6) and base.dtype == jnp.float32
  noise = jnp.asarray(np.random.default_rng(1).standard_normal(inputs.shape), jnp.float32)
  for i in (0, 2, 4):
    later = apply(inputs.at[:, 2 * i + 1:].add(noise[:, 2 * i + 1:]))  # y_i and everything after it
    np.testing.assert_array_equal(later[:, :i + 1], base[:, :i + 1])
    assert np.all(np.asarray(later[:, i + 1:]) != np.asarray(base[:, i + 1:]))
    own_x = apply(inputs.at[:, 2 * i].add(noise[:, 2 * i]))
    np.testing.assert_array_equal(own_x[:, :i], base[:, :i])
    assert np.all(np.asarray(own_x[:, i]) != np.asarray(base[:, i]))


def test_gradient_causality(setup):
  """d prediction_i / d input_j = 0 for every vector j after x_i (positions > 2i), nonzero up to x_i."""
  model, params, batch = setup
  jac = jax.jit(jax.jacrev(lambda x: model.apply({"params": params}, x)[0]))(jnp.asarray(batch["inputs"][:1]))
  jac = np.asarray(jac)[:, 0]  # [n, 2n, d]: prediction i of prompt 0 against every input vector
  for i in range(6):
    assert np.all(jac[i, 2 * i + 1:] == 0.0)
    assert np.all(np.abs(jac[i, :2 * i + 1]).sum(-1) > 0)


def test_read_out_is_the_prediction_and_prompt_shapes_are_checked(setup):
  """With the read-out's kernel zeroed, every prediction is its bias: one value per x position."""
  model, params, batch = setup
  params = {**params, "read_out": {"kernel": jnp.zeros_like(params["read_out"]["kernel"]),
                                   "bias": jnp.full((1,), 0.25)}}
  np.testing.assert_array_equal(model.apply({"params": params}, batch["inputs"]), np.full((2, 6), 0.25, np.float32))
  with pytest.raises(ValueError, match="model.max_len >= 18"):
    model.apply({"params": params}, jnp.zeros((1, 18, 3)))
  with pytest.raises(ValueError, match="x, y interleaved"):
    model.apply({"params": params}, jnp.zeros((1, 5, 3)))


def test_squared_error_sums_by_hand():
  rng = np.random.default_rng(0)
  pred, target = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
  weights = (rng.random((3, 4)) > 0.3).astype(np.float32)
  sums = jax.device_get(squared_error(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weights), tolerance=0.5))
  err = (pred - target) ** 2
  np.testing.assert_allclose(sums["loss"], np.sum(err * weights), rtol=1e-5)
  np.testing.assert_allclose(sums["nll"], sums["loss"])
  assert sums["correct"] == np.sum((err < 0.5) * weights) and sums["weight"] == weights.sum()


def test_eval_step_scores_the_squared_error_and_no_token_rows(setup):
  model, params, batch = setup
  sums = jax.device_get(make_eval_step(model, "in_context_regression")(params, batch))
  assert set(sums) == {"loss", "nll", "correct", "weight"}  # no argmax-based row accuracy for real values
  err = (np.asarray(model.apply({"params": params}, batch["inputs"])) - batch["targets"]) ** 2
  np.testing.assert_allclose(sums["loss"], err.sum(), rtol=1e-5)
  assert sums["weight"] == 12 and sums["correct"] == np.sum(err < 0.01 * 3)  # squared error / d below 0.01


def test_least_squares_reference_is_exact_from_d_points():
  """Noiseless data: least squares on k >= d points recovers w (error ~0); below d the minimum-norm solution
  leaves error / d = 1 - k/d on average, averaging (d + 1) / k, the zero predictor 1."""
  analysis = import_file(resolve_experiment(EXPERIMENT))
  d, n = 5, 11
  xs, ys = split_prompts(LinearRegressionTask(d, n).train_batch(0, 4000)["inputs"])
  preds = analysis.baseline_predictions(xs, ys)
  error = {name: np.mean((p - ys) ** 2, axis=0) / d for name, p in preds.items()}
  assert np.all(error["least_squares"][d:] < 1e-8)
  np.testing.assert_allclose(error["least_squares"][:d], 1 - np.arange(d) / d, atol=0.06)
  np.testing.assert_allclose(error["averaging"][1:3], [(d + 1) / 1, (d + 1) / 2], rtol=0.15)
  np.testing.assert_allclose(error["zero"], 1.0, atol=0.08)
  np.testing.assert_array_equal(error["least_squares"][0], error["zero"][0])  # no examples: predict 0


def test_smoke_run_learns_in_context_and_analyze_reports_every_k(tmp_path):
  """The experiment's smoke variant, shrunk to d = 1 and 4 points so that 200 steps learn something: the held-out
  error falls below the zero predictor's (E[y^2] = d = 1), which needs the examples in the prompt."""
  s = load_config(EXPERIMENT).reproduce
  config = load_config(EXPERIMENT, [*s.smoke, "data.dim=1", "data.num_points=4", "model.max_len=8", "train.steps=200",
                                    "train.eval_every=100", "train.eval_batches=2", "optim.warmup_steps=10"])
  results = train(config, tmp_path, progress=False)
  assert not (tmp_path / "tokenizer.json").exists() and results["step"] == 200
  evals = [r["nll"] for r in read_metrics(tmp_path) if r["split"] == "eval"]
  assert evals[-1] < evals[0] and results["eval"]["nll"] == evals[-1] < 0.8
  model, _, tokenizer = load_run(tmp_path)
  assert tokenizer is None and isinstance(model, InContextRegressor)
  extra = import_file(resolve_experiment(EXPERIMENT)).analyze(config, tmp_path, results, num_prompts=200)
  json.dumps(extra)
  curves = extra["error_by_k"]
  assert set(curves) == {"model", "least_squares", "averaging", "zero"} and all(len(c) == 4 for c in curves.values())
  assert max(curves["least_squares"][1:]) < 1e-8 and curves["model"][3] < curves["zero"][3]
  excess = np.mean(curves["model"][1:]) - np.mean(curves["least_squares"][1:])  # k >= d = 1
  assert extra["excess_error_k_ge_d"] == pytest.approx(excess)
  assert (tmp_path / "icl_error.png").stat().st_size > 1000


def test_build_model_knows_the_kind():
  assert isinstance(build_model("in_context_regression", CFG), InContextRegressor)
