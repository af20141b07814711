"""Two local processes joined by `jax.distributed` (coordinator on 127.0.0.1, CPU collectives) train
a few steps through the real command line and match the single-process run."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxformer.config import load_config
from jaxformer.train import load_run, train
from jaxformer.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
RUN = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64", "model.max_len=32",
       "model.dropout_rate=0.1", "data.seq_len=32", "data.max_chars=60000", "train.steps=3", "train.batch_size=8",
       "train.log_every=1", "train.eval_every=0", "train.eval_batches=1", "train.eval_batch_size=8",
       "train.tensorboard=false", "sample.num_tokens=4"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
  procs = [subprocess.Popen(
      [sys.executable, "-m", "jaxformer.cli", "train", "--config", "char_lm", "--workdir", str(tmp_path / "two"),
       "--no-progress", *[f"--config.{o}" for o in RUN], f"--config.distributed.coordinator_address=127.0.0.1:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out
  assert "process 1 of 2" in outs[1] and "mesh {'data': 2" in outs[0]
  two = [r["loss"] for r in read_metrics(tmp_path / "two") if r["split"] == "train"]
  one_results = train(load_config("char_lm", RUN + ["mesh.data=-1"]), tmp_path / "one", progress=False)
  one = [r["loss"] for r in read_metrics(tmp_path / "one") if r["split"] == "train"]
  assert len(two) == len(one) == 3
  np.testing.assert_allclose(two, one, rtol=1e-5)
  np.testing.assert_allclose(
      np.concatenate([np.ravel(x) for x in _leaves(tmp_path / "two")]),
      np.concatenate([np.ravel(x) for x in _leaves(tmp_path / "one")]), rtol=1e-5, atol=1e-6)
  assert one_results["step"] == 3


def _leaves(workdir):
  import jax
  return jax.tree.leaves(jax.device_get(load_run(workdir)[1]))


def test_sigterm_to_one_process_stops_both_at_one_step_and_they_resume(tmp_path):
  """A preemption notice reaches one host: JAX's coordination service makes every process stop at the same
  step, all save that checkpoint together and exit 143; the same commands then finish the run from there."""
  import json
  import re
  import signal
  import time

  def launch(port):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = RUN + ["model.num_layers=2", "model.d_model=64", "data.seq_len=64", "model.max_len=64",
                 "train.steps=400", "train.log_every=50", "checkpoint.every=100"]
    return [subprocess.Popen(
        [sys.executable, "-m", "jaxformer.cli", "train", "--config", "char_lm", "--workdir", str(tmp_path),
         "--no-progress", *[f"--config.{o}" for o in run], f"--config.distributed.coordinator_address=127.0.0.1:{port}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]

  procs = launch(_free_port())
  end = time.time() + 240
  while not (tmp_path / "checkpoints" / "100").is_dir():
    assert all(p.poll() is None for p in procs) and time.time() < end, "no checkpoint 100"
    time.sleep(0.005)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [143, 143], outs
  steps = {int(re.search(r"SIGTERM at step (\d+)", out).group(1)) for out in outs}
  assert len(steps) == 1 and (tmp_path / "checkpoints" / str(*steps)).is_dir()
  procs = launch(_free_port())
  outs = [p.communicate(timeout=240)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert json.loads((tmp_path / "results.json").read_text())["resumed_from_step"] == steps.pop()
