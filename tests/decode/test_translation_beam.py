"""Beam search on the project's own trained encoder-decoder (the digit-reversal "translation"
task of experiments/seq2seq_reverse.py, shrunk): hand-checked inputs give their reversal."""
import numpy as np
import pytest

from jaxformer.cli import main
from jaxformer.config import load_config
from jaxformer.decode import GenerationConfig, generate
from jaxformer.train import load_run, train

SHRINK = ["data.min_len=2", "data.max_len=5", "model.num_layers=1", "train.steps=500", "train.log_every=100",
          "train.eval_every=0", "train.eval_batches=1", "train.eval_batch_size=64", "train.tensorboard=false",
          "optim.warmup_steps=50"]


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reverse")
  results = train(load_config("seq2seq_reverse", SHRINK), workdir, progress=False)
  return results, load_run(workdir), workdir


def test_beam_search_translates_hand_checked_cases(reverse_run):
  results, (model, params, tok), _ = reverse_run
  assert results["exact_match"] > 0.9
  sources = ["31415", "2718", "90", "555"]
  expected = ["51413", "8172", "09", "555"]
  inputs = np.zeros((len(sources), 5), np.int32)
  for row, text in enumerate(sources):
    inputs[row, :len(text)] = tok.encode(text)
  bos, eos = tok.special_id("<bos>"), tok.special_id("<eos>")
  config = GenerationConfig(max_length=7, num_beams=4, num_return_sequences=2, length_penalty=0.6,
                            early_stopping=True, decoder_start_token_id=bos, eos_token_id=eos, pad_token_id=0)
  out = generate(model, params, inputs, config)
  for row, want in enumerate(expected):
    best, second = (np.asarray(out.sequences[2 * row + i, 1:]) for i in range(2))
    assert tok.decode(best[:len(want)]) == want and best[len(want)] == eos
    assert out.scores[2 * row] >= out.scores[2 * row + 1]  # hypotheses come best first
    assert not np.array_equal(best, second)


def test_cli_generates_from_a_run_directory(reverse_run, capsys):
  *_, workdir = reverse_run
  assert main(["generate", "--checkpoint", str(workdir), "--prompt", "31415", "--prompt", "27",
               "--num-beams", "4", "--max-length", "7"]) == 0
  out = capsys.readouterr().out
  assert "=== '31415'\n--- 0 (score" in out and "\n51413\n" in out and "\n72\n" in out
