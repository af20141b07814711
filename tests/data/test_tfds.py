"""Every TFDS pipeline under `tfds.testing.mock_data`, the generated toy corpus read back through the
real reader, and the errors for missing data and bad config keys."""
import logging

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxformer.data import DatasetMissingError, build_dataset, resolve, train_batches
from jaxformer.data import toy_translation as toy
from jaxformer.data.sources import as_text, tfds_source


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


@pytest.fixture
def mock():
  with tfds.testing.mock_data(num_examples=64):
    yield


@pytest.mark.parametrize("src,tgt", [("en", "de"), ("de", "en")])
def test_wmt14_both_directions(mock, tmp_path, src, tgt):
  ds = build_dataset(_cfg(name="wmt14_translate/de-en", source_lang=src, target_lang=tgt, vocab_size=80,
                          batching="pack", max_len=48), 0, tmp_path)
  assert ds.kind == "seq2seq" and ds.vocab_size == 80
  batch = next(train_batches(ds, 4))
  raw = tfds_source("wmt14_translate/de-en", "train")
  norm = lambda t: " ".join(t.split())  # SentencePiece normalizes whitespace
  pairs = {norm(as_text(ex[src])): norm(as_text(ex[tgt])) for ex in raw}
  seg = batch["inputs_segment_ids"][0]
  tseg = batch["decoder_segment_ids"][0]
  for s in np.unique(seg[seg > 0]):
    source = ds.tokenizer.decode(batch["inputs"][0][seg == s])
    target = ds.tokenizer.decode(batch["targets"][0][tseg == s])
    assert pairs[norm(source)] == norm(target)  # the pair stays together, in the asked direction
    assert batch["targets"][0][tseg == s][-1] == ds.eos_id
  # bucketed batches and evaluation texts of another split
  ds.data.batching = "bucket"
  ds.data.tokens_per_batch = 256
  bucketed = next(ds.train_iterator(0))
  assert bucketed["inputs"].shape[1] in ds.data.bucket_boundaries and "inputs_segment_ids" not in bucketed
  sources, refs = ds.texts("test", 5)
  assert len(sources) == len(refs) == 5 and sources[0] != refs[0]


def test_lm1b_packs_documents(mock, tmp_path):
  ds = build_dataset(_cfg(name="lm1b", vocab_size=90, seq_len=64), 0, tmp_path)
  b = next(train_batches(ds, 3))
  assert ds.kind == "lm" and b["inputs"].shape == (3, 64)
  seg = b["segment_ids"]
  starts = (b["positions"] == 0) & (seg > 0)
  assert np.all(b["inputs"][starts] == ds.tokenizer.bos_id)  # every document starts afresh
  assert np.all(b["inputs"][:, 1:][~starts[:, 1:] & (seg[:, 1:] > 0)] == b["targets"][:, :-1][
      ~starts[:, 1:] & (seg[:, 1:] > 0)])
  assert len(ds.eval_batches(2, 4)) >= 1


def test_imdb_reviews_bytes_for_classification(mock, tmp_path):
  ds = build_dataset(_cfg(name="imdb_reviews", max_len=100), 0, tmp_path)
  b = next(train_batches(ds, 8))
  assert ds.kind == "classification" and ds.vocab_size == 257 and ds.num_classes == 2
  assert b["inputs"].shape == (8, 100) and set(b["label"].tolist()) <= {0, 1}
  text = ds.tokenizer.decode(b["inputs"][0])
  raw = {as_text(ex["text"])[:100] for ex in tfds_source("imdb_reviews", "train")}
  assert text in raw


