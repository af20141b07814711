"""Data: tokenizers, TFDS pipelines, packing/bucketing and synthetic tasks.

`build_dataset(config.data, seed, cache_dir)` is the entry. Every dataset has `kind` ("lm", "seq2seq",
"classification" or "pair_classification"), `tokenizer`, `vocab_size`, `eval_batches(n, batch_size)` and either
`train_iterator(batch_size)` (resumable: `get_state` / `set_state`) or `train_batch(step, batch_size)`
(a pure function of the step); `pipeline.train_batches(ds, batch_size)` gives the iterator for both.
"""
import inspect
from types import SimpleNamespace

from jaxformer.data.algorithmic import MinGPTSort, ModularArithmetic
from jaxformer.data.listops import ListOps
from jaxformer.data.lra import PathfinderData, PixelData, RetrievalData
from jaxformer.data.pipeline import BucketedBatches, PackedBatches, PaddedBatches, StepBatches, examples, train_batches
from jaxformer.data.recall import MQAR, AssociativeRecall
from jaxformer.data.regression import LinearRegressionTask
from jaxformer.data.sources import DatasetMissingError, prepare, tfds_source
from jaxformer.data.synthetic import TASKS, Seq2SeqTask
from jaxformer.data.text import (
  CharLMData,
  PackedLMData,
  TextClassificationData,
  stdlib_corpus,
  text_file_corpus,
  tfds_char_corpus,
)
from jaxformer.data.tokenizers import (
  ByteTokenizer,
  CharTokenizer,
  GPT2Tokenizer,
  SentencePieceTokenizer,
  WordTokenizer,
  load_tokenizer,
  save_tokenizer,
)
from jaxformer.data.translation import TranslationData

_TFDS = dict(data_dir=None, train_split="train", eval_split="validation")
# Every key a TFDS-backed data config may have, with its default: a key not listed here is an error.
DEFAULTS = {
    "translation": dict(_TFDS, source_lang="en", target_lang="de", vocab_size=32000,
                        spm_max_chars=10_000_000, max_len=256, batching="bucket", tokens_per_batch=25_000,
                        bucket_boundaries=(8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256), bucket_window=50_000,
                        batch_multiple=1),
    # tokenizer "sentencepiece" (trained, vocab_size), "byte" or "gpt2" (GPT-2's BPE from tokenizer_path: a
    # tokenizer.json or a Hugging Face Hub name); packing "documents" (whole documents per row) or "stream" (nanoGPT)
    "lm": dict(_TFDS, text_key="text", tokenizer="sentencepiece", vocab_size=32000, spm_max_chars=10_000_000,
               seq_len=256, tokenizer_path="gpt2", packing="documents"),
    "classification": dict(_TFDS, text_key="text", label_key="label", num_classes=2, tokenizer="byte",
                           vocab_size=32000, spm_max_chars=10_000_000, max_len=512),
    # path: a local copy of the same corpus, read instead of TFDS and split 90/10 as nanoGPT (offline runs)
    "char_lm": dict(_TFDS, text_key="text", seq_len=256, path=""),
    # Long Range Arena (jaxformer/data/lra.py): images as gray pixel tokens; the release's Pathfinder and AAN files
    "pixels": dict(_TFDS, image_key="image", label_key="label", num_classes=10),
    "pathfinder": dict(_TFDS, eval_split="validation", image_key="image", label_key="label", num_classes=2,
                       resolution=32, difficulty="hard"),
    "retrieval": dict(_TFDS, max_len=4000),
}
# Known TFDS datasets: their task and the defaults that differ for them.
PRESETS = {
    "wmt14_translate/de-en": ("translation", dict(eval_split="validation")),  # newstest2013; "test": newstest2014
    "toy_translation": ("translation", dict(source_lang="en", target_lang="toy", vocab_size=1000,
                                            train_size=200_000, eval_size=1000, extra_words=0, max_len=64,
                                            eval_split="validation")),
    "lm1b": ("lm", dict(eval_split="test", seq_len=256)),
    "imdb_reviews": ("classification", dict(eval_split="test", tokenizer="byte", max_len=4096)),  # LRA Text: 4K bytes
    "tiny_shakespeare": ("char_lm", dict(seq_len=256)),
    "cifar10": ("pixels", dict(train_split="train[:90%]", eval_split="train[90%:]")),  # LRA Image, LRA's split
    "lra_pathfinder": ("pathfinder", {}),  # data.data_dir: the extracted lra_release
    "lra_retrieval": ("retrieval", {}),  # data.data_dir: the extracted lra_release
}
LRA_TASKS = {"pixels": PixelData, "pathfinder": PathfinderData, "retrieval": RetrievalData}
# Generated in-process: data.name -> class; the other data keys are its constructor's arguments.
GENERATED = {"mqar": MQAR, "associative_recall": AssociativeRecall, "listops": ListOps, "mingpt_sort": MinGPTSort,
             "modular_arithmetic": ModularArithmetic, "linear_regression": LinearRegressionTask}
