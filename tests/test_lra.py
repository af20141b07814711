"""Long Range Arena: the five experiment configs (the release's sizes, the paper's Table 1), their smoke variants
trained through `train` with every attention kind somewhere, the Image / Pathfinder / Retrieval readers on
release-format files written here, the missing-data error, and the dual encoder's pair head by value."""
import importlib
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxformer.config import EXPERIMENTS_DIR, load_config
from jaxformer.data import DatasetMissingError, build_dataset, train_batches
from jaxformer.data.lra import RELEASE_URL, grayscale
from jaxformer.data.sources import tfds_source
from jaxformer.models import DualEncoderClassifier, build_model
from jaxformer.nn.config import ATTENTION_KINDS, TransformerConfig
from jaxformer.train import load_run, train
from jaxformer.train.evaluate import evaluate_run
from jaxformer.train.loop import model_config
from jaxformer.train.losses import cross_entropy
from jaxformer.train.optim import make_schedule
from jaxformer.train.step import _model_args, forward, targets_and_weights

CONFIGS = ("lra_listops", "lra_text", "lra_retrieval", "lra_image", "lra_pathfinder")
# Small attention settings for the smoke rows (window, features, blocks, chunks below the smoke lengths).
SMALL = ("model.attention.window=16", "model.attention.num_features=16", "model.attention.chunk_size=16",
         "model.attention.projection_len=16", "model.attention.block_size=16", "model.attention.num_buckets=4")


def _module(name):
  sys.path.insert(0, str(EXPERIMENTS_DIR))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(str(EXPERIMENTS_DIR))


# ---------------------------------------------------------------------------------------------- configs

# name: (layers, width, heads, head dim, MLP, length, batch, steps, model kind, dropout, positions)
RELEASE = {
    "lra_listops": (6, 512, 8, 64, 2048, 2000, 32, 5000, "encoder_classifier", 0.1, "sinusoidal"),
    "lra_text": (4, 256, 4, 64, 1024, 4000, 32, 20_000, "encoder_classifier", 0.1, "sinusoidal"),
    "lra_retrieval": (4, 128, 4, 32, 512, 4000, 32, 5000, "dual_encoder_classifier", 0.1, "sinusoidal"),
    "lra_image": (1, 32, 1, 32, 64, 1024, 256, 35_000, "encoder_classifier", 0.3, "learned"),
    "lra_pathfinder": (1, 128, 4, 16, 128, 1024, 512, 62_400, "encoder_classifier", 0.2, "sinusoidal"),
}
# The paper's Table 1, Transformer and Performer columns (test accuracy, %).
PAPER = {"lra_listops": (36.37, 18.01), "lra_text": (64.27, 65.40), "lra_retrieval": (57.46, 53.82),
         "lra_image": (42.44, 42.77), "lra_pathfinder": (71.40, 77.05)}


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_have_the_release_sizes_and_the_paper_numbers(name):
  c = load_config(name)
  m = c.model
  cfg = TransformerConfig.from_dict({**m.to_dict(), "vocab_size": 300})
  layers, width, heads, head_dim, mlp, length, batch, steps, kind, dropout, position = RELEASE[name]
  assert (m.num_layers, m.d_model, m.num_heads, cfg.dim_per_head, m.mlp_dim, m.max_len) == (
      layers, width, heads, head_dim, mlp, length)
  assert (c.train.batch_size, c.train.steps, c.model_kind, m.dropout_rate, m.position) == (
      batch, steps, kind, dropout, position)
  assert (m.attention.kind, m.attention_dropout_rate, m.pre_norm, m.qkv_bias) == ("softmax", 0.0, True, False)
  assert (c.reference.transformer, c.reference.performer) == PAPER[name] and len(c.reference) == 11
  for kind in ATTENTION_KINDS:  # one override away from every attention kind
    TransformerConfig.from_dict({**m.to_dict(), "vocab_size": 300, "attention": {"kind": kind}})


@pytest.mark.parametrize("name,base_lr,warmup", [("lra_listops", 0.05, 1000), ("lra_text", 0.05, 8000),
                                                 ("lra_retrieval", 0.05, 8000)])
