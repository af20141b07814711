"""Text data for language models and classifiers.

CharLMData       a character corpus as one token array, random windows; batches are a pure function
                 of (seed, step) (nanoGPT's setup; tiny_shakespeare, stdlib sources, any text file)
PackedLMData     a TFDS dataset of documents/sentences (lm1b, OpenWebText, any text dataset), SentencePiece, bytes
                 or GPT-2's BPE, packed into rows of whole documents with segment ids and positions, or streamed
                 into full rows as nanoGPT (data.packing="stream")
TextClassificationData   a TFDS dataset of (text, label) (imdb_reviews byte-level, as Long Range Arena)
"""
from __future__ import annotations

import itertools
import json
import logging
import sysconfig
from pathlib import Path

import numpy as np

from jaxformer.data.pipeline import MappedBatches, PackedBatches, PaddedBatches, StreamBatches, examples, shift_right
from jaxformer.data.sources import as_text, tfds_source
from jaxformer.data.tokenizers import (
  BOS,
  EOS,
  PAD,
  ByteTokenizer,
  CharTokenizer,
  GPT2Tokenizer,
  sentencepiece_tokenizer,
)

log = logging.getLogger("jaxformer.data")


def stdlib_corpus(max_chars: int = 2_000_000) -> str:
  """Python's own standard-library sources (top-level modules, sorted by name), ASCII only.

  Every Python installation has them, so this corpus needs no network.
  Non-ASCII characters become "?" so the alphabet stays small.
  """
  root = Path(sysconfig.get_paths()["stdlib"])
  parts, total = [], 0
  for path in sorted(root.glob("*.py")):
    text = path.read_text(encoding="utf-8", errors="replace")
    text = text.encode("ascii", errors="replace").decode("ascii")
    parts.append(text)
    total += len(text)
    if total >= max_chars:
      break
  if total == 0:
    raise FileNotFoundError(f"no Python sources found under {root}; use data.name='text_file'")
  return "".join(parts)[:max_chars]


def text_file_corpus(path: str) -> str:
  p = Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f"data.path={path!r} does not exist; point it at a UTF-8 text file")
  return p.read_text(encoding="utf-8")


class CharLMData:
  """A character corpus split into train/validation (the last `val_fraction`, as nanoGPT), or given
  as separate train and validation texts (`val_text`)."""
  kind = "lm"

  def __init__(self, text: str, seq_len: int, seed: int = 0, val_fraction: float = 0.1, val_text: str | None = None):
    self.tokenizer = CharTokenizer.from_text(text + (val_text or ""))
    ids = np.asarray(self.tokenizer.encode(text), np.int32)
    if val_text is None:
      n_val = int(len(ids) * val_fraction)
      self.train_ids, self.val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    else:
      self.train_ids, self.val_ids = ids, np.asarray(self.tokenizer.encode(val_text), np.int32)
    if min(len(self.train_ids), len(self.val_ids)) <= seq_len + 1:
      raise ValueError(f"corpus of {len(ids)} characters is too short for data.seq_len={seq_len}")
    self.seq_len, self.seed = seq_len, seed
    log.info("char LM corpus: %d train / %d val tokens, vocabulary %d",
             len(self.train_ids), len(self.val_ids), self.tokenizer.vocab_size)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _windows(self, ids, batch_size, rng):
    starts = rng.integers(0, len(ids) - self.seq_len - 1, size=batch_size)
    x = np.stack([ids[s: s + self.seq_len + 1] for s in starts])
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self._windows(self.train_ids, batch_size, np.random.default_rng([self.seed, step]))

  def eval_batches(self, num_batches: int, batch_size: int):
    rng = np.random.default_rng([self.seed, 2**31 - 1])
    return [self._windows(self.val_ids, batch_size, rng) for _ in range(num_batches)]


def tfds_char_corpus(data) -> tuple[str, str]:
  """(train, validation) text of a TFDS dataset whose splits hold the corpus (tiny_shakespeare: one
  example per split)."""
  join = lambda split: "".join(as_text(ex[data.text_key]) for ex in tfds_source(data.name, split, data.data_dir))
  return join(data.train_split), join(data.eval_split)


