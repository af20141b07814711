"""Deterministic, resumable batching over random-access examples.

    source (tfds.data_source, a list, ...)
      -> `examples()`: grain's index stream (this process's shard, shuffled per epoch with a seed,
         repeated) over the source, tokenized lazily on access (random access: example i is a pure
         function of i), read in chunks through the source's `__getitems__`
      -> `PackedBatches`   rows filled with whole examples, `<f>_segment_ids` / `<f>_positions` per feature
         `BucketedBatches` examples of similar length together, about `tokens_per_batch` tokens per batch
         `StepBatches`     for generated tasks whose batch is a pure function of (seed, step)
         `StreamBatches`   the examples' tokens as one stream cut into full rows (nanoGPT's LM rows)

Every batch iterator has `get_state()` -> a small JSON-able dict and `set_state(state)`; an iterator
restored from a state yields exactly the batches the original would have yielded next. The state is
tiny because batching never carries examples over between batches: a batch is a pure function of the
position it starts at.

Examples are dicts of 1-D int32 token arrays (e.g. {"inputs": ..., "targets": ...}). Id 0 is padding.
"""
from __future__ import annotations

import logging
import math

import grain
import jax
import numpy as np

log = logging.getLogger("jaxformer.data")
READ_CHUNK = 256  # examples per source read: array_record reads a batch of records ~15x faster than one by one


def examples(source, transform=None, *, seed: int, shuffle: bool = True, num_epochs: int | None = None,
             shard: tuple[int, int] | None = None) -> Examples:
  """A random-access view of `source` for this process: shard (index, count) (default: this JAX
  process of all), a fresh seeded permutation every epoch, `num_epochs` repetitions (None: forever),
  then `transform` applied lazily to each example."""
  index, count = shard or (jax.process_index(), jax.process_count())
  order = grain.MapDataset.range(len(source))
  if count > 1:
    if len(order) < count:
      raise ValueError(f"{len(order)} examples cannot be sharded over {count} processes")
    order = order[index::count]
  if shuffle:
    order = order.seed(seed).shuffle()
  if num_epochs != 1:
    order = order.repeat(num_epochs)
  return Examples(source, order, transform)


class Examples:
  """Example i = transform(source[order[i]]), `order` a grain MapDataset of source indices.

  `getitems` reads many examples in one call of the source's `__getitems__` (array_record reads them
  in parallel: ~15x faster than one by one); the batchers read ahead through it.
  """

  def __init__(self, source, order, transform=None):
    self.source, self.order, self.transform = source, order, transform
    self.batched = hasattr(source, "__getitems__")

  def __len__(self) -> int:
    return len(self.order)

  def __getitem__(self, i: int):
    return self.getitems([i])[0]

  def getitems(self, indices) -> list:
    idx = [int(self.order[i]) for i in indices]  # (grain wraps indices around: callers stop at len())
    raw = None
    if self.batched:
      try:
        raw = self.source.__getitems__(idx)
      except TypeError as e:  # e.g. the source tfds.testing.mock_data substitutes
        self.batched = False
        log.info("%s cannot read many examples at once (%s); reading them one by one", type(self.source).__name__, e)
    if raw is None:
      raw = [self.source[j] for j in idx]
    return raw if self.transform is None else [self.transform(x) for x in raw]

  def __iter__(self):
    for first in range(0, len(self), READ_CHUNK):
      yield from self.getitems(range(first, min(first + READ_CHUNK, len(self))))


class _ReadAhead:
  """Example i of `examples`, read in chunks of `chunk` consecutive indices (only the current chunk is kept)."""

  def __init__(self, examples, chunk: int = READ_CHUNK):
    self.examples, self.chunk, self.first, self.items = examples, chunk, 0, []

  def __len__(self) -> int:
    return len(self.examples)

  def __getitem__(self, i: int):
    if not self.first <= i < self.first + len(self.items):
      self.first = i
      self.items = self.examples.getitems(range(i, min(i + self.chunk, len(self.examples))))
    return self.items[i - self.first]


class _Truncation:
  """Cuts features to their maximum length and counts it in the log (the 1st, 10th, 100th, ...)
  instead of hiding it. keep_last: keep the final token (EOS) after the cut."""

  def __init__(self, lengths: dict[str, int], keep_last: bool = False):
    self.lengths, self.keep_last, self.count, self.last_index = lengths, keep_last, 0, -1

  def __call__(self, ex: dict, index: int) -> dict:
    out, cut = {}, False
    for k, n in self.lengths.items():
      x = ex[k]
      if len(x) > n:
        cut = True
        x = np.concatenate([x[:n - 1], x[-1:]]) if self.keep_last else x[:n]
      out[k] = x
    if cut and index > self.last_index:  # an example re-read for the next batch counts once
      self.count += 1
      if math.log10(self.count).is_integer():
        log.warning("%d examples cut to the maximum lengths %s so far; raise data.max_len to keep them whole",
                    self.count, self.lengths)
    self.last_index = max(self.last_index, index)
    return out


