"""ListOps (LRA): every example is parsed and evaluated here, independently of the generator."""
import statistics
import time

import numpy as np
import pytest

from jaxformer.data.listops import ListOps, generate_listops

OPS = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(statistics.median(a)), "[SM": lambda a: sum(a) % 10}


def parse(words):
  """Paren-free ListOps words -> nested lists [op, arg, ...] (digits as ints), with a stack."""
  stack = [[]]
  for w in words:
    if w in OPS:
      stack.append([w])
    elif w == "]":
      node = stack.pop()
      stack[-1].append(node)
    else:
      assert w in tuple("0123456789"), w
      stack[-1].append(int(w))
  assert len(stack) == 1 and len(stack[0]) == 1, "unbalanced expression"
  return stack[0][0]


def evaluate(node):
  return node if isinstance(node, int) else OPS[node[0]]([evaluate(a) for a in node[1:]])


def lra_string(node):
  """LRA's own rendering: (op, a0) nested left with each further argument, then END; `to_string` with parens."""
  def tree(n):
    if isinstance(n, int):
      return n
    t = (n[0], tree(n[1]))
    for a in n[2:]:
      t = (t, tree(a))
    return (t, "]")

  def to_string(t):
    return str(t) if not isinstance(t, tuple) else "( " + to_string(t[0]) + " " + to_string(t[1]) + " )"
  return to_string(tree(node))


def walk(node, depth=1):
  """(depth, node) for every node, root at depth 1 as in LRA."""
  yield depth, node
  if not isinstance(node, int):
    for a in node[1:]:
      yield from walk(a, depth + 1)


def test_lra_string_format_and_tokenisation():
  text = "( ( ( [MAX 2 ) ( ( ( [SM 4 ) 7 ) ] ) ) ] )"  # the module docstring's example
  words = [w for w in text.split() if w not in "()"]
  assert lra_string(parse(words)) == text and evaluate(parse(words)) == 2
  tok = ListOps().tokenizer
  assert tok.vocab_size == 16 and tok.pad_id == 0
  assert tok.decode(tok.encode(text)) == "[MAX 2 [SM 4 7 ] ]"
  assert len(set(tok.encode("[MIN [MAX [MED [SM ] 0 1 2 3 4 5 6 7 8 9"))) == 15


@pytest.mark.parametrize("limits", [
    {"min_length": 5, "max_length": 60, "max_depth": 3, "max_args": 3},
    {"min_length": 20, "max_length": 200, "max_depth": 5, "max_args": 6},
    {},  # LRA: 500 < length < 2000, depth 10, 10 arguments
])
def test_generated_examples_evaluate_to_their_label_within_the_limits(limits):
  d = {"min_length": 500, "max_length": 2000, "max_depth": 10, "max_args": 10} | limits
  rng = np.random.default_rng(0)
  arg_counts, ops = set(), []
  for _ in range(300 if limits else 20):
    text, label = generate_listops(rng, **limits)
    words = text.split()
    core = [w for w in words if w not in ("(", ")")]
    node = parse(core)
    assert lra_string(node) == text
    assert evaluate(node) == label and 0 <= label <= 9
    assert d["min_length"] < len(core) < d["max_length"]
    for depth, n in walk(node):
      if isinstance(n, int):
        assert depth <= d["max_depth"]
      else:
        assert depth < d["max_depth"] and 2 <= len(n) - 1 <= d["max_args"]
        arg_counts.add(len(n) - 1)
        ops.append(n[0])
  assert set(ops) == set(OPS)
  assert arg_counts == set(range(2, d["max_args"] + 1))
  counts = np.array([ops.count(op) for op in OPS]) / len(ops)
  assert np.all(np.abs(counts - 0.25) < 5 * np.sqrt(0.25 * 0.75 / len(ops))), counts  # operators uniform


def test_unconditioned_trees_follow_lra_probabilities():
  """Without length limits: a node above max_depth is an operator w.p. 0.25, with 2..max_args arguments."""
  rng = np.random.default_rng(1)
  roots, inner, args = [], [], []
  for _ in range(3000):
    node = parse([w for w in generate_listops(rng, 4, 5, 0, 10**6)[0].split() if w not in ("(", ")")])
    roots.append(isinstance(node, int))
    for depth, n in walk(node):
      if not isinstance(n, int):
        args.append(len(n) - 1)
        inner += [isinstance(a, int) for a in n[1:] if depth + 1 < 4]
  assert abs(np.mean(roots) - 0.75) < 0.03 and abs(np.mean(inner) - 0.75) < 0.03
  np.testing.assert_allclose(np.bincount(args, minlength=6)[2:] / len(args), 0.25, atol=0.03)


def test_dataset_batches_are_labelled_padded_classification_examples():
  ds = ListOps(seed=0)
  assert ds.kind == "classification" and ds.num_classes == 10 and ds.vocab_size == 16 and ds.max_len == 2000
  start = time.perf_counter()
  b = ds.train_batch(0, 64)
  assert time.perf_counter() - start < 2.0, "64 LRA-sized examples should take well under a second"
  assert set(b) == {"inputs", "label"}
  assert b["inputs"].shape == (64, 2000) and b["inputs"].dtype == np.int32
  assert b["label"].shape == (64,) and b["label"].dtype == np.int32
  lengths = (b["inputs"] != 0).sum(1)
  assert np.all((500 < lengths) & (lengths < 2000))
  for x, n, label in zip(b["inputs"], lengths, b["label"]):
    assert np.all(x[:n] != 0) and np.all(x[n:] == 0)  # 0-padded at the end
    assert evaluate(parse(ds.tokenizer.decode(x).split())) == label
  assert len(set(b["label"].tolist())) > 3


def test_max_len_truncates_as_lra():
  b = ListOps(max_len=100, min_length=150, max_length=400, seed=1).train_batch(0, 4)
  assert b["inputs"].shape == (4, 100) and np.all(b["inputs"] != 0)


def test_batches_are_a_function_of_seed_and_step_and_held_out_is_separate():
  kw = {"min_length": 20, "max_length": 200, "max_len": 200}
  ds = ListOps(**kw, seed=0)
  for name, x in ds.train_batch(5, 8).items():
    np.testing.assert_array_equal(x, ListOps(**kw, seed=0).train_batch(5, 8)[name])
  assert not np.array_equal(ds.train_batch(0, 8)["inputs"], ds.train_batch(1, 8)["inputs"])
  assert not np.array_equal(ds.train_batch(0, 8)["inputs"], ListOps(**kw, seed=1).train_batch(0, 8)["inputs"])
  held = ds.eval_batches(2, 8)
  np.testing.assert_array_equal(held[1]["inputs"], ds.eval_batches(2, 8)[1]["inputs"])
  train_rows = {r.tobytes() for s in range(10) for r in ds.train_batch(s, 8)["inputs"]}
  assert not any(r.tobytes() in train_rows for h in held for r in h["inputs"])


def test_invalid_limits_raise():
  for kw in ({"min_length": 2000}, {"min_length": 1999}, {"max_args": 1}, {"max_depth": 1}, {"max_len": 0},
             {"max_depth": 3, "max_args": 3, "min_length": 17}):  # 3 x 3 trees have at most 17 tokens
    with pytest.raises(ValueError, match="ListOps"):
      ListOps(**kw)
