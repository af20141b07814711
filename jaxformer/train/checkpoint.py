"""Checkpoints of a training run (to resume it) and its exported parameters (to use it).

Layout of a run directory:
  model.json      {"model_kind": ..., "model": TransformerConfig fields}   (written at the start)
  tokenizer.json  the tokenizer                                            (written at the start)
  checkpoints/    `Checkpoints`: <step>/{state, data, average}, async, the last N + the best
  params/         orbax checkpoint of the final parameter pytree (`save_params`, or `export_params`
                  from any checkpoint): what `load_run`, `jaxformer eval` and `generate` read
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxformer.nn.config import TransformerConfig
from jaxformer.parallel.distributed import sync as _sync
from jaxformer.parallel.mesh import path_key

log = logging.getLogger("jaxformer.checkpoint")


def write_run_info(workdir: str | Path, model_kind: str, model_cfg: TransformerConfig, tokenizer) -> None:
  """model.json and tokenizer.json: what turns a parameter checkpoint into a usable model. A model that reads no
  tokens (tokenizer None, e.g. in-context regression) gets no tokenizer.json."""
  from jaxformer.data.tokenizers import save_tokenizer  # (imported here: the checkpoints need no data stack)
  workdir = Path(workdir)
  (workdir / "model.json").write_text(json.dumps({"model_kind": model_kind, "model": model_cfg.to_dict()}, indent=1))
  if tokenizer is not None:
    save_tokenizer(tokenizer, workdir / "tokenizer.json")


def save_params(workdir: str | Path, params) -> None:
  """`<workdir>/params/`, written whole or not at all (every process calls this; process 0 renames)."""
  workdir = Path(workdir).resolve()
  target, tmp = workdir / "params", workdir / "params.tmp"
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
  _sync("jaxformer_params_tmp")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp, params)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # never leave a half-written params/ behind
  _sync("jaxformer_params_done")


def save_run(workdir: str | Path, model_kind: str, model_cfg: TransformerConfig, params, tokenizer) -> None:
  save_params(workdir, params)
  if jax.process_index() == 0:
    write_run_info(workdir, model_kind, model_cfg, tokenizer)


def load_run(workdir: str | Path):
  """Returns (model, params, tokenizer) of a run saved by `save_run`; the tokenizer is None for a model with no
  vocabulary (model.vocab_size 0, e.g. in-context regression)."""
  from jaxformer.data.tokenizers import load_tokenizer
  from jaxformer.models import build_model
  workdir = Path(workdir).resolve()
  meta_path = workdir / "model.json"
  if not meta_path.is_file() or not (workdir / "params").is_dir():
    raise FileNotFoundError(f"{workdir} holds no finished run (model.json and params/ are written "
                            "when `jaxformer train` ends); train first or check the path")
  meta = json.loads(meta_path.read_text())
  model = build_model(meta["model_kind"], TransformerConfig.from_dict(meta["model"]))
  with ocp.StandardCheckpointer() as ckptr:  # onto this process's first device, whatever mesh saved it
    params = ckptr.restore(workdir / "params", _on_one_device(ckptr.metadata(workdir / "params").item_metadata))
  no_tokens = not meta["model"]["vocab_size"] and not (workdir / "tokenizer.json").exists()
  return model, params, None if no_tokens else load_tokenizer(workdir / "tokenizer.json")


def _on_one_device(metadata):
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected; the message says what was tried."""


