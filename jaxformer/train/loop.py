"""`train(config, workdir)`: the whole training run, importable from a notebook.

Reads like a recipe: data -> model -> optimizer -> jitted steps -> loop with
logging and periodic eval -> final eval, a task-specific demo (text sample or
greedy-decoding exact match), a loss curve, the saved params and results.json.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxformer.data import build_dataset, train_batches
from jaxformer.decode import generate_sliding
from jaxformer.models import build_model
from jaxformer.nn.config import TransformerConfig
from jaxformer.train.checkpoint import save_run
from jaxformer.train.evaluate import evaluate, exact_match, translation_bleu
from jaxformer.train.metrics import MetricWriter, plot_loss_curves
from jaxformer.train.optim import make_optimizer
from jaxformer.train.step import create_train_state, init_params, make_eval_step, make_train_step

log = logging.getLogger("jaxformer.train")
_DATA_FOR_MODEL = {"decoder_only": "lm", "encoder_decoder": "seq2seq", "encoder_classifier": "classification"}


class NonFiniteLossError(FloatingPointError):
  pass


def model_config(config, vocab_size: int, num_classes: int | None = None) -> TransformerConfig:
  """config.model as a TransformerConfig; vocab_size 0 means "take it from the data" (and the
  classifier's num_classes always comes from the data when it has one)."""
  fields = config.model.to_dict()
  if num_classes is not None:
    fields["num_classes"] = num_classes
  if not fields.get("vocab_size"):
    fields["vocab_size"] = vocab_size
  elif fields["vocab_size"] < vocab_size:
    raise ValueError(f"model.vocab_size={fields['vocab_size']} is smaller than the tokenizer's "
                     f"{vocab_size}; set it to 0 to take the tokenizer's size")
  return TransformerConfig.from_dict(fields)


def sample_text(model, params, tokenizer, sample_cfg, seed: int, context: int) -> str:
  prompt = jnp.asarray([tokenizer.encode(sample_cfg.prompt)], jnp.int32)
  out = generate_sliding(model, params, prompt, jax.random.key(seed), max_new_tokens=sample_cfg.num_tokens,
                 temperature=sample_cfg.temperature, top_k=sample_cfg.top_k or None, context=context)
  return tokenizer.decode(np.asarray(out[0]))


def _window_metrics(host: list[dict], first_step: int, elapsed: float) -> dict[str, float]:
  """Average the per-step metrics of one logging window; fail fast on a non-finite loss."""
  for i, m in enumerate(host):
    if not all(math.isfinite(float(m[k])) for k in ("loss", "grad_norm")):
      raise NonFiniteLossError(f"non-finite loss or gradient at step {first_step + i}: "
                               f"{ {k: float(v) for k, v in m.items()} }; lower optim.lr or check the data")
  avg = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != "tokens"}
  avg["tokens_per_s"] = float(sum(m["tokens"] for m in host)) / max(elapsed, 1e-9)
  avg["perplexity"] = math.exp(min(avg["nll"], 50.0))
  return avg


def _fresh_workdir(workdir: Path) -> None:
  """This loop does not resume yet: clear what an earlier run left, loudly."""
  stale = [workdir / n for n in ("metrics.jsonl", "tensorboard", "params", "results.json", "loss.png",
                                  "data_state.json")]
  stale = [p for p in stale if p.exists()]
  if stale:
    log.warning("workdir %s holds an earlier run; replacing %s", workdir, [p.name for p in stale])
  for p in stale:
    shutil.rmtree(p) if p.is_dir() else p.unlink()
  workdir.mkdir(parents=True, exist_ok=True)


