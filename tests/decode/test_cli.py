"""`jaxformer generate`: the seed's BLOOM example, end to end on a tiny locally saved BLOOM, against HF."""
import json

import pytest

from jaxformer.cli import main
from tests.hub import hf_config, hf_model, save, torch

tokenizers = pytest.importorskip("tokenizers")
PROMPT = "Hello, I am a big model."


def bpe_tokenizer(text: str, vocab: int):
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>",
                                                                                        "<unk>"]))
  return tok


@pytest.fixture(scope="module")
def bloom(tmp_path_factory):
  hf = hf_model(hf_config("bloom", n_head=3, bos_token_id=1, eos_token_id=2, pad_token_id=0), seed=1)
  directory = save(hf, tmp_path_factory.mktemp("bloom"))
  tok = bpe_tokenizer(PROMPT + " Big models say hello; small models listen, and I am one of them.", 96)
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>"}))
  return hf, tok, directory


def test_seed_bloom_example_matches_hf(bloom, capsys):
  hf, tok, directory = bloom
  code = main(["generate", "--checkpoint", str(directory), "--prompt", PROMPT, "--max-length", "50",
               "--num-beams", "5", "--early-stopping", "--num-return-sequences", "2"])
  assert code == 0
  out = capsys.readouterr().out
  ids = torch.as_tensor([tok.encode(PROMPT).ids])
  with torch.no_grad():
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_length=50, num_beams=5, early_stopping=True,
                         num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
  for seq, score in zip(theirs.sequences, theirs.sequences_scores):
    text = tok.decode(seq.tolist(), skip_special_tokens=True)
    assert f"(score {float(score):.4f})\n{text}\n" in out


def test_sampling_flags_and_errors(bloom, capsys):
  _, _, directory = bloom
  argv = ["generate", "--checkpoint", str(directory), "--prompt", PROMPT, "--prompt", "I am", "--max-new-tokens",
          "6", "--do-sample", "--top-k", "5", "--top-p", "0.9", "--temperature", "0.7", "--seed", "3"]
  assert main(argv) == 0
  first = capsys.readouterr().out
  assert main(argv) == 0
  assert capsys.readouterr().out == first and first.count("=== ") == 2  # same seed, same samples
  assert main(["generate", "--checkpoint", str(directory / "missing"), "--prompt", "x"]) == 2
  assert "missing" in capsys.readouterr().err


def test_command_line_options_override_the_checkpoint_generation_config(bloom, tmp_path, capsys, caplog):
  """A checkpoint that samples by default (as Llama's do): --num-beams turns sampling off with a warning,
  --no-do-sample gives greedy decoding, and values equal to HF's defaults still override."""
  import shutil
  _, _, directory = bloom
  sampling = shutil.copytree(directory, tmp_path / "sampling")
  (sampling / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.5}))
  run = lambda path, *flags: (main(["generate", "--checkpoint", str(path), "--prompt", PROMPT,  # noqa: E731
                                    "--max-new-tokens", "6", *flags]), capsys.readouterr().out)[1]
  assert run(sampling, "--num-beams", "3") == run(directory, "--num-beams", "3")
  assert "do_sample is off" in caplog.text
  assert run(sampling, "--no-do-sample") == run(directory)
  with pytest.raises(SystemExit) as exit_info:
    main(["generate", "--checkpoint", str(directory), "--prompt", "x", "--early-stopping", "yes"])
  assert exit_info.value.code == 2
