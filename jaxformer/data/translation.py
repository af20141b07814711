"""Translation data: a TFDS translation dataset (WMT14 EN-DE, or the offline toy pair written as a
TFDS dataset) -> a shared SentencePiece vocabulary -> packed or length-bucketed batches.

config.data keys:
  name               TFDS name ("wmt14_translate/de-en") or "toy_translation"
  source_lang, target_lang   feature keys of the dataset ("en", "de"): either direction
  data_dir           TFDS data directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets)
  train_split, eval_split   (other splits by name: `jaxformer eval --split test`)
  vocab_size         SentencePiece pieces, trained on both languages (cached in the workdir)
  spm_max_chars      characters of shuffled training text the vocabulary is trained on
  max_len            tokens per side (incl. EOS); longer sentences are truncated and counted
  batching           "pack": train.batch_size rows of max_len, several sentence pairs per row with
                     segment ids; "bucket": batches of similar length, ~tokens_per_batch tokens per side
  tokens_per_batch, bucket_boundaries, bucket_window   for "bucket": token slots per batch and side
                     (padding included), bucket lengths, examples sorted together; batch_multiple: rows per
                     batch are a multiple of it (the data-parallel device count, or train.grad_accum)
  Sentences longer than max_len are cut, keeping their final EOS, and counted in the log.

Model batches: inputs / targets / decoder_inputs (targets shifted right, BOS first), plus
inputs_segment_ids, inputs_positions, decoder_segment_ids, decoder_positions when packed.
"""
from __future__ import annotations

import numpy as np

from jaxformer.data.pipeline import BucketedBatches, MappedBatches, PackedBatches, examples, shift_right
from jaxformer.data.sources import as_text
from jaxformer.data.text import TfdsTextData


class TranslationData(TfdsTextData):
  kind = "seq2seq"

  def __init__(self, data, seed: int = 0, cache_dir=None, source_fn=None, tokenizer=None):
    if data.batching not in ("pack", "bucket"):
      raise ValueError(f"data.batching must be 'pack' or 'bucket', got {data.batching!r}")
    self.src, self.tgt = data.source_lang, data.target_lang
    super().__init__(data, seed, cache_dir, source_fn, tokenizer)
    self.bos_id, self.eos_id = self.tokenizer.bos_id, self.tokenizer.eos_id

  def make_tokenizer(self, cache_dir):
    """One SentencePiece vocabulary for both languages, trained on shuffled sentences of both."""
    train = self.train_source

    def texts():
      for ex in examples(train, seed=self.seed, num_epochs=1, shard=(0, 1)):
        yield as_text(ex[self.src])
        yield as_text(ex[self.tgt])

    return self.sentencepiece(cache_dir, texts)

  def features(self) -> tuple[str, ...]:
    return (self.src, self.tgt)

  def encode(self, ex) -> dict[str, np.ndarray]:
    enc = lambda key: np.asarray(self.tokenizer.encode(as_text(ex[key])) + [self.eos_id], np.int32)
    return {"inputs": enc(self.src), "targets": enc(self.tgt)}

  def to_model_batch(self, batch: dict) -> dict[str, np.ndarray]:
    segments = batch.get("targets_segment_ids")
    out = {"inputs": batch["inputs"], "targets": batch["targets"],
           "decoder_inputs": shift_right(batch["targets"], segments, self.bos_id)}
    if segments is not None:
      out |= {"inputs_segment_ids": batch["inputs_segment_ids"], "inputs_positions": batch["inputs_positions"],
              "decoder_segment_ids": segments, "decoder_positions": batch["targets_positions"]}
    return out

  def _batches(self, exs, batch_size: int, batching: str = "pack"):
    d = self.data
    if batching == "pack":
      inner = PackedBatches(exs, batch_size, {"inputs": d.max_len, "targets": d.max_len}, keep_last=True)
    else:
      inner = BucketedBatches(exs, [b for b in d.bucket_boundaries if b < d.max_len] + [d.max_len],
                              d.tokens_per_batch, seed=self.seed, batch_multiple=d.batch_multiple,
                              window=d.bucket_window, keep_last=True)
    return MappedBatches(inner, self.to_model_batch)

  def train_iterator(self, batch_size: int):
    """Endless, shuffled anew each epoch, resumable (`get_state` / `set_state`)."""
    return self._batches(examples(self.train_source, self.encode, seed=self.seed), batch_size, self.data.batching)

  def texts(self, split: str, limit: int = 0) -> tuple[list[str], list[str]]:
    """(sources, references) of a split as raw text, the first `limit` pairs (all when 0)."""
    pairs = examples(self.source(split), seed=0, shuffle=False, num_epochs=1, shard=(0, 1))
    pairs = pairs.getitems(range(len(pairs) if limit <= 0 else min(limit, len(pairs))))
    return [as_text(p[self.src]) for p in pairs], [as_text(p[self.tgt]) for p in pairs]