def train(config, workdir: str | Path, *, progress: bool = True) -> dict:
  """Train the experiment `config` in `workdir`; returns the results dict (also saved as results.json)."""
  t_start = time.time()
  workdir = Path(workdir)
  tc = config.train
  ds = build_dataset(config.data, config.seed, cache_dir=workdir)
  if _DATA_FOR_MODEL.get(config.model_kind) != ds.kind:
    raise ValueError(f"model_kind={config.model_kind!r} cannot train on data.name={config.data.name!r} "
                     f"(a {ds.kind} dataset)")
  cfg = model_config(config, ds.vocab_size, getattr(ds, "num_classes", None))
  model = build_model(config.model_kind, cfg)
  tx, schedule = make_optimizer(config.optim, cfg.d_model, tc.steps)
  batches = train_batches(ds, tc.batch_size)
  params, _ = init_params(model, config.model_kind, next(train_batches(ds, tc.batch_size)), config.seed)
  state = create_train_state(params, tx, config.seed)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  log.info("%s with %.2fM parameters on %s", config.model_kind, n_params / 1e6, jax.devices()[0].platform)

  train_step = jax.jit(make_train_step(model, config.model_kind, tx, schedule,
                                       label_smoothing=config.optim.label_smoothing,
                                       grad_accum=tc.grad_accum), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, config.model_kind))
  eval_set = ds.eval_batches(tc.eval_batches, tc.eval_batch_size)

  _fresh_workdir(workdir)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  writer = MetricWriter(workdir, tensorboard=tc.tensorboard)
  pending, window_start, compile_s = [], time.time(), None
  average = ParamAverage(tc.average_last, tc.average_every, tc.steps)
  bar = tqdm(range(tc.steps), desc="train", disable=not progress, dynamic_ncols=True)
  for step in bar:
    state, metrics = train_step(state, next(batches))
    average.maybe_add(step + 1, state.params)
    pending.append(metrics)
    last = step + 1 == tc.steps
    if step == 0 or (step + 1) % tc.log_every == 0 or last:
      host = jax.device_get(pending)  # the only host sync of the loop
      if step == 0:  # the first step pays for compilation: no throughput for it
        compile_s = time.time() - window_start
      avg = _window_metrics(host, first_step=step + 2 - len(host), elapsed=time.time() - window_start)
      if step == 0:
        del avg["tokens_per_s"]
      writer.write(step + 1, "train", avg)
      bar.set_postfix(loss=f"{avg['loss']:.3f}", acc=f"{avg['accuracy']:.3f}")
      pending, window_start = [], time.time()
    if tc.eval_every and ((step + 1) % tc.eval_every == 0 or last):
      ev = evaluate(eval_step, state.params, eval_set)
      writer.write(step + 1, "eval", ev)
      bar.write(f"step {step + 1:>6}  eval loss {ev['nll']:.4f}  ppl {ev['perplexity']:.3f}  "
                f"acc {ev['accuracy']:.4f}")
  bar.close()
  writer.close()

  params = state.params
  results = {"experiment": config.get("name", ""), "step": int(state.step), "num_params": int(n_params),
             "compile_s": round(compile_s or 0.0, 2), "train_s": round(time.time() - t_start, 2),
             "hardware": _hardware(), "versions": _versions()}
  if average.count > 1:
    params = average.result()
    results["averaged_checkpoints"] = average.count
    log.info("final parameters: the average of the last %d snapshots (every %d steps)", average.count,
             tc.average_every)
  save_run(workdir, config.model_kind, cfg, params, ds.tokenizer)  # first: a failing evaluation loses nothing
  results["eval"] = evaluate(eval_step, params, eval_set)
  if ds.kind == "seq2seq" and hasattr(ds, "texts"):
    results |= translation_bleu(model, params, ds, config.eval, ds.data.eval_split)
  elif ds.kind == "seq2seq":
    results["exact_match"] = exact_match(model, params, ds, ds.eval_batches(tc.eval_batches, tc.eval_batch_size))
  elif ds.kind == "lm" and "sample" in config:
    results["sample"] = sample_text(model, params, ds.tokenizer, config.sample, config.seed, context=ds.seq_len)
  (workdir / "data_state.json").write_text(json.dumps(batches.get_state()))
  if (workdir / "metrics.jsonl").exists():
    plot_loss_curves(workdir)
  results["total_s"] = round(time.time() - t_start, 2)
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  return results


class ParamAverage:
  """The paper's checkpoint averaging: the mean of the last `last` parameter snapshots, taken every
  `every` steps counting back from the final step (so the final parameters are always included).
  Keeps one running sum on the host, not the snapshots. Off when `last` <= 1."""

  def __init__(self, last: int, every: int, total_steps: int):
    if last > 1 and every <= 0:
      raise ValueError(f"train.average_last={last} needs train.average_every > 0 (steps between snapshots)")
    self.last, self.every, self.total = last, every, total_steps
    self.count, self.sum = 0, None

  def maybe_add(self, step: int, params) -> None:
    """Call after every step with the number of steps done."""
    if self.last <= 1 or (self.total - step) % self.every or self.total - step >= self.last * self.every:
      return
    host = jax.device_get(params)
    self.sum = host if self.sum is None else jax.tree.map(np.add, self.sum, host)
    self.count += 1

  def result(self):
    return jax.device_put(jax.tree.map(lambda x: (x / self.count).astype(x.dtype), self.sum))


def _hardware() -> str:
  d = jax.devices()[0]
  return f"{len(jax.devices())}x {d.device_kind} ({d.platform}), {platform.machine()}"


def _versions() -> dict[str, str]:
  import flax
  import optax
  return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
          "optax": optax.__version__}
