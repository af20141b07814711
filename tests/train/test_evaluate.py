"""`jaxformer eval` (evaluate_run): perplexity for LMs, accuracy for classifiers, BLEU helpers."""
import importlib

import jax
import ml_collections
import numpy as np
import pytest

from jaxformer.config import load_config
from jaxformer.data import build_dataset
from jaxformer.train import load_run, train
from jaxformer.train.evaluate import bleu, evaluate_run

from .test_loop import TINY_LM

LISTOPS = dict(name="listops", max_len=96, min_length=20, max_length=96, max_depth=3, max_args=4)


def test_lm_eval_reports_the_perplexity_of_the_finished_run(tmp_path):
  config = load_config("char_lm", [*TINY_LM, "train.steps=20", "train.eval_every=0"])
  results = train(config, tmp_path, progress=False)
  ev = evaluate_run(config, tmp_path)
  assert ev["eval"]["nll"] == pytest.approx(results["eval"]["nll"], abs=1e-6)  # same batches, same params
  assert ev["eval"]["perplexity"] == pytest.approx(np.exp(ev["eval"]["nll"]))
  assert (tmp_path / f"eval_{ev['split']}.json").is_file()
  with pytest.raises(ValueError, match="no named splits"):
    evaluate_run(config, tmp_path, "test")


def test_classifier_eval_reports_accuracy(tmp_path):
  config = load_config("seq2seq_reverse", ["train.steps=10", "train.eval_every=0", "train.batch_size=8",
                                           "train.eval_batches=2", "train.eval_batch_size=16", "model.max_len=96"])
  with config.unlocked():
    config.model_kind = "encoder_classifier"
    config.data = ml_collections.ConfigDict(LISTOPS)
  results = train(config, tmp_path, progress=False)
  ev = evaluate_run(config, tmp_path)
  model, params, _ = load_run(tmp_path)
  assert model.cfg.num_classes == 10
  hits = total = 0
  for batch in build_dataset(config.data, config.seed).eval_batches(2, 16):  # an independent count
    pred = np.argmax(jax.jit(model.apply)({"params": params}, batch["inputs"]), -1)
    hits += int(np.sum(pred == batch["label"]))
    total += len(pred)
  assert ev["eval"]["accuracy"] == pytest.approx(hits / total) == pytest.approx(results["eval"]["accuracy"])


def test_bleu_is_sacrebleu_on_detokenized_text():
  refs = ["the cat sat on the mat.", "a dog barks loudly at night."]
  score, signature = bleu(refs, refs)
  assert score == pytest.approx(100.0) and "tok:13a" in signature and "case:mixed" in signature
  worse, _ = bleu(["the cat sat on a mat.", "a dog barks at night."], refs)
  assert 0 < worse < 100
  assert bleu(["the cat sat on the mat .", refs[1]], refs)[0] == pytest.approx(100.0)  # 13a splits the period


def test_translate_restores_order_cuts_at_eos_and_limits_each_sentence(monkeypatch):
  """With a stand-in search that copies the source (then runs on past its EOS), `translate` must give
  back each source, in the input order, whatever the length-sorted batching and filler rows."""
  from types import SimpleNamespace

  from jaxformer.data.tokenizers import BOS, EOS, PAD, WordTokenizer
  ev = importlib.import_module("jaxformer.train.evaluate")  # (jaxformer.train.evaluate is also a function)

  tok = WordTokenizer([f"w{i}" for i in range(40)], (PAD, BOS, EOS))
  seen = []

  def copy_search(model, params, inputs, config):
    seen.append((inputs.shape, config.max_length, config.num_beams, config.length_penalty))
    junk = np.full((inputs.shape[0], config.max_length - 1 - inputs.shape[1]), tok.encode("w7")[0])
    seqs = np.concatenate([np.full((inputs.shape[0], 1), tok.bos_id), inputs, junk], 1)
    return SimpleNamespace(sequences=seqs)

  monkeypatch.setattr(ev, "generate", copy_search)
  rng = np.random.default_rng(0)
  sources = [" ".join(f"w{i}" for i in rng.integers(0, 40, size=rng.integers(1, 30))) for _ in range(21)]
  out = ev.translate(None, None, tok, sources, num_beams=4, length_penalty=0.6, max_extra_len=5, batch_size=8)
  assert out == sources
  assert {s[2:] for s in seen} == {(4, 0.6)} and all(shape[0] == 8 and shape[1] % 16 == 0 for shape, *_ in seen)
  # no EOS at all: each output stops at its own source length + max_extra_len
  monkeypatch.setattr(ev, "generate", lambda m, p, inputs, config: SimpleNamespace(
      sequences=np.full((inputs.shape[0], config.max_length), tok.encode("w1")[0])))
  out = ev.translate(None, None, tok, ["w2 w3", "w4"], max_extra_len=5, batch_size=4)
  assert [len(o.split()) for o in out] == [3 + 5, 2 + 5]  # (source tokens incl. EOS) + 5