class _Resumable:
  """A batch iterator whose state is the integer attributes named in `STATE`."""
  STATE: tuple[str, ...] = ("index",)

  def get_state(self) -> dict:
    return {k: getattr(self, k) for k in self.STATE}

  def set_state(self, state: dict) -> None:
    for k in self.STATE:
      setattr(self, k, int(state[k]))

  def __iter__(self):
    return self


class PackedBatches(_Resumable):
  """Fill `batch_size` rows per feature (lengths: feature -> row length) with whole examples.

  First fit: each example goes to the first row where every feature still fits; when it fits in no
  row the batch is closed and the example starts the next batch. Outputs per feature `f`: `f` tokens
  [B, L] (0 = padding), `f_segment_ids` (1, 2, ... per example in a row, 0 for padding) and
  `f_positions` (0-based, restarting at every example). Examples longer than a row are truncated
  (counted and logged). A finite example stream ends with one partly filled batch.
  """

  def __init__(self, examples, batch_size: int, lengths: dict[str, int], keep_last: bool = False):
    self.examples, self.batch_size, self.lengths = _ReadAhead(examples), batch_size, dict(lengths)
    self.index = 0
    self.truncate = _Truncation(self.lengths, keep_last)

  def _get(self, i):
    return self.truncate(self.examples[i], i) if i < len(self.examples) else None

  def __next__(self) -> dict[str, np.ndarray]:
    b = self.batch_size
    out = {}
    for k, n in self.lengths.items():
      out[k] = np.zeros((b, n), np.int32)
      out[f"{k}_segment_ids"] = np.zeros((b, n), np.int32)
      out[f"{k}_positions"] = np.zeros((b, n), np.int32)
    keys = list(self.lengths)
    room = np.tile(np.array([self.lengths[k] for k in keys])[:, None], (1, b))  # free slots per feature and row
    segments = np.zeros(b, np.int32)
    placed = 0
    while (ex := self._get(self.index)) is not None:
      fits = np.all(room >= np.array([len(ex[k]) for k in keys])[:, None], axis=0)
      if not fits.any():
        break
      row = int(np.argmax(fits))  # the first row where every feature fits
      segments[row] += 1
      for f, k in enumerate(keys):
        x, start = ex[k], self.lengths[k] - room[f, row]
        out[k][row, start:start + len(x)] = x
        out[f"{k}_segment_ids"][row, start:start + len(x)] = segments[row]
        out[f"{k}_positions"][row, start:start + len(x)] = np.arange(len(x))
        room[f, row] -= len(x)
      self.index += 1
      placed += 1
    if placed == 0:
      raise StopIteration
    return out