def test_rsqrt_configs_follow_the_release_schedule(name, base_lr, warmup):
  """The release: lr(step) = 0.05 · min(1, step / warmup) / sqrt(max(step, warmup)), Adam(0.9, 0.98, 1e-9), wd 0.1."""
  c = load_config(name)
  schedule = make_schedule(c.optim, c.model.d_model, c.train.steps)
  for step in (10, warmup // 2, warmup, 3 * warmup):
    release = base_lr * min(1.0, step / warmup) / math.sqrt(max(step, warmup))
    assert float(schedule(step - 1)) == pytest.approx(release, rel=1e-5)  # ours counts updates from 0
  assert (c.optim.name, c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay) == ("adamw", 0.9, 0.98, 1e-9, 0.1)


@pytest.mark.parametrize("name,lr,warmup", [("lra_image", 5e-4, 175), ("lra_pathfinder", 1e-3, 312)])
def test_cosine_configs_follow_the_release_schedule(name, lr, warmup):
  c = load_config(name)
  schedule = make_schedule(c.optim, c.model.d_model, c.train.steps)
  assert float(schedule(warmup)) == pytest.approx(lr) and float(schedule(warmup // 2)) == pytest.approx(lr / 2, 0.01)
  assert float(schedule(c.train.steps)) == pytest.approx(0.0, abs=1e-9)
  assert (c.optim.name, c.optim.weight_decay, c.optim.clip_norm) == ("adam", 0.0, 0.0)


# ---------------------------------------------------------------------------------------------- fake release

def _write_release(root):
  """A tiny lra_release/ in the release's layout: Pathfinder PNGs + metadata (4 metadata files, one listing an
  empty image) and the AAN TSVs. Returns what was written, for the value checks."""
  rng = np.random.default_rng(0)
  pf = root / "lra_release" / "pathfinder32" / "curv_contour_length_14"
  images = []  # (pixels, label) in numeric metadata order
  for n in (0, 1, 2, 10):  # numeric order 0, 1, 2, 10 differs from the names' order 0, 1, 10, 2
    (pf / "imgs" / str(n)).mkdir(parents=True)
    lines = []
    for i in range(10):
      pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
      pixels[0, 0] = 0  # a black pixel is a real token
      label = int(rng.integers(0, 2))
      Image.fromarray(pixels, mode="L").save(pf / "imgs" / str(n) / f"sample_{i}.png")
      lines.append(f"imgs/{n} sample_{i}.png {i} {label} 14 1.5 1 2")
      images.append((pixels, label))
    if n == 1:
      (pf / "imgs" / "1" / "sample_10.png").write_bytes(b"")  # as the release's curv_baseline/imgs/0/sample_172
      lines.insert(3, "imgs/1 sample_10.png 10 1 14 1.5 1 2")
    (pf / "metadata").mkdir(exist_ok=True)
    (pf / "metadata" / f"{n}.npy").write_text("\n".join(lines) + "\n")
  tsv = root / "lra_release" / "tsv_data"
  tsv.mkdir(parents=True)
  pairs = {}
  for split, count in (("train", 24), ("eval", 8), ("test", 8)):
    rows = []
    for i in range(count):
      words = " ".join(f"w{int(x)}" for x in rng.integers(0, 50, int(rng.integers(5, 40))))
      text1 = f"paper {split} {i} caf\u00e9 {words}".encode()
      text2 = b"cited \xff raw byte " + words[::-1].encode()  # not valid UTF-8: bytes are kept as they are
      label = i % 2
      rows.append((label, text1, text2))
    pairs[split] = rows
    (tsv / f"new_aan_pairs.{split}.tsv").write_bytes(b"".join(
        f"{float(label) if i % 3 else label}\tid{i}a\tid{i}b\t".encode() + t1 + b"\t" + t2 + b"\n"
        for i, (label, t1, t2) in enumerate(rows)))
  return images, pairs


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp("lra")
  images, pairs = _write_release(root)
  return root, images, pairs


@pytest.fixture(scope="module")
def fast_compile():
  """Tiny models and 2-step runs cost their compilations: compile without XLA's optimisation passes."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def test_pathfinder_reader_gives_the_release_pixels_labels_and_splits(release):
  root, images, _ = release
  ds = build_dataset(_cfg(name="lra_pathfinder", data_dir=str(root)), 0)
  assert ds.kind == "classification" and ds.num_classes == 2 and ds.vocab_size == 257 and ds.seq_len == 1024
  sizes = {split: len(ds.source(split)) for split in ("train", "validation", "test")}
  assert sizes == {"train": 32, "validation": 4, "test": 4}  # 40 images (the empty one skipped), 80 / 10 / 10 %
  test = ds.eval_batches(0, 3, split="test")  # in order: the last 10 % of the numeric metadata order
  tokens = np.concatenate([b["inputs"] for b in test])
  labels = np.concatenate([b["label"] for b in test])
  for row, (pixels, label) in enumerate(images[36:]):
    np.testing.assert_array_equal(tokens[row], pixels.reshape(-1).astype(np.int32) + 1)
    assert labels[row] == label
  assert tokens[:, 0].tolist() == [1] * 4  # black pixels are token 1, not padding
  # the same files through the lra_release/ folder itself; a training batch is a shuffled set of training images
  again = build_dataset(_cfg(name="lra_pathfinder", data_dir=str(root / "lra_release")), 0)
  batch = next(train_batches(again, 8))
  train_rows = {img.reshape(-1).astype(np.int32).tobytes(): lab for img, lab in images[:32]}
  for row, label in zip(batch["inputs"], batch["label"]):
    assert train_rows[(row - 1).tobytes()] == label


def test_retrieval_reader_gives_both_documents_as_bytes(release):
  root, _, pairs = release
  ds = build_dataset(_cfg(name="lra_retrieval", data_dir=str(root), max_len=48), 0)
  assert ds.kind == "pair_classification" and ds.vocab_size == 257
  for split, file_split in (("validation", "eval"), ("test", "test")):
    batches = ds.eval_batches(0, 5, split=split)
    rows = [(a, b, y) for batch in batches for a, b, y in zip(batch["inputs1"], batch["inputs2"], batch["label"])]
    assert len(rows) == len(pairs[file_split])
    for (a, b, y), (label, text1, text2) in zip(rows, pairs[file_split]):
      for got, text in ((a, text1), (b, text2)):
        want = np.frombuffer(text[:48], np.uint8).astype(np.int32) + 1
        np.testing.assert_array_equal(got[:len(want)], want)
        assert not got[len(want):].any()  # padding
      assert y == label
  assert next(train_batches(ds, 4))["inputs1"].shape == (4, 48)


def test_cifar10_pixels_are_lra_grayscale(tmp_path):
  # LRA: tf.image.rgb_to_grayscale (0.2989, 0.5870, 0.1140), cast back to uint8 by truncating x * 255.5
  colours = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
  assert grayscale(colours).tolist() == [[0, 255, 76, 149, 29, 18]]  # green: 149.98 -> 149 (not rounded)
  with tfds.testing.mock_data(num_examples=8):
    ds = build_dataset(_cfg(name="cifar10"), 0, tmp_path)
    raw = tfds_source("cifar10", "test")
    batch = ds.eval_batches(1, 4, split="test")[0]
    assert ds.vocab_size == 257 and ds.num_classes == 10 and batch["inputs"].shape == (4, 1024)
    for row in range(4):
      np.testing.assert_array_equal(batch["inputs"][row], grayscale(raw[row]["image"]).reshape(-1) + 1)
      assert batch["label"][row] == raw[row]["label"]


@pytest.mark.parametrize("name", ["lra_pathfinder", "lra_retrieval"])
def test_missing_release_is_one_clear_error(name, tmp_path, capsys):
  with pytest.raises(DatasetMissingError, match="data.data_dir is not set") as e:
    build_dataset(_cfg(name=name), 0)
  assert RELEASE_URL in str(e.value)
  from jaxformer.cli import main
  assert main(["train", "--config", name, "--workdir", str(tmp_path / "run"), "--no-progress",
               f"--config.data.data_dir={tmp_path}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jaxformer train:") and RELEASE_URL in err[0]
  assert ("tsv_data/new_aan_pairs.train.tsv" if name == "lra_retrieval" else "pathfinder32") in err[0]


# ---------------------------------------------------------------------------------------------- dual encoder

def _dense(params, x):
  return x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])


def test_dual_encoder_classifies_u_v_their_product_and_difference(fast_compile):
  cfg = TransformerConfig(vocab_size=20, d_model=16, num_heads=2, mlp_dim=24, num_layers=1, max_len=16,
                          dropout_rate=0.0, num_classes=2, pad_id=0, attention_impl="reference")
  model = DualEncoderClassifier(cfg)
  rng = np.random.default_rng(0)
  a, b = rng.integers(1, 20, (3, 12)), rng.integers(1, 20, (3, 12))
  a[0, 7:], b[1, 4:] = 0, 0  # padded rows
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), a, b))["params"]
  assert {"embedder", "encoder", "mlp", "mlp2", "head"} == set(params)  # one encoder for both documents
  apply = jax.jit(lambda x, y: model.apply({"params": params}, x, y))
  encode = jax.jit(lambda x: model.apply({"params": params}, x, method=DualEncoderClassifier.encode))
  u, v = np.asarray(encode(a)), np.asarray(encode(b))

  def head(u, v):  # the release's classifier_head_dual with the paper's [u, v, u*v, u-v]
    h = np.maximum(_dense(params["mlp"], np.concatenate([u, v, u * v, u - v], -1)), 0)
    return _dense(params["head"], np.maximum(_dense(params["mlp2"], h), 0))

  np.testing.assert_allclose(apply(a, b), head(u, v), atol=1e-5, rtol=1e-5)
  swapped = np.asarray(apply(b, a))  # the documents change roles: v first, and v - u
  np.testing.assert_allclose(swapped, head(v, u), atol=1e-5, rtol=1e-5)
  assert not np.allclose(swapped, apply(a, b), atol=1e-3)
  # each document is encoded alone: its encoding ignores the other document and its own padding
  np.testing.assert_allclose(encode(np.pad(a, ((0, 0), (0, 4)))), u, atol=1e-5, rtol=1e-5)
  assert u.shape == (3, 16) and np.asarray(apply(a, b)).dtype == jnp.float32


# ---------------------------------------------------------------------------------------------- smoke runs

def _smoke_config(name, kind, release_root):
  """The config's smoke variant with this attention kind (the reference kernel: the quickest to compile)."""
  overrides = [*_module(name).SMOKE, f"model.attention.kind={kind}", "model.attention_impl=reference", *SMALL]
  if name in ("lra_retrieval", "lra_pathfinder"):
    overrides.append(f"data.data_dir={release_root}")
  return load_config(name, overrides)


def _smoke(name, kind, release_root, workdir, check_eval=False):
  config = _smoke_config(name, kind, release_root)
  with tfds.testing.mock_data(num_examples=16):
    results = train(config, workdir, progress=False)
    ev = evaluate_run(config, workdir, "test") if check_eval else None
  assert results["step"] == 2 and math.isfinite(results["eval"]["nll"]) and 0 <= results["eval"]["accuracy"] <= 1
  model, _, _ = load_run(workdir)
  assert type(model).__name__ == {"lra_retrieval": "DualEncoderClassifier"}.get(name, "EncoderClassifier")
  assert model.cfg.attention.kind == kind
  if ev is not None:
    assert ev["split"] == "test" and math.isfinite(ev["eval"]["nll"])


# Every attention kind once, spread over the five tasks: five kinds trained through `train` (each task once, plus
# `jaxformer eval` of the test split for the dual encoder), the other six a forward and backward pass of the model.
TRAINED = [("lra_listops", "lsh"), ("lra_text", "linear"), ("lra_retrieval", "performer"), ("lra_image", "bigbird"),
           ("lra_pathfinder", "linformer")]
STEPPED = [("lra_listops", "softmax"), ("lra_text", "sinks"), ("lra_retrieval", "differential"),
           ("lra_image", "sigmoid"), ("lra_pathfinder", "synthesizer"), ("lra_pathfinder", "local")]
assert sorted(k for _, k in TRAINED + STEPPED) == sorted(ATTENTION_KINDS)


@pytest.mark.parametrize("name,kind", TRAINED)
def test_smoke_variant_trains(name, kind, release, tmp_path, fast_compile):
  _smoke(name, kind, release[0], tmp_path, check_eval=name == "lra_retrieval")


@pytest.mark.slow  # every kind already trains an encoder classifier in CI (tests/nn/test_attention_kinds.py)
@pytest.mark.parametrize("name,kind", STEPPED)
def test_smoke_model_takes_a_gradient_step(name, kind, release, tmp_path, fast_compile):
  """The smoke config's model and data with this kind: finite loss, finite nonzero gradients (dropout and the
  kinds' random features on)."""
  config = _smoke_config(name, kind, release[0])
  with tfds.testing.mock_data(num_examples=16):
    ds = build_dataset(config.data, 0, tmp_path)
    batch = next(train_batches(ds, 8))
  kind_of_model = config.model_kind
  model = build_model(kind_of_model, model_config(config, ds.vocab_size, ds.num_classes))

  def loss(p):
    logits = forward(model, kind_of_model, p, batch, deterministic=False, rng=jax.random.key(1))
    return cross_entropy(logits, *targets_and_weights(kind_of_model, batch, 0))["loss"]

  @jax.jit
  def init_and_grad(key):  # one compilation
    params = nn.unbox(model.init(key, *_model_args(kind_of_model, batch)))["params"]
    return jax.value_and_grad(loss)(params)
  value, grads = init_and_grad(jax.random.key(0))
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert math.isfinite(float(value)) and all(map(math.isfinite, norms)) and sum(norms) > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("name", CONFIGS)
def test_smoke_variant_trains_every_kind(name, kind, release, tmp_path, fast_compile):
  _smoke(name, kind, release[0], tmp_path)
