"""`train(config, workdir)`: the whole training run, importable from a notebook.

Reads like a recipe: data -> model -> optimizer -> jitted steps -> loop with
logging and periodic eval -> final eval, a task-specific demo (text sample or
greedy-decoding exact match), a loss curve, the saved params and results.json.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import signal
import threading
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxformer.data import build_dataset, train_batches
from jaxformer.decode import generate_sliding
from jaxformer.models import build_model
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.variants import check_kind
from jaxformer.parallel import RULES, check_batch, initialize_distributed, is_main_process, make_mesh
from jaxformer.parallel.mesh import common_shape, put_global_batch, shard_batch
from jaxformer.train.checkpoint import CheckpointError, Checkpoints, abstract_like, save_params, write_run_info
from jaxformer.train.diagnostics import flat_scalars, make_diagnostics_fn
from jaxformer.train.evaluate import evaluate, exact_match, translation_bleu
from jaxformer.train.metrics import MetricWriter, plot_loss_curves
from jaxformer.train.optim import make_optimizer
from jaxformer.train.step import make_eval_step, make_train_step, plan_train_state

log = logging.getLogger("jaxformer.train")
_DATA_FOR_MODEL = {"decoder_only": "lm", "encoder_decoder": "seq2seq", "encoder_classifier": "classification",
                   "dual_encoder_classifier": "pair_classification", "in_context_regression": "regression"}


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


def _prepare_workdir(workdir: Path, resume_step: int | None, clear_checkpoints: bool = False) -> None:
  """Resuming: drop the metrics logged after the checkpoint (they will be logged again). Starting anew:
  clear what an earlier run left, loudly."""
  workdir.mkdir(parents=True, exist_ok=True)
  if resume_step is not None:
    path = workdir / "metrics.jsonl"
    if path.exists():
      keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
      path.write_text("".join(line + "\n" for line in keep))
    return
  stale = [workdir / n for n in ("metrics.jsonl", "tensorboard", "params", "results.json", "loss.png",
                                  "data_state.json") + (("checkpoints",) if clear_checkpoints else ())]
  stale = [p for p in stale if p.exists()]
  if stale:
    log.warning("workdir %s holds an earlier run; replacing %s", workdir, [p.name for p in stale])
  for p in stale:
    shutil.rmtree(p) if p.is_dir() else p.unlink()


class Preempted(KeyboardInterrupt):
  """SIGTERM / SIGINT arrived; a checkpoint of the step reached was saved first."""


class _StopSignals:
  """Turns SIGTERM and SIGINT into a flag the loop checks after every step (a second signal kills).

  With several processes, SIGTERM reaches each at a different step; JAX's coordination service then
  agrees on one step for all (`reached_preemption_sync_point`), so the handlers are left to it."""

  def __init__(self):
    self.received = None
    self.previous = {}
    self.multi = jax.process_count() > 1

  def check(self, step: int) -> str | None:
    if self.multi and self.received is None:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = "SIGTERM"
    return self.received

  def __enter__(self):
    if not self.multi and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self.previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.received is not None:  # asked twice: stop now
      signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self.previous.items():
      signal.signal(sig, handler)


def train(config, workdir: str | Path, *, progress: bool = True) -> dict:
  """Train the experiment `config` in `workdir`; returns the results dict (also saved as results.json).

  A workdir that holds checkpoints of the same experiment is resumed from the newest readable one
  (params, optimizer state, step, RNG and the data position), so rerunning an interrupted command
  continues exactly where it stopped. SIGTERM / SIGINT save a checkpoint and raise `Preempted`.
  """
  t_start = time.time()
  initialize_distributed(config.get("distributed"))
  workdir = Path(workdir)
  tc, cc = config.train, _checkpoint_settings(config)
  main = is_main_process()
  if not main:  # the other processes only warn: one log per run
    logging.getLogger("jaxformer").setLevel(logging.WARNING)
  mesh = make_mesh(config.get("mesh"))
  variable_shapes = config.data.get("batching") == "bucket"  # rows and length vary with the length bucket
  check_batch(mesh, None if variable_shapes else tc.batch_size, tc.grad_accum,
              None if variable_shapes else config.data.get("seq_len"))
  ds = build_dataset(config.data, config.seed, cache_dir=workdir)
  if _DATA_FOR_MODEL.get(config.model_kind) != ds.kind:
    raise ValueError(f"model_kind={config.model_kind!r} cannot train on data.name={config.data.name!r} "
                     f"(a {ds.kind} dataset)")
  cfg = model_config(config, ds.vocab_size, getattr(ds, "num_classes", None))
  if getattr(getattr(ds, "tokenizer", None), "kind", None) == "gpt2" and cfg.pad_id == 0:
    raise ValueError("GPT-2's id 0 is a real token ('!'), not padding: set model.pad_id=None (as "
                     "TransformerConfig.gpt2 does), or every '!' is masked out and unscored")
  model = build_model(config.model_kind, cfg)
  tx, schedule = make_optimizer(config.optim, cfg.d_model, tc.steps)
  local_batch = tc.batch_size // jax.process_count()  # this process's rows
  batches = train_batches(ds, local_batch)
  open_checkpoints = lambda: Checkpoints(workdir / "checkpoints", keep=cc["keep"],  # noqa: E731
                                         keep_best=cc["keep_best"], async_save=cc["async_save"])
  ckpts = open_checkpoints()
  if not cc["resume"] and ckpts.steps():
    ckpts.close()
    if main:
      _prepare_workdir(workdir, None, clear_checkpoints=True)
    ckpts = open_checkpoints()

  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    example = next(train_batches(ds, local_batch))
    check_kind(cfg, config.model_kind, example)
    abstract, state_sh, init_state = plan_train_state(model, config.model_kind, tx, example, config.seed, mesh)
    average = ParamAverage(tc.average_last, tc.average_every, tc.steps)
    restored = ckpts.restore(abstract_like(abstract, state_sh), abstract_like(abstract.params, state_sh.params)) \
        if ckpts.steps() else None
    if restored is not None:
      state, data_state, average_sum = restored
      batches.set_state(own_data_state(data_state))
      average.set(average_sum, data_state.get("average_count", 0))
      log.info("resumed from %s at step %d", ckpts.directory, int(state.step))
    else:
      state = init_state()
    start = int(state.step)
    if main:
      _prepare_workdir(workdir, start if restored is not None else None)
      (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
      write_run_info(workdir, config.model_kind, cfg, ds.tokenizer)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log.info("%s with %.2fM parameters on %s; mesh %s", config.model_kind, n_params / 1e6, _hardware(),
             dict(mesh.shape))

    train_step = jax.jit(make_train_step(model, config.model_kind, tx, schedule,
                                         label_smoothing=config.optim.label_smoothing, grad_accum=tc.grad_accum),
                         out_shardings=(state_sh, None), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model, config.model_kind))
    eval_set = [put_global_batch(mesh, b) for b in ds.eval_batches(tc.eval_batches, tc.eval_batch_size)]
    diagnose = make_diagnostics_fn(model, config.model_kind) if tc.get("diagnostics") else None

    def checkpoint(step, eval_loss=None):
      position = batches.get_state()
      data_state = {"batches": position, "processes": all_data_states(position), "average_count": average.count}
      ckpts.save(step, state, data_state, average=average.sum, eval_loss=eval_loss)

    def flush(write: bool = True):  # the only host sync of the loop: log the window, fail on a non-finite loss
      nonlocal pending, window_start, compile_s
      host = jax.device_get(pending)
      first = not compile_s
      if first:  # the first step pays for compilation: no throughput for it
        compile_s = time.time() - window_start
      avg = _window_metrics(host, first_step=done + 1 - len(host), elapsed=time.time() - window_start)
      if first:
        del avg["tokens_per_s"]
      if write:
        writer.write(done, "train", avg)
      bar.set_postfix(loss=f"{avg['loss']:.3f}", acc=f"{avg['accuracy']:.3f}")
      pending, window_start = [], time.time()

    writer = MetricWriter(workdir, tensorboard=tc.tensorboard, purge_step=start + 1 if start else None)
    pending, window_start, compile_s = [], time.time(), None
    bar = tqdm(range(start, tc.steps), desc="train", disable=not (progress and main), dynamic_ncols=True,
               initial=start, total=tc.steps)
    try:  # whatever stops the loop, the checkpoints being written are finished first
      with _StopSignals() as signals:
        for step in bar:
          batch = next(batches)
          if variable_shapes:
            batch = common_shape(mesh, batch, tc.grad_accum)
          state, metrics = train_step(state, shard_batch(mesh, batch))
          average.maybe_add(step + 1, state.params)
          pending.append(metrics)
          done, ev = step + 1, None
          last = done == tc.steps
          evaluating = tc.eval_every and (done % tc.eval_every == 0 or last)
          if step == start or done % tc.log_every == 0 or last:
            # the first step measures compilation; after a resume it is not a logging step of its own
            flush(write=not (step == start and start and done % tc.log_every and not last))
          if evaluating:
            ev = evaluate(eval_step, state.params, eval_set)
            writer.write(done, "eval", ev)
            if diagnose is not None:  # on the first evaluation batch
              stats, maps = diagnose(state.params, eval_set[0])
              writer.write(done, "attention", flat_scalars(stats))
              writer.write_maps(done, maps)
            if main:
              bar.write(f"step {done:>6}  eval loss {ev['nll']:.4f}  ppl {ev['perplexity']:.3f}  "
                        f"acc {ev['accuracy']:.4f}")
          stop = signals.check(done)  # after the evaluation too: a signal during it is answered now
          # keep_best ranks checkpoints by eval loss, so every evaluated step is then saved as well
          if last or (cc["every"] and done % cc["every"] == 0) or stop or (cc["keep_best"] and evaluating):
            if pending:
              flush()  # never checkpoint a state whose loss was not checked
            checkpoint(done, ev["nll"] if ev else None)
          if stop and not last:
            raise Preempted(f"{stop} at step {done}: checkpoint saved in {ckpts.directory}; "
                            "rerun the same command to continue")
    except BaseException:
      bar.close()
      writer.close()
      ckpts.wait()
      ckpts.close()
      raise
    bar.close()
    writer.close()
    ckpts.wait()

    params = state.params
    results = {"experiment": config.get("name", ""), "step": int(state.step), "num_params": int(n_params),
               "compile_s": round(compile_s or 0.0, 2), "train_s": round(time.time() - t_start, 2),
               "hardware": _hardware(), "mesh": dict(mesh.shape), "versions": _versions()}
    if start:
      results["resumed_from_step"] = start
    if average.count > 1:
      params = average.result()
      results["averaged_checkpoints"] = average.count
      log.info("final parameters: the average of the last %d snapshots (every %d steps)", average.count,
               tc.average_every)
    save_params(workdir, params)  # first: a failing evaluation loses nothing
    ckpts.close()
    results["eval"] = evaluate(eval_step, params, eval_set)
    if ds.kind == "seq2seq" and hasattr(ds, "texts"):
      results |= translation_bleu(model, params, ds, config.eval, ds.data.eval_split)
    elif ds.kind == "seq2seq":
      results["exact_match"] = exact_match(model, params, ds, ds.eval_batches(tc.eval_batches, tc.eval_batch_size))
    elif ds.kind == "lm" and "sample" in config:
      results["sample"] = sample_text(model, params, ds.tokenizer, config.sample, config.seed, context=ds.seq_len)
  results["total_s"] = round(time.time() - t_start, 2)
  if main:
    (workdir / "data_state.json").write_text(json.dumps(batches.get_state()))
    if (workdir / "metrics.jsonl").exists():
      plot_loss_curves(workdir)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
  return results


def all_data_states(state: dict) -> list[dict]:
  """Every process's iterator state (each reads its own shard, so the positions differ); the
  checkpoint's JSON is written by process 0 alone, so it carries them all."""
  if jax.process_count() == 1:
    return [state]
  from jax.experimental import multihost_utils
  keys = sorted(state)
  rows = multihost_utils.process_allgather(np.array([int(state[k]) for k in keys], np.int64))
  return [dict(zip(keys, map(int, row))) for row in np.asarray(rows).reshape(jax.process_count(), len(keys))]


