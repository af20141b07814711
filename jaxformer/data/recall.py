"""Recall tasks for attention experiments, generated in-process (no download).

AssociativeRecall: H3's associative recall (Fu et al. 2023, "Hungry Hungry Hippos"; `generate_assoc_recall`
in HazyResearch/safari). A context of key-value pairs, then the query marker "=>", a key, and its value:

    3 12  0 15  3 12  7 9 ... => 0 15      (weights 1 only where the target is the final value)

Each sequence draws its own random map key -> value; the context draws `input_seq_len // 2` keys uniformly
*with* replacement (as safari), and a repeated key always shows the same value, so the answer is unique. The
query key is uniform over the keys present in the context (safari's default allow_dot=False). Ids: 0 pad,
1 "=>", then `(vocab_size - 2) // 2` keys and the rest values, written as safari's words "0", "1", ... (id =
word + 2); `vocab_size=20` therefore gives safari's 9 keys and 9 values (safari's 20 ids are 18 symbols, "=>"
and an unused "."; here the second special is padding).

MQAR: multi-query associative recall (Arora et al. 2023, "Zoology"; `multiquery_ar` in HazyResearch/zoology),
with the same parameters, defaults and ids: keys from [1, vocab_size // 2), values from [vocab_size // 2,
vocab_size), `num_kv_pairs` distinct keys with distinct values at the start (repeated `num_passes` times), then
each key queried once at `context + 2 * g`, the slots g = 0, 1, ... drawn without replacement with probability
proportional to `(g + 1) ** (power_a - 1)`, so most queries come soon after the context (zoology's power law).
The word for id i is "i". The target at a query
position is the key's value (the next input token there is filler, as in zoology); weights are 1 only there.

Deliberate differences from the originals:
  * Batches are a pure function of (seed, step), drawn on demand: no fixed example pool and no de-duplication
    (safari de-duplicates its train/test sets, zoology warns on train/test overlap). Held-out batches come
    from an independent random stream.
  * MQAR filler (random_non_queries=True) is drawn from [1, vocab_size), never 0, because id 0 is padding
    here (zoology draws from [0, vocab_size)). With random_non_queries=False the blanks are 0, as in zoology;
    models here mask id 0 as a key, which drops only those information-free blanks.
  * Zoology's `assert vocab_size > input_seq_len` is not kept: nothing in the construction needs it.
  * Safari trains on every next token and scores only the answer. Here `weights` mark only the answer unless
    `train_all_tokens=True` (safari's way: every training target weighs 1, and a repeated key's value is
    itself a recall to learn from); held-out batches always score only the answer. Safari's multi-token keys
    (num_keys > 1) are not implemented.
  * `input_seq_len` must be even for both tasks (safari silently uses `input_seq_len // 2` pairs).
"""
from __future__ import annotations

import numpy as np

from jaxformer.data.tokenizers import WordTokenizer

HELD_OUT_STREAM = 2**31 - 1  # the rng key of the held-out batches: [seed, HELD_OUT_STREAM]


class _RecallTask:
  """Shared batching: `_batch(batch_size, rng)` is the task; train/eval streams as the other datasets."""
  kind = "lm"

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    return self._batch(batch_size, np.random.default_rng([self.seed, step]))

  def eval_batches(self, num_batches: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng([self.seed, HELD_OUT_STREAM])
    return [self._batch(batch_size, rng) for _ in range(num_batches)]


class AssociativeRecall(_RecallTask):
  """H3 associative recall: key-value pairs, "=>", a key; predict its value. Sequences are input_seq_len + 2."""

  def __init__(self, vocab_size: int = 20, input_seq_len: int = 40, train_all_tokens: bool = False, seed: int = 0):
    if vocab_size < 4:
      raise ValueError(f"associative recall needs vocab_size >= 4 (pad, '=>', a key, a value), got {vocab_size}")
    if input_seq_len < 2 or input_seq_len % 2:
      raise ValueError(f"associative recall needs an even input_seq_len >= 2 (key-value pairs), got {input_seq_len}")
    self.input_seq_len, self.seed, self.train_all_tokens = input_seq_len, seed, train_all_tokens
    self.num_keys = (vocab_size - 2) // 2
    self.num_values = vocab_size - 2 - self.num_keys
    self.query_id, self.first_key, self.first_value = 1, 2, 2 + self.num_keys
    self.seq_len = input_seq_len + 2  # pairs + "=>" + key (the value is the last target)
    self.tokenizer = WordTokenizer(["=>"] + [str(i) for i in range(vocab_size - 2)])

  def _batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    b, pairs = batch_size, self.input_seq_len // 2
    kv_map = rng.integers(self.num_values, size=(b, self.num_keys))  # each sequence's key -> value
    keys = rng.integers(self.num_keys, size=(b, pairs))
    values = np.take_along_axis(kv_map, keys, axis=1)
    present = np.zeros((b, self.num_keys), bool)
    np.put_along_axis(present, keys, True, axis=1)
    query = np.argmax(np.where(present, rng.random((b, self.num_keys)), -1.0), axis=1)  # uniform over present keys
    seq = np.empty((b, self.seq_len + 1), np.int32)
    seq[:, 0:-3:2] = keys + self.first_key
    seq[:, 1:-3:2] = values + self.first_value
    seq[:, -3] = self.query_id
    seq[:, -2] = query + self.first_key
    seq[:, -1] = kv_map[np.arange(b), query] + self.first_value
    weights = np.zeros((b, self.seq_len), np.float32)
    weights[:, -1] = 1.0
    return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "weights": weights}

  def train_batch(self, step: int, batch_size: int) -> dict[str, np.ndarray]:
    batch = super().train_batch(step, batch_size)
    if self.train_all_tokens:  # safari's training loss: every next token (held-out batches score the answer only)
      batch["weights"] = np.ones_like(batch["weights"])
    return batch


