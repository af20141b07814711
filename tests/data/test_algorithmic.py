"""minGPT's sort and the grokking task: answers recomputed from the inputs, splits checked for leaks."""
import numpy as np
import pytest

from jaxformer.data import MinGPTSort, ModularArithmetic, build_dataset


def _rows_as_set(a):
  return {tuple(x) for x in np.asarray(a)}


def test_mingpt_sort_scores_exactly_the_sorted_half():
  ds = MinGPTSort(length=6, num_digits=3, seed=1)
  assert ds.kind == "lm" and ds.vocab_size == 4 == ds.tokenizer.vocab_size and ds.tokenizer.pad_id == 0
  b = ds.train_batch(5, 128)
  assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (128, 11)
  np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])  # next tokens
  for x, y, w in zip(b["inputs"], b["targets"], b["weights"]):
    prompt = x[:6]
    assert set(prompt) <= {1, 2, 3}
    np.testing.assert_array_equal(y[w > 0], np.sort(prompt))  # the scored targets are the sorted prompt
    assert list(np.flatnonzero(w)) == list(range(5, 11))
  assert ds.tokenizer.decode(list(b["inputs"][0, :6])) == "".join(str(d - 1) for d in b["inputs"][0, :6])


def test_mingpt_sort_split_is_a_partition_and_training_never_sees_test_inputs():
  ds = MinGPTSort(length=5, num_digits=3, test_fraction=0.25, seed=0)
  train, test = _rows_as_set(ds.train), _rows_as_set(ds.test)
  assert not train & test and len(train | test) == 3**5 and len(test) == round(0.25 * 3**5)
  seen = set()
  for step in range(20):
    seen |= _rows_as_set(ds.train_batch(step, 64)["inputs"][:, :5] - 1)
  assert seen <= train and len(seen) > len(train) // 2
  evals = ds.eval_batches(0, 16)  # the whole test split, the last batch padded with weight-0 rows
  assert len(evals) == -(-len(test) // 16)
  rows = np.concatenate([e["inputs"][e["weights"].sum(1) > 0] for e in evals])
  assert _rows_as_set(rows[:, :5] - 1) == test and len(rows) == len(test)
  assert len(ds.eval_batches(2, 16)) == 2
  assert MinGPTSort(length=5, seed=0).test.tolist() == ds.test.tolist()  # the split depends on the seed only
  assert MinGPTSort(length=5, seed=1).test.tolist() != ds.test.tolist()


def test_mingpt_sort_draws_inputs_with_few_distinct_digits_twice_as_often():
  ds = MinGPTSort(length=6, num_digits=6, seed=0)  # with 3 digits every input has few (as in minGPT's demo)
  few = np.array([len(set(x)) <= 3 for x in ds.train])
  assert 0 < few.sum() < len(ds.train)
  prompts = ds.train_batch(0, 4000)["inputs"][:, :6]
  drawn = np.mean([len(set(x)) <= 3 for x in prompts])
  expected = 2 * few.sum() / (len(ds.train) + few.sum())  # minGPT: P(x) proportional to 1 + few(x)
  assert abs(drawn - expected) < 0.03


@pytest.mark.parametrize("operation,fn", [("add", np.add), ("subtract", np.subtract), ("multiply", np.multiply)])
def test_modular_arithmetic_answers_and_split(operation, fn):
  p = 13
  ds = ModularArithmetic(p=p, operation=operation, train_fraction=0.3, seed=2)
  assert ds.kind == "lm" and ds.vocab_size == p + 2
  assert len(ds.train) == int(0.3 * p * p) and len(ds.train) + len(ds.test) == p * p
  assert len(ModularArithmetic(p=113).train) == 3830  # Nanda et al.'s split size
  assert not _rows_as_set(ds.train) & _rows_as_set(ds.test)
  full = ds.train_batch(0, len(ds.train))  # full batch: every training pair, every step
  assert _rows_as_set(full["inputs"][:, :2] - 1) == _rows_as_set(ds.train)
  np.testing.assert_array_equal(full["inputs"], ds.train_batch(7, len(ds.train))["inputs"])
  for b in (full, *ds.eval_batches(0, 32)):
    real = b["weights"][:, 2] > 0
    a, c = b["inputs"][real, 0] - 1, b["inputs"][real, 1] - 1
    np.testing.assert_array_equal(b["inputs"][real, 2], p + 1)  # "="
    np.testing.assert_array_equal(b["targets"][real, 2] - 1, fn(a, c) % p)
    np.testing.assert_array_equal(b["weights"][:, :2], 0.0)
  assert ds.tokenizer.decode([1, 2, p + 1]) == "0 1 ="
  small = ds.train_batch(3, 10)["inputs"][:, :2] - 1
  assert len(_rows_as_set(small)) == 10 and _rows_as_set(small) <= _rows_as_set(ds.train)


def test_algorithmic_tasks_reject_bad_settings():
  with pytest.raises(ValueError, match="num_digits"):
    MinGPTSort(num_digits=12)
  with pytest.raises(ValueError, match="too many"):
    MinGPTSort(length=9, num_digits=9)
  with pytest.raises(ValueError, match="operation"):
    ModularArithmetic(operation="divide")
  with pytest.raises(ValueError, match="full-batch"):
    ModularArithmetic(p=5).train_batch(0, 26)


def test_build_dataset_knows_the_algorithmic_tasks():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(name="modular_arithmetic", p=7, train_fraction=0.5))
  assert isinstance(build_dataset(cfg, seed=0), ModularArithmetic)
  cfg = ml_collections.ConfigDict(dict(name="mingpt_sort", length=4, digits=3))
  with pytest.raises(ValueError, match="unknown data config keys \\['digits'\\]"):
    build_dataset(cfg, seed=0)