LOCAL = ("stdlib_chars", "text_file", *TASKS, *GENERATED)


def resolve(data_config) -> tuple[str, SimpleNamespace]:
  """(task, settings) for a TFDS-backed data config: its preset and defaults, then the config's
  values; an unknown key is an error naming the known ones."""
  given = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  name = given["name"]
  task, preset = PRESETS.get(name, (given.get("task"), {}))
  if task not in DEFAULTS:
    raise ValueError(f"data.name={name!r} is not a known dataset ({sorted(PRESETS)} or {list(LOCAL)}); for another "
                     f"TFDS dataset set data.task to one of {sorted(DEFAULTS)}")
  allowed = {**DEFAULTS[task], **preset}
  unknown = sorted(set(given) - set(allowed) - {"name", "task"})
  if unknown:
    raise ValueError(f"unknown data config keys {unknown} for data.name={name!r} ({task}); known: {sorted(allowed)}")
  return task, SimpleNamespace(**{**allowed, **given})


def build_dataset(data_config, seed: int, cache_dir=None, tokenizer=None):
  """data_config: the experiment's `config.data` (name plus that dataset's settings). `cache_dir`
  (the workdir) keeps what is expensive to rebuild: SentencePiece vocabularies, generated datasets.
  `tokenizer`: use this one (a finished run's) instead of building or training one (TFDS datasets)."""
  name = data_config.name
  if name == "stdlib_chars":
    return CharLMData(stdlib_corpus(data_config.max_chars), data_config.seq_len, seed)
  if name == "text_file":
    return CharLMData(text_file_corpus(data_config.path), data_config.seq_len, seed)
  if name in TASKS:
    return Seq2SeqTask(name, data_config.min_len, data_config.max_len, data_config.num_symbols, seed)
  if name in GENERATED:
    cls = GENERATED[name]
    kw = {k: v for k, v in data_config.items() if k != "name"}
    known = set(inspect.signature(cls).parameters) - {"seed"}
    if set(kw) - known:
      raise ValueError(f"unknown data config keys {sorted(set(kw) - known)} for data.name={name!r}; "
                       f"known: {sorted(known)}")
    return cls(**kw, seed=seed)
  task, data = resolve(data_config)
  if task == "char_lm":
    if data.path:
      return CharLMData(text_file_corpus(data.path), data.seq_len, seed)
    train, val = tfds_char_corpus(data)
    return CharLMData(train, data.seq_len, seed, val_text=val)
  if task == "lm":
    return PackedLMData(data, seed, cache_dir, tokenizer=tokenizer)
  if task == "classification":
    return TextClassificationData(data, seed, cache_dir, tokenizer=tokenizer)
  if task in LRA_TASKS:
    return LRA_TASKS[task](data, seed, cache_dir, tokenizer=tokenizer)
  source_fn = None
  if name == "toy_translation":
    from jaxformer.data.sources import toy_source
    source_fn = toy_source(data, cache_dir)
  return TranslationData(data, seed, cache_dir, source_fn, tokenizer=tokenizer)


__all__ = ["build_dataset", "resolve", "DEFAULTS", "PRESETS", "CharLMData", "PackedLMData", "TextClassificationData",
           "TranslationData", "Seq2SeqTask", "MQAR", "AssociativeRecall", "ListOps", "MinGPTSort", "ModularArithmetic",
           "LinearRegressionTask", "PixelData", "PathfinderData",
           "RetrievalData", "CharTokenizer", "ByteTokenizer",
           "WordTokenizer", "SentencePieceTokenizer", "GPT2Tokenizer",
           "stdlib_corpus", "text_file_corpus", "load_tokenizer", "save_tokenizer", "DatasetMissingError", "prepare",
           "tfds_source", "examples", "PackedBatches", "BucketedBatches", "PaddedBatches", "StepBatches",
           "train_batches"]