class BucketedBatches(_Resumable):
  """Length bucketing (the paper's "batched together by approximate sequence length").

  Reads `window` examples at a time, puts each in the smallest bucket boundary that holds its longest
  feature, and cuts every bucket into batches of `max(1, tokens_per_batch // boundary)` rows (rounded
  down to a multiple of `batch_multiple`, e.g. the data-parallel device count), padded to the boundary;
  `tokens_per_batch` counts token slots, padding included.
  A bucket's last batch in a window is filled up with empty rows (all padding), so every bucket has one
  fixed shape: one compilation per bucket. The window's batches come in a seeded random order.
  Examples longer than the largest boundary are truncated (counted and logged).
  """
  STATE = ("start", "position")

  def __init__(self, examples, boundaries, tokens_per_batch: int, *, features=("inputs", "targets"),
               window: int = 10_000, seed: int = 0, batch_multiple: int = 1, keep_last: bool = False):
    self.examples, self.boundaries = examples, sorted(int(b) for b in boundaries)
    self.features, self.window, self.seed = tuple(features), window, seed
    self.sizes = [max(batch_multiple, (tokens_per_batch // n) // batch_multiple * batch_multiple)
                  for n in self.boundaries]
    self.truncate = _Truncation({k: self.boundaries[-1] for k in self.features}, keep_last)
    self.start, self.position, self._batches = 0, 0, None

  def set_state(self, state: dict) -> None:
    super().set_state(state)
    self._batches = None

  def _window_batches(self) -> list[dict[str, np.ndarray]]:
    end = min(self.start + self.window, len(self.examples))
    exs = [self.truncate(ex, self.start + i) for i, ex in enumerate(self.examples.getitems(range(self.start, end)))]
    buckets: dict[int, list[dict]] = {}
    for ex in exs:
      longest = max(len(ex[k]) for k in self.features)
      buckets.setdefault(int(np.searchsorted(self.boundaries, longest)), []).append(ex)
    batches = []
    for b, group in sorted(buckets.items()):
      size, n = self.sizes[b], self.boundaries[b]
      for first in range(0, len(group), size):
        batch = {k: np.zeros((size, n), np.int32) for k in self.features}
        for row, ex in enumerate(group[first:first + size]):
          for k in self.features:
            batch[k][row, :len(ex[k])] = ex[k]
        batches.append(batch)
    order = np.random.default_rng([self.seed, self.start]).permutation(len(batches))
    return [batches[i] for i in order], len(exs)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._batches is None:
      self._batches, self._count = self._window_batches()
    if self.position >= len(self._batches):
      if self._count < self.window:  # a finite stream ended inside this window
        raise StopIteration
      self.start, self.position = self.start + self.window, 0
      self._batches, self._count = self._window_batches()
      if not self._batches:
        raise StopIteration
    batch = self._batches[self.position]
    self.position += 1
    return batch


class StepBatches(_Resumable):
  """Batches of a generated task, `make_batch(step, batch_size)` a pure function of (seed, step)."""
  STATE = ("step",)

  def __init__(self, make_batch, batch_size: int):
    self.make_batch, self.batch_size, self.step = make_batch, batch_size, 0

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.make_batch(self.step, self.batch_size)
    self.step += 1
    return batch


class StreamBatches(_Resumable):
  """nanoGPT's LM rows: the examples' "targets" tokens as one stream, cut into rows of `seq_len` + 1 tokens where
  each row starts on the last token of the one before, so every token but the first is a target once:
  inputs = row[:-1], targets = row[1:]. No padding; a finite stream ends with fewer rows (the tokens left over
  after the last full row are dropped). The state is where the next batch starts: example `index`, token `offset`.
  """
  STATE = ("index", "offset")

  def __init__(self, examples, batch_size: int, seq_len: int):
    self.examples, self.batch_size, self.seq_len = _ReadAhead(examples), batch_size, seq_len
    self.index = self.offset = 0

  def _take(self, n: int) -> list[np.ndarray]:
    """Up to n tokens from the current position on, moving past them."""
    out = []
    while n > 0 and self.index < len(self.examples):
      tokens = self.examples[self.index]["targets"]
      piece = tokens[self.offset:self.offset + n]
      out.append(piece)
      n -= len(piece)
      self.offset += len(piece)
      if self.offset >= len(tokens):
        self.index, self.offset = self.index + 1, 0
    return out

  def __next__(self) -> dict[str, np.ndarray]:
    L = self.seq_len
    parts = self._take(self.batch_size * L)
    start_of_next = self.get_state()
    parts += self._take(1)  # the last target, which is the next batch's first input
    self.set_state(start_of_next)
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    rows = (len(tokens) - 1) // L
    if rows < 1:
      raise StopIteration
    windows = np.lib.stride_tricks.sliding_window_view(tokens[:rows * L + 1], L + 1)[::L]  # [rows, L + 1]
    return {"inputs": np.ascontiguousarray(windows[:, :-1]), "targets": np.ascontiguousarray(windows[:, 1:])}


def train_batches(ds, batch_size: int):
  """This process's training batches of `batch_size` rows: the dataset's own iterator (which reads this
  process's shard of the examples), or `StepBatches` over `train_batch` (with several processes, each
  takes its block of rows of the global batch, so the global batch does not depend on the process count)."""
  if hasattr(ds, "train_iterator"):
    return ds.train_iterator(batch_size)
  index, count = jax.process_index(), jax.process_count()
  if count == 1:
    return StepBatches(ds.train_batch, batch_size)
  rows = slice(index * batch_size, (index + 1) * batch_size)
  return StepBatches(lambda step, bs: {k: v[rows] for k, v in ds.train_batch(step, bs * count).items()}, batch_size)


def shift_right(targets: np.ndarray, segment_ids: np.ndarray | None, start_id: int) -> np.ndarray:
  """Decoder inputs for teacher forcing: every token moves one place right and each example (segment)
  starts with `start_id`; padding stays 0. With packed rows no token sees the previous example's last one."""
  shifted = np.zeros_like(targets)
  shifted[:, 1:] = targets[:, :-1]
  if segment_ids is None:  # one example per row, right-padded
    segment_ids = (targets != 0).astype(np.int32)
  first = np.ones_like(segment_ids, bool)
  first[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
  shifted = np.where(first, start_id, shifted)
  return np.where(segment_ids > 0, shifted, 0).astype(targets.dtype)


class MappedBatches:
  """`fn` applied to every batch of a resumable iterator; the state is the inner iterator's."""

  def __init__(self, inner, fn):
    self.inner, self.fn = inner, fn

  def get_state(self) -> dict:
    return self.inner.get_state()

  def set_state(self, state: dict) -> None:
    self.inner.set_state(state)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return self.fn(next(self.inner))


class PaddedBatches(_Resumable):
  """One example per row: features in `lengths` cut/padded to their length, other (scalar) features
  stacked. A finite stream ends with a smaller last batch."""

  def __init__(self, examples, batch_size: int, lengths: dict[str, int]):
    self.examples, self.batch_size, self.index = _ReadAhead(examples), batch_size, 0
    self.lengths, self.truncate = dict(lengths), _Truncation(dict(lengths))

  def __next__(self) -> dict[str, np.ndarray]:
    rows = []
    while len(rows) < self.batch_size and self.index < len(self.examples):
      ex = self.examples[self.index]
      rows.append(ex | self.truncate(ex, self.index))
      self.index += 1
    if not rows:
      raise StopIteration
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in self.lengths}
    for k, n in self.lengths.items():
      out[k] = np.zeros((len(rows), n), np.int32)
      for i, r in enumerate(rows):
        out[k][i, :len(r[k])] = r[k]
    return out
