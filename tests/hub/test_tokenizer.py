"""The checkpoint's tokenizer.json behind jaxformer's tokenizer interface."""
import json
import logging

import pytest

from jaxformer.hub import HFTokenizer, load_pretrained
from tests.hub import VOCAB, hf_config, hf_model, save

tokenizers = pytest.importorskip("tokenizers")

TEXT = "the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs!"


def build_tokenizer():
  """A sentencepiece-style BPE (Metaspace) trained on one sentence, adding <s> in front like Llama's."""
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  return tok


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = save(hf_model(hf_config("llama", bos_token_id=1, eos_token_id=2)), tmp_path_factory.mktemp("llama"))
  build_tokenizer().save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "pad_token": "<pad>"}))
  return directory


def test_round_trip_and_special_ids(checkpoint):
  tok = HFTokenizer.from_dir(checkpoint)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
  assert tok.vocab_size <= VOCAB
  for text in (TEXT, "the lazy fox", "dog"):
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and tok.encode(text, add_special_tokens=False) == ids[1:]
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text


def test_load_pretrained_brings_the_tokenizer(checkpoint):
  lm = load_pretrained(checkpoint)
  ids = lm.tokenizer.encode("the quick dog")
  assert lm.logits([ids]).shape == (1, len(ids), VOCAB)
  assert lm.eos_token_id == lm.tokenizer.eos_id == 2


def test_ids_fall_back_to_config_json(checkpoint, tmp_path):
  for name in ("tokenizer.json", "config.json"):
    (tmp_path / name).write_text((checkpoint / name).read_text())
  tok = HFTokenizer.from_dir(tmp_path)  # no tokenizer_config.json: ids from config.json
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, None)


def test_no_tokenizer_json_warns(tmp_path, caplog):
  with caplog.at_level(logging.WARNING, logger="jaxformer.hub"):
    assert HFTokenizer.from_dir(tmp_path) is None
  assert "no tokenizer.json" in caplog.text


def test_save(checkpoint, tmp_path):
  HFTokenizer.from_dir(checkpoint).save(tmp_path)
  assert HFTokenizer.from_dir(tmp_path).encode(TEXT) == HFTokenizer.from_dir(checkpoint).encode(TEXT)


def test_export_carries_the_tokenizer(checkpoint, tmp_path):
  from jaxformer.hub import export_pretrained
  lm = load_pretrained(checkpoint)
  out = export_pretrained(lm.params, lm.config, tmp_path / "out", tokenizer=lm.tokenizer,
                          generation_config={"eos_token_id": lm.eos_token_id})
  again = load_pretrained(out)
  assert again.tokenizer.encode(TEXT) == lm.tokenizer.encode(TEXT) and again.eos_token_id == 2
