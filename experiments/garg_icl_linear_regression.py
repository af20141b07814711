"""In-context linear regression (Garg et al. 2022, "What Can Transformers Learn In-Context? A Case Study of Simple
Function Classes", section 3 and Figure 2): a transformer trained on prompts x_1, w.x_1, ..., x_n, w.x_n, with a
fresh w per prompt, predicts w.x_i from the examples before it as well as least squares does, whose error is 0 once
the prompt holds d examples.

  jaxformer reproduce garg_icl_linear_regression          # ~3 min on 2 idle CPU cores (5-6 min when shared)
  jaxformer train --config experiments/garg_icl_linear_regression.py

Setting: d = 5, n = 11 = 2d + 1 points (the first stage of Garg's curriculum; their Figure 2 is d = 20 with 40
examples), x_i ~ N(0, I_d), w ~ N(0, I_d), y_i = w.x_i without noise (`jaxformer.data.LinearRegressionTask`).
Model as Garg's (`jaxformer.models.InContextRegressor`): linear read-in, GPT-2 decoder (learned positions, pre-LN)
over the 2n vectors, linear read-out at the x positions; loss: the mean squared error of all n predictions.
`analyze` draws 1000 fresh prompts and reports squared error / d (Garg's normalisation: the zero predictor scores 1)
at every number k = 0 .. n-1 of in-context examples for the model, least squares (minimum norm, on the first k
examples), averaging (w = mean of y_i x_i) and the zero predictor, plotted in icl_error.png.
Published: the trained transformer's curve lies on least squares' (Figure 2): 0 excess error for k >= d.
Metric: `excess_error_k_ge_d`, the model's error / d minus least squares', averaged over k = d .. n-1; target <= 0.1
(also reported: `excess_error_at_d`, at k = d alone, and the curves `error_by_k`).
Measured (15k steps, 3 min on 2 idle cores): excess 0.080; the model's error / d is 0.77, 0.63, 0.41, 0.25 at
k = 1..4 (least squares: 0.77, 0.62, 0.39, 0.16), 0.18 at k = d, 0.026 at k = 2d. It stays above least squares at
k = d, where the d x d system is worst conditioned: a 3-layer model is far smaller than Garg's 12 layers.
Differences: a tiny GPT (3 layers, 4 heads, width 64; Garg: 12 layers, 8 heads, width 256); no curriculum (Garg grow
d from 5 to 20 and the points from 11 to 41; here d and n stay at the curriculum's start; growing d from 1 to 5 did
not train faster here); AdamW (no weight decay) at lr 1e-3 with 2000 warmup steps and cosine decay, for 15k steps
of 64 prompts (Garg: Adam at 1e-4, 500k steps); no dropout, as Garg. The warmup matters: lr 1e-3 after only 500
warmup steps stalled on a plateau (error / d ~0.6 for k >= d after 15k steps).
Hardware/time: 2 CPU cores, ~3 minutes idle (5.3 measured beside another job).
Smoke variant: `jaxformer reproduce garg_icl_linear_regression --smoke`.
"""
import ml_collections
import numpy as np
from _common import base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig.gpt2(vocab_size=0, d_model=64, num_heads=4, mlp_dim=256, num_layers=3, max_len=22,
                                 dropout_rate=0.0, pad_id=None, init_std=0.02)
  c = base_config(model, "in_context_regression")
  c.name = "garg_icl_linear_regression"
  c.data.name = "linear_regression"
  c.data.dim = 5
  c.data.num_points = 11
  c.train.update(dict(steps=15000, batch_size=64, log_every=500, eval_every=2500, eval_batches=4,
                      eval_batch_size=256, tensorboard=False))
  c.optim.update(dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=2000, min_lr_ratio=0.1, b1=0.9, b2=0.999,
                      weight_decay=0.0, clip_norm=1.0))
  c.checkpoint.every = 0
  c.checkpoint.async_save = False
  del c.sample
  c.reproduce = ml_collections.ConfigDict(dict(
      family="synthetic tasks", paper="Garg et al. 2022, in-context learning",
      source="Figure 2 (linear regression), at d = 5, n = 11",
      metric="excess_error_k_ge_d", metric_name="error / d above least squares, k >= d", published=0.0,
      target=0.1, goal="min", hardware="2 CPU cores", runtime="3-6 minutes",
      smoke=("train.steps=20", "train.eval_every=10", "train.log_every=10"),
      quick=("train.steps=5000",), quick_target=0.15))
  return c


def baseline_predictions(xs: np.ndarray, ys: np.ndarray) -> dict[str, np.ndarray]:
  """Garg's baselines' predictions [B, n] of every y_i from the examples before it: least squares (the
  minimum-norm solution on the first k examples), averaging (w = mean of y_j x_j) and the zero predictor."""
  b, n, _ = xs.shape
  lstsq, avg = np.zeros((b, n)), np.zeros((b, n))
  for k in range(1, n):  # k = 0: no examples, every estimator predicts 0
    x, y = xs[:, :k].astype(np.float64), ys[:, :k].astype(np.float64)
    w_ls = np.einsum("bdk,bk->bd", np.linalg.pinv(x), y)  # the minimum-norm solutions, all prompts at once
    lstsq[:, k] = np.einsum("bd,bd->b", xs[:, k], w_ls)
    avg[:, k] = np.einsum("bd,bd->b", xs[:, k], np.einsum("bk,bkd->bd", y, x) / k)
  return {"least_squares": lstsq, "averaging": avg, "zero": np.zeros((b, n))}


def analyze(config, workdir, results, num_prompts: int = 1000) -> dict:
  """Squared error / d at every number k of in-context examples on `num_prompts` fresh prompts, for the model and
  Garg's baselines; the metric is the model's excess over least squares, averaged over k = d .. n-1."""
  import jax

  from jaxformer.data.regression import HELD_OUT_STREAM, LinearRegressionTask, split_prompts
  from jaxformer.train.checkpoint import load_run
  from jaxformer.train.metrics import new_figure

  model, params, _ = load_run(workdir)
  d = config.data.dim
  rng = np.random.default_rng([config.seed, HELD_OUT_STREAM - 1])  # a stream neither training nor evaluation reads
  batch = LinearRegressionTask(d, config.data.num_points).batch(num_prompts, rng)
  xs, ys = split_prompts(batch["inputs"])
  preds = {"model": np.asarray(jax.jit(model.apply)({"params": params}, batch["inputs"]), np.float64)}
  preds |= baseline_predictions(xs, ys)
  curves = {name: (np.mean((p - ys) ** 2, axis=0) / d).tolist() for name, p in preds.items()}  # [n], k = 0 .. n-1
  excess = np.array(curves["model"][d:]) - np.array(curves["least_squares"][d:])

  fig = new_figure(figsize=(6, 4))
  ax = fig.subplots()
  for name, style in (("model", "o-"), ("least_squares", "s--"), ("averaging", ":"), ("zero", "-.")):
    ax.plot(range(len(curves[name])), curves[name], style, label=name.replace("_", " "))
  ax.axvline(d, color="gray", lw=0.8)
  ax.set_ylim(-0.05, 1.5)  # averaging starts far above (error / d = d + 1 at k = 1); the zero predictor is at 1
  ax.set_xlabel("in-context examples k")
  ax.set_ylabel("squared error / d")
  ax.set_title(f"Garg et al. 2022: linear regression, d = {d}", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(f"{workdir}/icl_error.png")
  return {"error_by_k": curves, "excess_error_k_ge_d": float(np.mean(excess)),
          "excess_error_at_d": float(excess[0]), "num_prompts": num_prompts}