class Checkpoints:
  """Training checkpoints under `<workdir>/checkpoints/<step>/` (orbax CheckpointManager).

  Each holds the train state (params, optimizer state, step, RNG) as `state/`, the data iterator's
  position as `data/` (JSON) and, during the averaging window, the running parameter sum as
  `average/`. Saves are asynchronous: `save` returns once the arrays are copied off the devices and
  the files are written by a background thread (orbax writes into a temporary directory and renames it
  when complete, so a killed process leaves no half checkpoint that looks finished).

  Kept: the last `keep` checkpoints plus the `keep_best` best by evaluation loss. `read_only` opens a
  directory another process may be writing to (export): it never creates, cleans or deletes anything.
  """

  def __init__(self, directory: str | Path, *, keep: int = 2, keep_best: int = 0, async_save: bool = True,
               read_only: bool = False):
    from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

    policies = [pp.LatestN(max(keep, 1))]
    if keep_best:  # reverse=True ranks by descending loss, so the lowest losses are the ones kept
      policies.append(pp.BestN(get_metric_fn=lambda m: m["loss"], reverse=True, n=keep_best,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies), enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
    self.directory = Path(directory).resolve()
    handlers = dict(state=ocp.PyTreeCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                    average=ocp.PyTreeCheckpointHandler())
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, *, average=None, eval_loss: float | None = None) -> None:
    items = dict(state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state))
    if average is not None:
      items["average"] = ocp.args.PyTreeSave(average)
    metrics = None if eval_loss is None else {"loss": float(eval_loss)}
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def restore(self, abstract_state, abstract_average=None, step: int | None = None):
    """The newest checkpoint that reads back whole (or exactly `step`): (state, data_state, average).
    A checkpoint that fails to read (on any process) is logged, moved aside to `<step>.corrupt` and the
    next older one tried; returns None when there are none, raises CheckpointError when none is
    readable, or at once when a checkpoint holds a different model or optimizer (nothing is moved)."""
    steps = [step] if step is not None else self.steps()[::-1]
    failures = []
    for s in steps:
      error = None
      try:
        saved = self.manager.item_metadata(s)["state"]
        data = self.manager.restore(s, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
      except Exception as e:  # noqa: BLE001 - unreadable metadata: a damaged checkpoint
        error, saved = e, None
      if saved is not None and (mismatch := _mismatch(saved, abstract_state)):
        raise CheckpointError(f"checkpoint {self.directory}/{s} holds a different model or optimizer than this "
                              f"config ({mismatch}); use another --workdir, or --config.checkpoint.resume=false "
                              "to start over in this one")
      if error is None:
        try:
          items = dict(state=_restore_args(abstract_state))
          if data.get("average_count") and abstract_average is not None:
            items["average"] = _restore_args(abstract_average)
          restored = self.manager.restore(s, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - any read failure means: try the previous checkpoint
          error = e
      if _everywhere(error is None):  # processes read different files: all must have read it
        return restored["state"], data, restored.get("average") if "average" in items else None
      reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if error else "another process failed"
      failures.append(f"step {s}: {reason}")
      log.warning("checkpoint %s/%d cannot be read (%s); trying an older one", self.directory, s, failures[-1])
      self._set_aside(s)
    if failures:
      raise CheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(failures) +
                            ". Delete the directory to start over, or point --workdir elsewhere")
    return None

  def restore_params(self, step: int | None = None):
    """Only the parameters of checkpoint `step` (default: the newest), on the default device."""
    step = self.steps()[-1] if step is None else step
    if step not in self.steps():
      raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; there are {self.steps()}")
    target = {"params": _on_one_device(self.manager.item_metadata(step)["state"]["params"])}
    args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      path, n = self.directory / str(step), 0
      while (target := path.with_name(f"{step}.corrupt" + (f"-{n}" if n else ""))).exists():
        n += 1
      if path.exists():
        path.rename(target)
    _sync(f"jaxformer_set_aside_{step}")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _mismatch(saved_metadata, abstract_state) -> str | None:
  """What differs between a checkpoint's train state and this run's: the parameters (names, shapes)
  or, for the optimizer state and the rest, the shapes of all arrays."""
  def shapes(tree):
    return {path_key(path): tuple(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  params = getattr(abstract_state, "params", None)
  if params is not None:
    saved, wanted = shapes(saved_metadata["params"]), shapes(params)
    if saved != wanted:
      diff = sorted(set(saved.items()) ^ set(wanted.items()))[:3]
      return f"parameters differ, e.g. {diff}"
  saved, wanted = sorted(shapes(saved_metadata).values()), sorted(shapes(abstract_state).values())
  if saved != wanted:
    return f"the state holds {len(saved)} arrays, this run {len(wanted)} (another optimizer?)"
  return None


def _everywhere(ok: bool) -> bool:
  """True when `ok` holds on every process."""
  if jax.process_count() == 1:
    return ok
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _restore_args(abstract):
  return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))


def export_params(workdir: str | Path, out: str | Path, step: int | None = None) -> Path:
  """Write the parameters of a training checkpoint (default: the newest) as a run directory that
  `load_run`, `jaxformer eval` and `jaxformer generate` read: out/{params/, model.json, tokenizer.json}.
  Optimizer state is left behind (a third of the size for Adam)."""
  workdir, out = Path(workdir), Path(out)
  if not (workdir / "model.json").is_file() or not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(f"{workdir} holds no training checkpoints (checkpoints/ and model.json); "
                            "pass the --workdir of a `jaxformer train` run")
  ckpts = Checkpoints(workdir / "checkpoints", read_only=True)  # the run may still be writing
  try:
    if not ckpts.steps():
      raise CheckpointError(f"{workdir / 'checkpoints'} holds no finished checkpoint yet")
    params = ckpts.restore_params(step)
  finally:
    ckpts.close()
  out.mkdir(parents=True, exist_ok=True)
  save_params(out, params)
  if out.resolve() != workdir.resolve():
    shutil.copyfile(workdir / "model.json", out / "model.json")
    if (workdir / "tokenizer.json").exists():  # a model that reads no tokens has none
      shutil.copyfile(workdir / "tokenizer.json", out / "tokenizer.json")
  return out


def abstract_like(tree, shardings=None):
  """ShapeDtypeStructs (with the given shardings) describing `tree`: a restore target."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