def own_data_state(data_state: dict) -> dict:
  """This process's iterator state from a checkpoint's data JSON."""
  states = data_state.get("processes") or [data_state["batches"]]
  if len(states) == jax.process_count():
    return states[jax.process_index()]
  if all(s == states[0] for s in states):  # e.g. generated tasks: the same position everywhere
    return states[0]
  raise CheckpointError(f"the checkpoint was written by {len(states)} processes reading different data shards; "
                        f"resume it with {len(states)} processes (this run has {jax.process_count()})")


_CHECKPOINT_DEFAULTS = dict(every=1000, keep=2, keep_best=0, async_save=True, resume=True)


def _checkpoint_settings(config) -> dict:
  """config.checkpoint with defaults (every: steps between saves, 0 = only at the end and on SIGTERM;
  keep: the newest kept; keep_best: also keep the lowest eval losses; resume: continue from the workdir)."""
  given = config.get("checkpoint") or {}
  unknown = set(given) - set(_CHECKPOINT_DEFAULTS)
  if unknown:
    raise ValueError(f"unknown checkpoint settings {sorted(unknown)}; known: {sorted(_CHECKPOINT_DEFAULTS)}")
  return {**_CHECKPOINT_DEFAULTS, **dict(given)}


class ParamAverage:
  """The paper's checkpoint averaging: the mean of the last `last` parameter snapshots, taken every
  `every` steps counting back from the final step (so the final parameters are always included).
  Keeps one running sum on the devices (sharded like the parameters), not the snapshots; it is part
  of the checkpoints, so a resumed run averages the same snapshots. Off when `last` <= 1."""

  def __init__(self, last: int, every: int, total_steps: int):
    if last > 1 and every <= 0:
      raise ValueError(f"train.average_last={last} needs train.average_every > 0 (steps between snapshots)")
    self.last, self.every, self.total = last, every, total_steps
    self.count, self.sum = 0, None

  def maybe_add(self, step: int, params) -> None:
    """Call after every step with the number of steps done."""
    if self.last <= 1 or (self.total - step) % self.every or self.total - step >= self.last * self.every:
      return
    self.sum = _copy(params) if self.sum is None else _add(self.sum, params)
    self.count += 1

  def set(self, total, count: int) -> None:
    self.sum, self.count = (total, count) if count else (None, 0)

  def result(self):
    return jax.jit(lambda s: jax.tree.map(lambda x: (x / self.count).astype(x.dtype), s))(self.sum)


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))  # the train step donates the params it is given
_add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b), donate_argnums=0)


def _hardware() -> str:
  d = jax.devices()[0]
  host = f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores"  # the cores this process may use
  return f"{len(jax.devices())}x {d.device_kind} ({d.platform}), {host}"


def _versions() -> dict[str, str]:
  import flax
  import optax
  return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
          "optax": optax.__version__}
