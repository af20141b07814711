"""Associative recall (H3) and MQAR (Zoology): answers checked by scanning the inputs, not the generator's state."""
import numpy as np
import pytest

from jaxformer.data.recall import MQAR, AssociativeRecall
from jaxformer.data.tokenizers import WordTokenizer, tokenizer_from_dict


def _assert_lm_batch(b, batch_size, seq_len):
  assert set(b) == {"inputs", "targets", "weights"}
  for name, dtype in (("inputs", np.int32), ("targets", np.int32), ("weights", np.float32)):
    assert b[name].shape == (batch_size, seq_len) and b[name].dtype == dtype, name


# --- associative recall -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size,input_seq_len", [(20, 40), (10, 20), (7, 2), (40, 64)])
def test_associative_recall_answer_is_the_value_bound_to_the_query_key(vocab_size, input_seq_len):
  ds = AssociativeRecall(vocab_size, input_seq_len, seed=3)
  assert ds.kind == "lm" and ds.vocab_size == vocab_size == ds.tokenizer.vocab_size and ds.tokenizer.pad_id == 0
  b = ds.train_batch(0, 256)
  _assert_lm_batch(b, 256, input_seq_len + 2)
  num_keys = (vocab_size - 2) // 2
  keys, values = set(range(2, 2 + num_keys)), set(range(2 + num_keys, vocab_size))
  np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])  # next tokens
  np.testing.assert_array_equal(b["weights"].sum(1), 1.0)
  np.testing.assert_array_equal(b["weights"][:, -1], 1.0)
  for x, y in zip(b["inputs"], b["targets"]):
    context, marker, query, answer = x[:-2], x[-2], x[-1], y[-1]
    assert marker == 1 and query in keys and answer in values
    assert set(context[0::2]) <= keys and set(context[1::2]) <= values
    bound = {}
    for k, v in zip(context[0::2], context[1::2]):
      assert bound.setdefault(k, v) == v, "a repeated key must show the same value"
    assert bound[query] == answer


def test_associative_recall_query_is_uniform_over_the_keys_present():
  b = AssociativeRecall(20, 40, seed=0).train_batch(0, 4000)
  context, query = b["inputs"][:, :-2:2], b["inputs"][:, -1]
  expected = np.mean([1 / len(set(c)) for c in context])  # P(query is any one given present key), ~0.12
  assert abs(np.mean(query == context[:, 0]) - expected) < 0.02  # not biased to the first pair / by multiplicity
  assert abs(np.mean(query == context.min(1)) - expected) < 0.02  # nor to small ids
  assert len(set(query)) == 9  # every key gets queried


def test_associative_recall_train_all_tokens_weights_every_training_target_only():
  plain, safari = AssociativeRecall(20, 40, seed=4), AssociativeRecall(20, 40, train_all_tokens=True, seed=4)
  a, b = plain.train_batch(3, 16), safari.train_batch(3, 16)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  np.testing.assert_array_equal(b["weights"], 1.0)
  for x, y in zip(plain.eval_batches(2, 16), safari.eval_batches(2, 16)):  # held out: the answer only
    np.testing.assert_array_equal(x["weights"], y["weights"])
    np.testing.assert_array_equal(y["weights"].sum(1), 1.0)


def test_associative_recall_validates_its_arguments():
  with pytest.raises(ValueError, match="vocab_size"):
    AssociativeRecall(vocab_size=3)
  with pytest.raises(ValueError, match="even"):
    AssociativeRecall(input_seq_len=41)


# --- MQAR ---------------------------------------------------------------------------------------------------


def _check_mqar(ds, b):
  v, k, passes = ds.vocab_size, ds.num_kv_pairs, ds.num_passes
  c = 2 * k * passes
  half = v // 2
  _assert_lm_batch(b, len(b["inputs"]), ds.input_seq_len)
  np.testing.assert_array_equal(b["weights"].sum(1), k)  # one weighted position per query
  for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
    ctx_keys, ctx_values = x[:c:2], x[1:c:2]
    assert np.all((1 <= ctx_keys) & (ctx_keys < half)) and np.all((half <= ctx_values) & (ctx_values < v))
    assert len(set(ctx_keys[:k])) == k and len(set(ctx_values[:k])) == k
    for p in range(1, passes):  # later passes repeat the first
      np.testing.assert_array_equal(x[p * 2 * k:(p + 1) * 2 * k], x[:2 * k])
    pos = np.flatnonzero(w)
    assert np.all(w[pos] == 1.0) and np.all(pos >= c) and np.all((pos - c) % 2 == 0)
    for t in pos:
      hits = np.flatnonzero(ctx_keys == x[t])
      assert len(hits) == passes, "a query key occurs once per pass among the kv pairs"
      assert y[t] == ctx_values[hits[0]]
    assert sorted(x[pos]) == sorted(ctx_keys[:k]), "every key is queried exactly once"
    rest = np.setdiff1d(np.arange(len(x) - 1), pos)
    np.testing.assert_array_equal(y[rest], x[rest + 1])  # elsewhere targets are the next tokens
    filler = np.setdiff1d(np.arange(c, len(x)), pos)
    if ds.random_non_queries:
      assert np.all((1 <= x[filler]) & (x[filler] < v))
    else:
      assert np.all(x[filler] == 0)