class MQAR(_RecallTask):
  """Zoology multi-query associative recall: `num_kv_pairs` pairs, then each key queried once (power-law gaps)."""

  def __init__(self, vocab_size: int = 8192, input_seq_len: int = 64, num_kv_pairs: int = 8, power_a: float = 0.01,
               random_non_queries: bool = True, num_passes: int = 1, seed: int = 0):
    if input_seq_len < 4 or input_seq_len % 2:
      raise ValueError(f"MQAR needs an even input_seq_len >= 4, got {input_seq_len}")
    if num_kv_pairs < 1 or num_passes < 1:
      raise ValueError(f"MQAR needs num_kv_pairs >= 1 and num_passes >= 1, got {num_kv_pairs}, {num_passes}")
    if num_kv_pairs > min(vocab_size // 2 - 1, vocab_size - vocab_size // 2):
      raise ValueError(f"num_kv_pairs={num_kv_pairs} distinct keys need vocab_size >= {2 * num_kv_pairs + 2} "
                       f"(keys are [1, vocab_size // 2)), got vocab_size={vocab_size}")
    if 2 * num_kv_pairs * (num_passes + 1) > input_seq_len:
      raise ValueError(f"num_kv_pairs={num_kv_pairs} with num_passes={num_passes} needs input_seq_len >= "
                       f"{2 * num_kv_pairs * (num_passes + 1)} (the pairs, then a query slot per pair), "
                       f"got {input_seq_len}")
    if not power_a > 0:
      raise ValueError(f"MQAR needs power_a > 0, got {power_a}")
    self.input_seq_len, self.num_kv_pairs = input_seq_len, num_kv_pairs
    self.power_a, self.random_non_queries, self.num_passes, self.seed = power_a, random_non_queries, num_passes, seed
    self.seq_len = input_seq_len
    self.context_size = 2 * num_kv_pairs * num_passes
    self.first_value = vocab_size // 2  # keys are [1, first_value), values [first_value, vocab_size)
    space = (input_seq_len - self.context_size) // 2  # query slots: context + 0, 2, 4, ...
    p = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    self.gap_p = p / p.sum()
    self.tokenizer = WordTokenizer([str(i) for i in range(1, vocab_size)])  # word "i" is id i

  def _batch(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    k, c, n = self.num_kv_pairs, self.context_size, self.input_seq_len
    seq = np.zeros((batch_size, n + 1), np.int32)
    query_pos = np.empty((batch_size, k), np.int64)
    values = np.empty((batch_size, k), np.int32)
    for i in range(batch_size):
      keys = 1 + rng.choice(self.first_value - 1, size=k, replace=False)
      values[i] = self.first_value + rng.choice(self.vocab_size - self.first_value, size=k, replace=False)
      pairs = np.stack([keys, values[i]], axis=1).reshape(-1)
      seq[i, :c] = np.tile(pairs, self.num_passes)
      query_pos[i] = c + 2 * rng.choice(len(self.gap_p), size=k, replace=False, p=self.gap_p)
      seq[i, query_pos[i]] = keys
    if self.random_non_queries:
      blank = seq == 0
      seq[blank] = rng.integers(1, self.vocab_size, size=int(blank.sum()))
    targets = seq[:, 1:].copy()
    weights = np.zeros((batch_size, n), np.float32)
    rows = np.arange(batch_size)[:, None]
    targets[rows, query_pos] = values
    weights[rows, query_pos] = 1.0
    return {"inputs": seq[:, :-1], "targets": targets, "weights": weights}
