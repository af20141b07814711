"""The offline translation experiment end to end through the command line: `jaxformer train` on the
toy pair (generated TFDS corpus, SentencePiece, packing, the paper's recipe), then `jaxformer eval`
(beam search, detokenized sacreBLEU) on the test split. The BLEU of this shortened run is pinned."""
import json

import pytest

from jaxformer.cli import main

# The experiment shortened for CI (~100 s): the base lexicon only (no rare coined words), 20k pairs, 300 steps.
SHORT = ["--config.data.train_size=20000", "--config.data.eval_size=200", "--config.data.extra_words=0",
         "--config.data.vocab_size=1000", "--config.train.steps=300", "--config.train.eval_every=0",
         "--config.train.average_every=25", "--config.eval.bleu_examples=200"]
SHORT_BLEU = 45.0  # measured 55.8 (validation, 200 sentences); README "Toy translation"


@pytest.mark.slow  # ~100 s idle (~3 min in a busy suite): CI's budget goes to the reproduction rungs instead
def test_toy_translation_trains_and_evaluates_with_bleu(tmp_path, capsys):
  work = tmp_path / "run"
  assert main(["train", "--config", "toy_translation", "--workdir", str(work), "--no-progress", *SHORT]) == 0
  results = json.loads((work / "results.json").read_text())
  assert results["averaged_checkpoints"] == 5 and results["bleu_split"] == "validation"
  assert results["bleu"] >= SHORT_BLEU, results["examples"]
  assert "tok:13a" in results["bleu_signature"]
  assert json.loads((work / "data_state.json").read_text())["index"] > 300 * 32  # packed: > 1 pair per row
  capsys.readouterr()
  assert main(["eval", "--config", "toy_translation", "--workdir", str(work), "--split", "test", *SHORT]) == 0
  out = capsys.readouterr().out
  assert "BLEU" in out and "nrefs:1|case:mixed|eff:no|tok:13a" in out
  test = json.loads((work / "eval_test.json").read_text())
  assert test["bleu_sentences"] == 200 and test["bleu"] >= SHORT_BLEU
  assert test["eval"]["accuracy"] > 0.7  # measured 0.84 on validation


def test_eval_errors_are_one_clear_line(tmp_path, capsys):
  assert main(["eval", "--config", "toy_translation", "--workdir", str(tmp_path / "none"), *SHORT]) == 2
  assert "holds no finished run" in capsys.readouterr().err
  assert main(["train", "--config", "toy_translation", "--workdir", str(tmp_path), "--config.data.batching=zip",
               *SHORT]) == 2
  assert "data.batching must be 'pack' or 'bucket'" in capsys.readouterr().err


@pytest.mark.slow
def test_full_toy_translation_reaches_the_stated_bleu(tmp_path):
  """The experiment as configured (~7.5 minutes on 2 cores)."""
  work = tmp_path / "run"
  assert main(["train", "--config", "toy_translation", "--workdir", str(work), "--no-progress"]) == 0
  results = json.loads((work / "results.json").read_text())
  assert results["bleu"] >= FULL_BLEU, results["examples"]


FULL_BLEU = 60.0  # measured 67.9 (validation, 1000 sentences); README "Toy translation"