@pytest.mark.parametrize("kw", [
    {},  # zoology defaults: vocab 8192, length 64, 8 pairs
    {"vocab_size": 40, "input_seq_len": 32, "num_kv_pairs": 4},
    {"vocab_size": 12, "input_seq_len": 20, "num_kv_pairs": 5},  # every key of the vocabulary, slots full
    {"vocab_size": 64, "input_seq_len": 48, "num_kv_pairs": 6, "num_passes": 2, "power_a": 1.0},
    {"vocab_size": 30, "input_seq_len": 40, "num_kv_pairs": 3, "random_non_queries": False},
])
def test_mqar_targets_are_the_values_bound_to_the_queries(kw):
  ds = MQAR(**kw, seed=1)
  assert ds.kind == "lm" and ds.vocab_size == kw.get("vocab_size", 8192) == ds.tokenizer.vocab_size
  _check_mqar(ds, ds.train_batch(0, 64))
  _check_mqar(ds, ds.eval_batches(1, 16)[0])


def test_mqar_query_gaps_follow_the_power_law():
  def gap_counts(power_a):
    ds = MQAR(vocab_size=100, input_seq_len=64, num_kv_pairs=1, power_a=power_a)
    pos = np.argmax(ds.train_batch(0, 5000)["weights"], axis=1)
    return np.bincount((pos - 2) // 2, minlength=31) / 5000

  space = np.arange(1, 32)
  p = space ** (0.01 - 1.0)
  assert abs(gap_counts(0.01)[0] - p[0] / p.sum()) < 0.02  # ~0.25 for the first slot
  uniform = gap_counts(1.0)
  assert abs(uniform[0] - 1 / 31) < 0.01 and abs(uniform[-1] - 1 / 31) < 0.01


def test_mqar_validates_its_arguments():
  with pytest.raises(ValueError, match="input_seq_len"):
    MQAR(vocab_size=100, input_seq_len=32, num_kv_pairs=9)  # 9 pairs + 9 query slots need 36
  with pytest.raises(ValueError, match="vocab_size"):
    MQAR(vocab_size=10, input_seq_len=64, num_kv_pairs=5)  # keys are [1, 5): only 4
  with pytest.raises(ValueError, match="even"):
    MQAR(input_seq_len=63)
  with pytest.raises(ValueError, match="power_a"):
    MQAR(power_a=0.0)


# --- shared: determinism, held-out stream, tokenizer --------------------------------------------------------


@pytest.mark.parametrize("make", [lambda seed: AssociativeRecall(seed=seed), lambda seed: MQAR(seed=seed)])
def test_batches_are_a_function_of_seed_and_step_and_held_out_is_separate(make):
  ds, again = make(0), make(0)
  for step in (0, 7):
    a, b = ds.train_batch(step, 8), again.train_batch(step, 8)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  assert not np.array_equal(ds.train_batch(0, 8)["inputs"], ds.train_batch(1, 8)["inputs"])
  assert not np.array_equal(ds.train_batch(0, 8)["inputs"], make(1).train_batch(0, 8)["inputs"])
  held = ds.eval_batches(3, 8)
  np.testing.assert_array_equal(held[2]["inputs"], again.eval_batches(3, 8)[2]["inputs"])
  assert not np.array_equal(held[0]["inputs"], held[1]["inputs"])
  train_rows = {r.tobytes() for s in range(20) for r in ds.train_batch(s, 8)["inputs"]}
  assert not any(r.tobytes() in train_rows for h in held for r in h["inputs"])


def test_word_tokenizer_round_trips_and_serialises():
  ds = MQAR(vocab_size=50, input_seq_len=32, num_kv_pairs=4)
  x = ds.train_batch(0, 1)["inputs"][0]
  assert ds.tokenizer.decode(x).split() == [str(i) for i in x]  # word "i" is id i
  assert ds.tokenizer.encode(ds.tokenizer.decode(x)) == x.tolist()
  ar = AssociativeRecall()
  assert ar.tokenizer.encode("=> 0 17") == [1, 2, 19]
  tok = WordTokenizer(["a", "b"], ignore=("(",))
  assert tok.encode("( b a") == [2, 1] and tok.decode([0, 2, 1, 0]) == "b a"
  d = tok.to_dict()
  assert d == {"kind": "word", "words": ["a", "b"], "specials": ["<pad>"], "ignore": ["("]}
  assert tokenizer_from_dict(d).encode("a b") == [1, 2]
  with pytest.raises(ValueError, match="not in the tokenizer"):
    tok.encode("c")
