"""One tokenizer interface: round trips, special ids, save/load, and the SentencePiece cache."""
import logging

import pytest

from jaxformer.data import tokenizers as tk
from jaxformer.data.tokenizers import (
  BOS,
  EOS,
  PAD,
  ByteTokenizer,
  CharTokenizer,
  SentencePieceTokenizer,
  WordTokenizer,
  sentencepiece_tokenizer,
  tokenizer_from_dict,
)

CORPUS = [f"the {a} {b} sees {n} small houses near the river." for a in ("old", "young", "red", "quiet")
          for b in ("dog", "cat", "farmer", "queen") for n in ("two", "three", "five")] * 20


@pytest.fixture(scope="module")
def spm():
  return tk.train_sentencepiece(CORPUS, 60)


def _all(spm):
  return [CharTokenizer.from_text("".join(CORPUS), specials=(PAD, BOS, EOS)), ByteTokenizer((PAD, BOS, EOS)),
          WordTokenizer(sorted({w for s in CORPUS for w in s.split()}), (PAD, BOS, EOS)), spm]


def test_round_trips_and_special_ids(spm):
  text = "the quiet queen sees five small houses near the river."
  for tok in _all(spm):
    ids = tok.encode(text)
    assert tok.decode(ids) == text, tok.kind
    assert tok.pad_id == 0 and 0 not in ids and max(ids) < tok.vocab_size
    assert tok.bos_id not in ids and tok.eos_id not in ids and tok.bos_id != tok.eos_id
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, 0, 0]) == text  # specials and padding vanish
    again = tokenizer_from_dict(tok.to_dict())
    assert type(again) is type(tok) and again.encode(text) == ids
  assert ByteTokenizer().decode(ByteTokenizer().encode("naïve ☃")) == "naïve ☃"
  assert ByteTokenizer().bos_id is None


def test_sentencepiece_layout_and_out_of_range_ids(spm):
  assert (spm.pad_id, spm.bos_id, spm.eos_id) == (0, 2, 3) and spm.vocab_size == 60
  ids = spm.encode("the old dog")
  assert spm.decode(ids + [spm.vocab_size + 5]) == "the old dog"  # a padded output layer's ids are dropped
  assert len(spm.encode("the old dog")) < len("the old dog")  # subwords, not characters


def test_sentencepiece_is_cached_and_reused(tmp_path, monkeypatch, caplog):
  calls = []
  texts = lambda: (calls.append(1), iter(CORPUS))[1]
  first = sentencepiece_tokenizer(texts, 60, tmp_path, "corpus-a")
  assert calls == [1] and len(list(tmp_path.glob("spm-*.model"))) == 1
  monkeypatch.setattr(tk, "train_sentencepiece", lambda *a, **k: pytest.fail("retrained a cached vocabulary"))
  with caplog.at_level(logging.INFO, "jaxformer.data"):
    second = sentencepiece_tokenizer(texts, 60, tmp_path, "corpus-a")
  assert "reusing" in caplog.text and calls == [1]
  assert second.model_proto == first.model_proto
  monkeypatch.undo()
  sentencepiece_tokenizer(texts, 70, tmp_path, "corpus-a")  # other settings: another vocabulary
  sentencepiece_tokenizer(texts, 60, tmp_path, "corpus-b")  # another corpus: another vocabulary
  assert calls == [1, 1, 1] and len(list(tmp_path.glob("spm-*.model"))) == 3
  assert not list(tmp_path.glob("*.tmp"))


def test_bad_tokenizers_are_errors():
  with pytest.raises(ValueError, match="not in the tokenizer's alphabet"):
    CharTokenizer("abc").encode("abd")
  with pytest.raises(ValueError, match="<pad>"):
    ByteTokenizer(("<bos>",))
  with pytest.raises(ValueError, match="unknown tokenizer kind"):
    tokenizer_from_dict({"kind": "bpe-from-mars"})
  import io

  import sentencepiece as sp
  buf = io.BytesIO()
  sp.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=30, minloglevel=2)
  with pytest.raises(ValueError, match="pad=0"):
    SentencePieceTokenizer(buf.getvalue())  # sentencepiece's own default ids (unk=0, no pad)


def test_a_vocabulary_too_large_for_the_corpus_says_what_to_do():
  with pytest.raises(ValueError, match="lower data.vocab_size"):
    tk.train_sentencepiece(CORPUS[:5], 5000)
