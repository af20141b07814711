"""The Attention Is All You Need WMT14 configs: the paper's settings, and a mocked end-to-end run."""
import json
import math

import pytest
import tensorflow_datasets as tfds

from jaxformer.config import load_config
from jaxformer.train import train
from jaxformer.train.evaluate import evaluate_run


@pytest.mark.parametrize("name,d,h,ff,drop,steps,avg,bleu", [
    ("aiayn_base_wmt14_ende", 512, 8, 2048, 0.1, 100_000, 5, 27.3),
    ("aiayn_big_wmt14_ende", 1024, 16, 4096, 0.3, 300_000, 20, 28.4)])
def test_paper_settings(name, d, h, ff, drop, steps, avg, bleu):
  c = load_config(name)
  m = c.model
  assert (m.num_layers, m.d_model, m.num_heads, m.mlp_dim, m.dropout_rate) == (6, d, h, ff, drop)
  assert (m.position, m.pre_norm, m.tie_embeddings, m.scale_embeddings) == ("sinusoidal", False, True, True)
  o = c.optim
  assert (o.name, o.b1, o.b2, o.eps, o.schedule, o.lr, o.warmup_steps, o.label_smoothing) == (
      "adam", 0.9, 0.98, 1e-9, "rsqrt", 1.0, 4000, 0.1)
  assert (c.train.steps, c.train.average_last) == (steps, avg)
  assert (c.data.name, c.data.source_lang, c.data.target_lang, c.data.batching) == (
      "wmt14_translate/de-en", "en", "de", "bucket")
  assert c.data.tokens_per_batch == 25_000 and c.data.vocab_size == 37000
  assert (c.eval.num_beams, c.eval.length_penalty, c.eval.max_extra_len) == (4, 0.6, 50)
  assert c.paper.newstest2014_bleu == bleu


TINY = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64", "data.vocab_size=100",
        "data.tokens_per_batch=512", "data.batch_multiple=2", "train.grad_accum=2", "train.steps=4",
        "train.log_every=2", "train.eval_every=0", "train.eval_batches=2", "train.eval_batch_size=8",
        "train.average_every=2", "train.average_last=2", "eval.bleu_examples=8", "eval.batch_size=8",
        "eval.num_beams=2", "eval.max_extra_len=4", "data.spm_max_chars=100000"]


def test_base_config_runs_end_to_end_on_mocked_wmt(tmp_path):
  config = load_config("aiayn_base_wmt14_ende", TINY)
  with tfds.testing.mock_data(num_examples=64):
    results = train(config, tmp_path, progress=False)
    test = evaluate_run(config, tmp_path, "test")
  assert results["averaged_checkpoints"] == 2 and results["bleu_sentences"] == 8
  assert test["split"] == "test" and test["bleu_sentences"] == 8 and math.isfinite(test["eval"]["nll"])
  assert set(json.loads((tmp_path / "data_state.json").read_text())) == {"start", "position"}  # length-bucketed
  assert (tmp_path / "eval_test.json").is_file() and list((tmp_path / "vocab").glob("spm-*.model"))