def test_tiny_shakespeare_char_lm(mock):
  ds = build_dataset(_cfg(name="tiny_shakespeare", seq_len=16), 0)
  b = next(train_batches(ds, 2))
  train_text = "".join(as_text(ex["text"]) for ex in tfds_source("tiny_shakespeare", "train"))  # 1 example in reality
  assert ds.tokenizer.decode(b["inputs"][0]) in train_text
  assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_any_tfds_dataset_with_a_task(mock, tmp_path):
  ds = build_dataset(_cfg(name="ag_news_subset", task="classification", text_key="description", num_classes=4,
                          max_len=64), 0, tmp_path)
  b = next(train_batches(ds, 4))
  assert b["inputs"].shape == (4, 64) and np.all((b["label"] >= 0) & (b["label"] < 4))
  with pytest.raises(ValueError, match="data.task"):
    build_dataset(_cfg(name="ag_news_subset"), 0)


def test_unknown_keys_and_names_are_errors():
  with pytest.raises(ValueError, match=r"unknown data config keys \['vocab'\]"):
    resolve(_cfg(name="lm1b", vocab=10))
  with pytest.raises(ValueError, match="unknown data config keys"):
    build_dataset(_cfg(name="mqar", num_pairs=3), 0)
  with pytest.raises(DatasetMissingError, match="no dataset called"):
    tfds_source("no_such_dataset_xyz", "train")


def test_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(DatasetMissingError, match=r"not prepared.*jaxformer prepare lm1b --data-dir"):
    build_dataset(_cfg(name="lm1b", data_dir=str(tmp_path)), 0)
  with pytest.raises(DatasetMissingError, match="jaxformer prepare wmt14_translate/de-en"):
    build_dataset(_cfg(name="wmt14_translate/de-en", data_dir=str(tmp_path)), 0)
  assert not any(tmp_path.rglob("*.array_record*"))  # nothing half-written


def test_toy_corpus_is_written_once_and_read_back_through_tfds(tmp_path, caplog):
  cfg = _cfg(name="toy_translation", train_size=300, eval_size=20, vocab_size=200, batching="pack")
  with caplog.at_level(logging.INFO, "jaxformer.data"):
    ds = build_dataset(cfg, 0, tmp_path)
  assert "writing the toy translation corpus" in caplog.text
  data_dir = next(tmp_path.glob("tfds/toy-300-20-0"))
  assert list(data_dir.rglob("*train.array_record*"))
  # the real reader, by name and data_dir, gives the generated pairs
  reader = tfds.data_source("toy_translation", split="validation", data_dir=str(data_dir))
  expected = toy.split("validation", 20)
  assert [(as_text(ex["en"]), as_text(ex["toy"])) for ex in reader] == expected
  assert ds.texts("validation") == ([e for e, _ in expected], [t for _, t in expected])
  caplog.clear()
  with caplog.at_level(logging.INFO, "jaxformer.data"):
    again = build_dataset(cfg, 0, tmp_path)
  assert "writing" not in caplog.text and "reusing the SentencePiece vocabulary" in caplog.text
  assert again.tokenizer.to_dict() == ds.tokenizer.to_dict()
  caplog.clear()
  with caplog.at_level(logging.INFO, "jaxformer.data"):
    other = build_dataset(_cfg(name="toy_translation", train_size=300, eval_size=20, vocab_size=200, batching="pack",
                               extra_words=500), 0, tmp_path)
  assert "writing" in caplog.text and "training a SentencePiece" in caplog.text  # another corpus, another vocab
  assert other.texts("validation")[0] != ds.texts("validation")[0]


def test_prepare_without_tensorflow_names_the_extra(monkeypatch, tmp_path):
  from jaxformer.data import sources

  def no_tf(self, **kw):
    raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_tf)
  with pytest.raises(ModuleNotFoundError, match=r"jaxformer\[tf\]"):
    sources.prepare("tiny_shakespeare", str(tmp_path))


def test_prepare_command_reports_errors_in_one_line(monkeypatch, tmp_path, capsys):
  from jaxformer.cli import main

  def offline(self, **kw):
    raise ConnectionError("Failed to establish a new connection")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  assert main(["prepare", "imdb_reviews", "--data-dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "needs network access" in err and "copy" in err
