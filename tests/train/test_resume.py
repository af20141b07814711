"""Never lose work: a run killed (SIGKILL) or preempted (SIGTERM) in a real subprocess and restarted
with the same command ends with bit-identical parameters; corrupt checkpoints are skipped; checkpoints
restore onto other meshes; the data position is part of the checkpoint."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxformer.config import load_config
from jaxformer.train import load_run, train
from jaxformer.train.checkpoint import CheckpointError, Checkpoints, abstract_like, export_params
from jaxformer.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
# Big enough that a step takes a few milliseconds, so the run can be caught between checkpoints.
RUN = ["model.num_layers=2", "model.d_model=64", "model.num_heads=4", "model.mlp_dim=128", "model.max_len=64",
       "model.dropout_rate=0.1", "data.seq_len=64", "data.max_chars=100000", "train.steps=240",
       "train.batch_size=16", "train.log_every=20", "train.eval_every=0", "train.eval_batches=1",
       "train.eval_batch_size=8", "train.tensorboard=false", "train.average_last=3", "train.average_every=20",
       "checkpoint.every=40", "sample.num_tokens=8"]


def _cli(workdir, extra=()):
  cmd = [sys.executable, "-m", "jaxformer.cli", "train", "--config", "char_lm", "--workdir", str(workdir),
         "--no-progress", *[f"--config.{o}" for o in RUN + list(extra)]]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: 8 simulated ones are slower
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)})


def _params(workdir):
  return jax.device_get(load_run(workdir)[1])


def _assert_bitwise(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _wait_for_checkpoint(proc, ckpt_dir: Path, step: int, timeout=240):
  end = time.time() + timeout
  while not (ckpt_dir / str(step)).is_dir():
    assert proc.poll() is None, f"the run ended before checkpoint {step}:\n{proc.stdout.read()}"
    assert time.time() < end, "no checkpoint appeared"
    time.sleep(0.002)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  proc = _cli(workdir)
  out = proc.communicate()[0]
  assert proc.returncode == 0, out
  return workdir


@pytest.mark.parametrize("sig,after", [(signal.SIGKILL, random.Random(0).choice([40, 80, 120])),
                                       (signal.SIGTERM, 200)])  # 200: inside the averaging window (200-240)
def test_killed_run_resumes_bit_for_bit(uninterrupted, tmp_path, sig, after):
  step = after
  proc = _cli(tmp_path)
  _wait_for_checkpoint(proc, tmp_path / "checkpoints", step)
  proc.send_signal(sig)
  out = proc.communicate()[0]
  assert not (tmp_path / "results.json").exists()  # stopped mid-run
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  if sig == signal.SIGTERM:  # it saves where it is, says so, and exits with 128 + 15
    assert proc.returncode == 143, out
    assert f"at step {saved[-1]}: checkpoint saved" in out
  else:
    assert proc.returncode == -signal.SIGKILL
  assert saved[-1] >= step
  proc = _cli(tmp_path)  # the same command again
  out = proc.communicate()[0]
  assert proc.returncode == 0, out
  assert json.loads((tmp_path / "results.json").read_text())["resumed_from_step"] == saved[-1]
  _assert_bitwise(_params(tmp_path), _params(uninterrupted))
  steps = [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"]
  assert steps == [r["step"] for r in read_metrics(uninterrupted) if r["split"] == "train"]  # no repeats or extras


def test_corrupt_latest_checkpoint_is_skipped_and_export(uninterrupted, tmp_path, caplog):
  import shutil

  work = tmp_path / "run"
  shutil.copytree(uninterrupted, work)
  ckpts = Checkpoints(work / "checkpoints")
  older, newest = ckpts.steps()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          ckpts.manager.item_metadata(newest)["state"])  # the whole train state, any optimizer
  files = [p for p in (work / "checkpoints" / str(newest) / "state").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # a truncated write
  with caplog.at_level("WARNING"):
    state, data, average = ckpts.restore(abstract)
  assert f"checkpoint {work / 'checkpoints'}/{newest} cannot be read" in caplog.text
  assert (work / "checkpoints" / f"{newest}.corrupt").is_dir() and ckpts.steps() == [older]
  assert int(state["step"]) == older and data["batches"] == {"step": older}
  assert data["average_count"] == 1 and average is None  # no target given for the averaging sum
  # Nothing readable left: one clear error.
  for f in (work / "checkpoints" / str(older) / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    ckpts.restore(abstract)
  ckpts.close()
  # Export: the parameters of a checkpoint, without the optimizer state, as a loadable run directory.
  in_flight = uninterrupted / "checkpoints" / "280.orbax-checkpoint-tmp-1"  # a save the run is still writing
  in_flight.mkdir()
  out = export_params(uninterrupted, tmp_path / "export", step=older)
  assert in_flight.is_dir()  # the exporter opens the checkpoints read-only: it cleans nothing up
  in_flight.rmdir()
  model, exported, tokenizer = load_run(out)
  _assert_bitwise(exported, jax.device_get(state["params"]))
  assert tokenizer.vocab_size == model.cfg.vocab_size > 50 and model.cfg.num_layers == 2
  with pytest.raises(CheckpointError, match="no checkpoint of step 7"):
    export_params(uninterrupted, tmp_path / "export", step=7)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")
def test_restore_onto_another_mesh(tmp_path):
  """A state trained and saved on 8 devices (2 x 2 x 2) restores onto 4 devices and onto 1, identical."""
  import flax.linen as nn

  from jaxformer.models import build_model
  from jaxformer.parallel import RULES, make_mesh, shard_batch
  from jaxformer.train.loop import model_config
  from jaxformer.train.optim import make_optimizer
  from jaxformer.train.step import init_train_state, make_train_step

  config = load_config("char_lm", RUN)
  cfg = model_config(config, 98)
  model = build_model("decoder_only", cfg)
  tx, schedule = make_optimizer(config.optim, cfg.d_model, config.train.steps)
  batch = {k: np.random.default_rng(0).integers(1, 98, (16, 64)).astype(np.int32) for k in ("inputs", "targets")}

  def setup(sizes, devices):
    mesh = make_mesh(sizes, devices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
      return mesh, *init_train_state(model, "decoder_only", tx, batch, 1, mesh)

  mesh, state, shardings = setup({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    step = jax.jit(make_train_step(model, "decoder_only", tx, schedule), out_shardings=(shardings, None))
    for _ in range(2):
      state, _ = step(state, shard_batch(mesh, batch))
  ckpts = Checkpoints(tmp_path)
  ckpts.save(2, state, {"batches": {"step": 2}})
  ckpts.close()
  saved = jax.device_get(state)
  for sizes, devices in [({"fsdp": 2, "tensor": 2}, jax.devices()[:4]), ({"data": 1}, jax.devices()[:1])]:
    _, target, target_sh = setup(sizes, devices)
    ckpts = Checkpoints(tmp_path)
    restored, data, _ = ckpts.restore(abstract_like(target, target_sh))
    ckpts.close()
    assert data == {"batches": {"step": 2}}
    kernel = restored.params["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]
    assert kernel.sharding == target_sh.params["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]
    assert len(kernel.sharding.device_set) == len(devices)
    _assert_bitwise(jax.device_get(restored), saved)


def test_packed_data_position_is_restored(tmp_path):
  """A TFDS-packed LM: 4 steps, then the same run continued to 8, equals 8 straight (constant lr)."""
  import tensorflow_datasets as tfds

  def config(steps):
    c = load_config("char_lm", ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64",
                                "model.max_len=32", f"train.steps={steps}", "train.batch_size=8", "train.log_every=2",
                                "train.eval_every=0", "train.eval_batches=1", "train.eval_batch_size=8",
                                "train.tensorboard=false", "optim.schedule=constant", "optim.warmup_steps=0"])
    with c.unlocked():
      c.data = ml_collections.ConfigDict(dict(name="lm1b", vocab_size=90, seq_len=32))
      del c["sample"]
    return c

  with tfds.testing.mock_data(num_examples=64):
    train(config(8), tmp_path / "straight", progress=False)
    train(config(4), tmp_path / "resumed", progress=False)
    results = train(config(8), tmp_path / "resumed", progress=False)
  assert results["resumed_from_step"] == 4
  _assert_bitwise(_params(tmp_path / "resumed"), _params(tmp_path / "straight"))
  state = ocp.CheckpointManager(tmp_path / "straight" / "checkpoints",
                                item_handlers={"data": ocp.JsonCheckpointHandler()}).restore(
      8, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
  assert state["batches"]["index"] > 8 * 8  # packed: more documents than rows were read


def test_nan_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, monkeypatch):
  """The loss turns NaN at step 6: checkpoint 4 stays the newest, nothing is saved from the bad state."""
  import jax.numpy as jnp

  from jaxformer.train import loop

  make = loop.make_train_step

  def poisoned(*args, **kwargs):
    step_fn = make(*args, **kwargs)

    def step(state, batch):
      new, metrics = step_fn(state, batch)
      bad = state.step >= 5
      new = new.replace(params=jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params))
      return new, {**metrics, "loss": jnp.where(bad, jnp.nan, metrics["loss"])}
    return step

  monkeypatch.setattr(loop, "make_train_step", poisoned)
  config = load_config("char_lm", ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64",
                                   "model.max_len=32", "data.seq_len=32", "data.max_chars=60000", "train.steps=12",
                                   "train.batch_size=8", "train.log_every=10", "train.eval_every=0",
                                   "train.tensorboard=false", "checkpoint.every=4"])
  with pytest.raises(loop.NonFiniteLossError, match="non-finite loss or gradient at step 6:"):
    train(config, tmp_path, progress=False)
  ckpts = Checkpoints(tmp_path / "checkpoints")
  assert ckpts.steps() == [4]
  assert np.isfinite(ckpts.restore_params()["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]).all()
  ckpts.close()


def test_keep_last_and_best(tmp_path):
  config = load_config("char_lm", ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64",
                                   "model.max_len=32", "data.seq_len=32", "data.max_chars=60000", "train.steps=12",
                                   "train.batch_size=8", "train.log_every=4", "train.eval_every=2", "train.eval_batches=1",
                                   "train.eval_batch_size=8", "train.tensorboard=false", "optim.lr=0.05",
                                   "checkpoint.every=0", "checkpoint.keep=1", "checkpoint.keep_best=2"])
  train(config, tmp_path, progress=False)
  evals = {r["step"]: r["nll"] for r in read_metrics(tmp_path) if r["split"] == "eval"}
  best = sorted(evals, key=evals.get)[:2]
  ckpts = Checkpoints(tmp_path / "checkpoints")
  assert set(ckpts.steps()) == set(best) | {12}
  ckpts.close()


def test_checkpoint_of_another_model_is_an_error_not_corruption(uninterrupted, tmp_path):
  import shutil

  shutil.copytree(uninterrupted, tmp_path / "run")
  config = load_config("char_lm", RUN + ["model.d_model=32", "train.steps=250"])
  with pytest.raises(CheckpointError, match="holds a different model or optimizer.*parameters differ"):
    train(config, tmp_path / "run", progress=False)
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["200", "240"]  # nothing moved
  assert (tmp_path / "run" / "results.json").exists()  # nor the earlier run's outputs deleted


def test_each_process_resumes_its_own_data_position(monkeypatch):
  from jaxformer.train import loop

  saved = {"batches": {"index": 10}, "processes": [{"index": 10}, {"index": 13}]}
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert loop.own_data_state(saved) == {"index": 13}
  monkeypatch.setattr(jax, "process_count", lambda: 4)
  with pytest.raises(CheckpointError, match="written by 2 processes"):
    loop.own_data_state(saved)
  assert loop.own_data_state({"batches": {"step": 5}, "processes": [{"step": 5}] * 2}) == {"step": 5}
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  assert loop.own_data_state({"batches": {"index": 3}}) == {"index": 3}  # written before per-process states


def test_resume_false_starts_afresh(tmp_path):
  overrides = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64", "model.max_len=32",
               "data.seq_len=32", "data.max_chars=60000", "train.steps=4", "train.batch_size=8", "train.log_every=2",
               "train.eval_every=0", "train.tensorboard=false"]
  first = train(load_config("char_lm", overrides), tmp_path, progress=False)
  again = train(load_config("char_lm", overrides + ["checkpoint.resume=false"]), tmp_path, progress=False)
  assert "resumed_from_step" not in again and again["eval"] == first["eval"]  # the same run once more, from 0
  assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"] == [1, 2, 4]  # the old log replaced