class TfdsTextData:
  """Shared by the TFDS text datasets: a source per split (`source_fn(split)`, default TFDS), the
  tokenizer (`make_tokenizer`), endless shuffled training batches and evaluation batches in order.
  Subclasses define `encode(example) -> token arrays` and `_batches(examples, batch_size)`."""
  specials = (PAD, BOS, EOS)

  def __init__(self, data, seed: int = 0, cache_dir=None, source_fn=None, tokenizer=None):
    self.data, self.seed = data, seed
    self.source = source_fn or (lambda split: tfds_source(data.name, split, data.data_dir))
    self.train_source = self.source(data.train_split)
    first = self.train_source[0] if len(self.train_source) else {}
    missing = [k for k in self.features() if k not in first]
    if missing:
      raise ValueError(f"{data.name} examples have the features {sorted(first)}, not {missing}; set the data "
                       "config's feature keys (text_key, label_key, source_lang, target_lang) to some of them")
    self.tokenizer = tokenizer or self.make_tokenizer(cache_dir)

  def features(self) -> tuple[str, ...]:
    """The feature keys every example must have."""
    return (self.data.text_key,)

  # The settings that decide which text a vocabulary is trained on: its cache key.
  CORPUS_KEYS = ("name", "task", "data_dir", "train_split", "text_key", "source_lang", "target_lang", "train_size",
                 "extra_words", "spm_max_chars")

  def corpus_key(self) -> str:
    fields = {k: v for k, v in sorted(vars(self.data).items()) if k in self.CORPUS_KEYS}
    return json.dumps([fields, len(self.train_source), self.seed])

  def sentencepiece(self, cache_dir, texts):
    """A SentencePiece vocabulary trained on `texts()` (shuffled training text), cached in `cache_dir`/vocab
    under the corpus key."""
    return sentencepiece_tokenizer(texts, self.data.vocab_size, None if cache_dir is None else f"{cache_dir}/vocab",
                                   self.corpus_key(), max_chars=self.data.spm_max_chars)

  def make_tokenizer(self, cache_dir):
    d = self.data
    if d.tokenizer == "byte":
      return ByteTokenizer(self.specials)
    if d.tokenizer == "sentencepiece":
      return self.sentencepiece(cache_dir, lambda: (as_text(ex[d.text_key]) for ex in examples(
          self.train_source, seed=self.seed, num_epochs=1, shard=(0, 1))))
    if d.tokenizer == "gpt2":
      if self.kind != "lm":  # these rows are padded with id 0, a real GPT-2 token
        raise ValueError(f"data.tokenizer='gpt2' is for language modelling (GPT-2 has no padding id); for "
                         f"{d.name!r} use 'byte' or 'sentencepiece'")
      return GPT2Tokenizer.load(d.tokenizer_path)
    raise ValueError(f"data.tokenizer must be 'sentencepiece', 'byte' or 'gpt2', got {d.tokenizer!r}")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def train_iterator(self, batch_size: int):
    """Endless, shuffled anew each epoch, resumable (`get_state` / `set_state`)."""
    return self._batches(examples(self.train_source, self.encode, seed=self.seed), batch_size)

  def eval_batches(self, num_batches: int, batch_size: int, split: str | None = None):
    """The first `num_batches` batches of a split (default: data.eval_split), in order (all when <= 0)."""
    exs = examples(self.source(split or self.data.eval_split), self.encode, seed=0, shuffle=False, num_epochs=1,
                   shard=(0, 1))
    return list(itertools.islice(self._batches(exs, batch_size), num_batches if num_batches > 0 else None))


class PackedLMData(TfdsTextData):
  """Next-token prediction over the documents of a TFDS text dataset, each ending with EOS.

  data.packing="documents": each row holds whole documents (longer ones are cut) with their own positions and
  segment ids, so no token attends to another document; the rest of a row is padding, weight 0.
  data.packing="stream": nanoGPT's rows (`StreamBatches`): the documents one after another, cut into full rows; no
  padding, nothing cut, and a token sees the end of the previous document (after its EOS), as in nanoGPT."""
  kind = "lm"
  PACKINGS = ("documents", "stream")

  def __init__(self, data, seed: int = 0, cache_dir=None, source_fn=None, tokenizer=None):
    if data.packing not in self.PACKINGS:
      raise ValueError(f"data.packing must be one of {self.PACKINGS}, got {data.packing!r}")
    super().__init__(data, seed, cache_dir, source_fn, tokenizer)
    self.seq_len = data.seq_len

  def encode(self, ex) -> dict[str, np.ndarray]:
    return {"targets": np.asarray(self.tokenizer.encode(as_text(ex[self.data.text_key])) + [self.tokenizer.eos_id],
                                  np.int32)}

  def to_model_batch(self, batch: dict) -> dict[str, np.ndarray]:
    seg = batch["targets_segment_ids"]
    # weights from the segment ids, not from target id 0: GPT-2's id 0 is a real token
    return {"inputs": shift_right(batch["targets"], seg, self.tokenizer.bos_id), "targets": batch["targets"],
            "segment_ids": seg, "positions": batch["targets_positions"], "weights": (seg > 0).astype(np.float32)}

  def _batches(self, exs, batch_size: int):
    if self.data.packing == "stream":
      return StreamBatches(exs, batch_size, self.seq_len)
    return MappedBatches(PackedBatches(exs, batch_size, {"targets": self.seq_len}, keep_last=True),
                         self.to_model_batch)


class TextClassificationData(TfdsTextData):
  """(text, label) examples, one per row, cut or padded to data.max_len tokens (Long Range Arena's
  byte-level IMDB: data.tokenizer="byte")."""
  kind = "classification"
  specials = (PAD,)

  def __init__(self, data, seed: int = 0, cache_dir=None, source_fn=None, tokenizer=None):
    super().__init__(data, seed, cache_dir, source_fn, tokenizer)
    self.num_classes = data.num_classes

  def features(self) -> tuple[str, ...]:
    return (self.data.text_key, self.data.label_key)

  def encode(self, ex) -> dict[str, np.ndarray]:
    label = int(ex[self.data.label_key])
    if not 0 <= label < self.num_classes:
      raise ValueError(f"label {label} is outside [0, data.num_classes={self.num_classes})")
    return {"inputs": np.asarray(self.tokenizer.encode(as_text(ex[self.data.text_key])), np.int32),
            "label": np.asarray(label, np.int32)}

  def _batches(self, exs, batch_size: int):
    return PaddedBatches(exs, batch_size, {"inputs": self.data.max_len})
