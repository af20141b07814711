"""End to end: `train()` on the real experiment configs, shrunk to seconds."""
import json

import jax
import numpy as np
import pytest

from jaxformer.config import load_config
from jaxformer.decode import generate_sliding
from jaxformer.train import NonFiniteLossError, load_run, train
from jaxformer.train.metrics import read_metrics

TINY_LM = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64", "model.max_len=32",
           "data.seq_len=32", "data.max_chars=60000", "train.steps=60", "train.batch_size=8", "train.log_every=10",
           "train.eval_every=30", "train.eval_batches=2", "train.eval_batch_size=8", "sample.num_tokens=40",
           "optim.warmup_steps=5"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("char_lm")
  return workdir, train(load_config("char_lm", TINY_LM), workdir, progress=False)


def test_lm_run_learns_and_writes_its_outputs(lm_run):
  workdir, results = lm_run
  for name in ("results.json", "metrics.jsonl", "loss.png", "config.json", "model.json", "tokenizer.json"):
    assert (workdir / name).is_file(), name
  assert any((workdir / "tensorboard").glob("events.out.tfevents.*"))
  records = read_metrics(workdir)
  train_losses = [r["loss"] for r in records if r["split"] == "train"]
  assert train_losses[-1] < train_losses[0] - 0.5
  assert {"lr", "grad_norm", "param_norm", "update_norm", "tokens_per_s", "accuracy", "perplexity"} <= set(records[1])
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [30, 60]
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 10, 20, 30, 40, 50, 60]
  assert results["eval"]["nll"] < 3.5  # log(98) = 4.6 at chance
  assert json.loads((workdir / "results.json").read_text())["eval"] == results["eval"]
  assert len(results["sample"]) == len("def ") + 40


def test_saved_run_restores_exactly_and_generates(lm_run):
  workdir, results = lm_run
  model, params, tokenizer = load_run(workdir)
  prompt = np.asarray([tokenizer.encode("def ")], np.int32)
  out = generate_sliding(model, params, prompt, jax.random.key(0), max_new_tokens=40, temperature=0.8, context=32)
  assert tokenizer.decode(out[0]) == results["sample"]  # same seed, same params -> same text
  greedy = generate_sliding(model, params, prompt, jax.random.key(1), max_new_tokens=10, temperature=0.0, context=32)
  assert np.array_equal(greedy, generate_sliding(model, params, prompt, jax.random.key(2), max_new_tokens=10,
                                         temperature=0.0, context=32))


def test_seq2seq_run_reports_exact_match(tmp_path):
  config = load_config("seq2seq_reverse", ["train.steps=30", "train.log_every=10", "train.eval_every=0",
                                           "train.eval_batches=1", "train.eval_batch_size=16", "data.max_len=5",
                                           "model.num_layers=1", "train.tensorboard=false"])
  results = train(config, tmp_path, progress=False)
  assert 0.0 <= results["exact_match"] <= 1.0
  losses = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
  assert losses[-1] < losses[0] - 0.3  # it trains, not just runs
  assert not (tmp_path / "tensorboard").exists()


def test_nan_loss_stops_with_the_step(tmp_path):
  config = load_config("char_lm", TINY_LM + ["train.steps=6", "train.log_every=3", "train.eval_every=0"])
  config.optim.lr = float("nan")
  with pytest.raises(NonFiniteLossError, match="non-finite loss or gradient at step 2:"):
    train(config, tmp_path, progress=False)


def test_model_and_data_must_fit(tmp_path):
  with pytest.raises(ValueError, match="cannot train on"):
    train(load_config("char_lm", ["model_kind=encoder_decoder"]), tmp_path, progress=False)
