"""data.tokenizer="gpt2" (GPT-2's byte-level BPE from a tokenizer.json) and the gpt2_124m_openwebtext config: a tiny
byte-level BPE with <|endoftext|> as its last id stands in for GPT-2's vocabulary, and a small OpenWebText-like TFDS
dataset, written as array_record, for OpenWebText (TFDS resolves `huggingface:` names over the network, and
`tfds.testing.mock_data` ignores split slices: neither can check the train[:99.95%] / train[99.95%:] split here)."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxformer.config import load_config
from jaxformer.data import GPT2Tokenizer, build_dataset, load_tokenizer, save_tokenizer, train_batches
from jaxformer.data.sources import as_text
from jaxformer.data.tokenizers import EOT
from jaxformer.models import build_model
from jaxformer.train.loop import model_config
from jaxformer.train.reproduce import spec

tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex every jovial kangaroo near "
         "the old river bank and nobody minds").split()
NUM_DOCS = 2000  # train[99.95%:] rounds to the last document
LAST_DOC_WORDS = 400  # ... which is long enough to fill the evaluation batches


def document(i: int) -> str:
  n = LAST_DOC_WORDS if i == NUM_DOCS - 1 else 3 + i % 11
  return " ".join(WORDS[(i * 7 + 3 * j) % len(WORDS)] for j in range(n)) + ("." if i % 2 else "!")


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
  """GPT-2's recipe in miniature: ByteLevel pre-tokenizer and decoder, BPE merges, <|endoftext|> added last, so id 0
  is a real token ("!") as in GPT-2."""
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  tok.train_from_iterator([document(i) for i in range(50)], trainers.BpeTrainer(
      vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok.add_special_tokens([EOT])
  path = tmp_path_factory.mktemp("gpt2") / "tokenizer.json"
  tok.save(str(path))
  return path


@pytest.fixture(scope="module")
def owt_dir(tmp_path_factory):
  """An OpenWebText stand-in: NUM_DOCS documents in one train split (a "text" feature), as array_record."""

  class TinyOpenWebText(tfds.core.GeneratorBasedBuilder):
    """A few thousand short documents, one long last one."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                                   disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(NUM_DOCS):
        yield i, {"text": document(i)}

  root = tmp_path_factory.mktemp("tfds")
  tfds.display_progress_bar(False)
  try:
    TinyOpenWebText(data_dir=str(root)).download_and_prepare(file_format="array_record")
  finally:
    tfds.display_progress_bar(True)
  return root


def owt_config(tokenizer_json, owt_dir, overrides=()):
  """The experiment's config reading the stand-in dataset and tokenizer (its splits, packing and tokenizer kind)."""
  return load_config("gpt2_124m_openwebtext", ["data.name=tiny_open_web_text", f"data.data_dir={owt_dir}",
                                               f"data.tokenizer_path={tokenizer_json}", *overrides])


def test_encode_decode_and_special_ids(tokenizer_json):
  tok = GPT2Tokenizer.load(str(tokenizer_json))
  eot = tok.vocab_size - 1
  assert tok.tokenizer.id_to_token(eot) == EOT and (tok.eos_id, tok.bos_id, tok.pad_id) == (eot, eot, eot)
  assert tok.tokenizer.id_to_token(0) == "!" and tok.encode("!") == [0]  # id 0 is text, not padding
  for text in ("the quick brown fox", "  spaces\tand\nnewlines ", "naïve café, 猫 🙂", "wizards hex!"):
    ids = tok.encode(text)
    assert tok.decode(ids) == text and max(ids) < eot
  inline = tok.encode(f"a{EOT}b")  # as tiktoken's encode_ordinary: the text is text, never the special id
  assert eot not in inline and tok.decode(inline) == f"a{EOT}b"
  assert tok.decode(tok.encode("old river") + [eot, tok.vocab_size + 40]) == "old river"  # EOS, padded logits rows
  assert GPT2Tokenizer.load(str(tokenizer_json.parent)).encode("lazy dog") == tok.encode("lazy dog")  # a directory


def test_save_load_round_trip(tokenizer_json, tmp_path):
  tok = GPT2Tokenizer.load(str(tokenizer_json))
  save_tokenizer(tok, tmp_path / "tokenizer.json")
  saved = json.loads((tmp_path / "tokenizer.json").read_text())
  assert saved["kind"] == "gpt2" and json.loads(saved["tokenizer"]) == json.loads(tokenizer_json.read_text())
  back = load_tokenizer(tmp_path / "tokenizer.json")
  assert isinstance(back, GPT2Tokenizer) and back.to_dict() == tok.to_dict()
  text = f"jovial kangaroo {EOT} near 🙂"
  assert back.encode(text) == tok.encode(text) and (back.vocab_size, back.eos_id) == (tok.vocab_size, tok.eos_id)


def test_missing_or_wrong_tokenizer_says_what_to_pass(tmp_path):
  for missing in (tmp_path / "nope" / "tokenizer.json", tmp_path / "nope", "./nope.json"):
    with pytest.raises(FileNotFoundError, match=r"data.tokenizer_path=.*no tokenizer.json there; pass a "
                                                r"tokenizer.json file, a directory holding one, or a Hugging Face"):
      GPT2Tokenizer.load(str(missing))
  plain = tokenizers.Tokenizer(tokenizers.models.BPE())
  plain.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match=r"has no <\|endoftext\|> token"):
    GPT2Tokenizer.load(str(tmp_path))


def test_config_has_nanogpts_numbers():
  c = load_config("gpt2_124m_openwebtext")
  m, t, o = c.model, c.train, c.optim
  assert (m.num_layers, m.num_heads, m.d_model, m.mlp_dim, m.max_len, c.data.seq_len) == (12, 12, 768, 3072, 1024, 1024)
  assert m.vocab_size == 50304 and m.vocab_size % 64 == 0 and m.vocab_size >= 50257
  assert m.dropout_rate == 0 and m.activation == "gelu" and m.tie_embeddings and m.position == "learned"
  assert m.pad_id is None  # GPT-2 has no padding id: no token id is masked
  assert not (m.qkv_bias or m.out_bias or m.mlp_bias)  # nanoGPT's train.py: bias = False
  assert t.batch_size * c.data.seq_len == 491_520 == 12 * 1024 * 5 * 8 and t.batch_size // t.grad_accum == 96
  assert (t.steps, t.eval_every) == (600_000, 1000) and t.eval_batches * t.eval_batch_size * 1024 == 200 * 12 * 1024
  assert (o.name, o.lr, o.b1, o.b2, o.weight_decay, o.clip_norm) == ("adamw", 6e-4, 0.9, 0.95, 0.1, 1.0)
  assert o.schedule == "cosine" and o.warmup_steps == 2000 and o.lr * o.min_lr_ratio == pytest.approx(6e-5)
  d = c.data
  assert (d.tokenizer, d.tokenizer_path, d.packing) == ("gpt2", "gpt2", "stream")
  assert (d.train_split, d.eval_split) == ("train[:99.95%]", "train[99.95%:]")
  s = spec(c, c.name)
  assert (s["metric"], s["goal"], s["published"], s["target"]) == ("eval.nll", "min", 2.85, 2.90)
  model = build_model("decoder_only", model_config(c, 50257))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  # nanoGPT's 124,373,760 (it prints 123.59M without the position table) + the biases of the 25 LayerNorms here
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(params)) == 124_373_760 + 25 * 768


def test_pipeline_streams_documents_with_eos(tokenizer_json, owt_dir):
  c = owt_config(tokenizer_json, owt_dir, ["data.seq_len=64"])
  ds = build_dataset(c.data, c.seed)
  tok, eot = ds.tokenizer, ds.tokenizer.eos_id
  assert isinstance(tok, GPT2Tokenizer) and ds.vocab_size == eot + 1
  # the split slices: all documents but the last for training, the last one (0.05% of 2000) for validation
  assert len(ds.train_source) == NUM_DOCS - 1 and [as_text(x["text"]) for x in ds.source(c.data.eval_split)] == [
      document(NUM_DOCS - 1)]
  docs = {document(i) for i in range(NUM_DOCS - 1)}
  it = train_batches(ds, 4)
  rows = [next(it) for _ in range(3)]
  for b in rows:
    assert set(b) == {"inputs", "targets"} and b["inputs"].shape == b["targets"].shape == (4, 64)
    assert np.array_equal(b["inputs"][:, 1:], b["targets"][:, :-1]) and np.all(b["targets"] < ds.vocab_size)
    assert np.array_equal(b["inputs"][1:, 0], b["targets"][:-1, -1])  # row r starts where row r - 1 ends
  for prev, b in zip(rows, rows[1:]):
    assert b["inputs"][0, 0] == prev["targets"][-1, -1]  # batches continue the stream: no token is skipped
  stream = np.concatenate([rows[0]["inputs"][0, :1]] + [b["targets"].reshape(-1) for b in rows])
  pieces = tok.tokenizer.decode(stream.tolist(), skip_special_tokens=False).split(EOT)
  assert len(pieces) >= 6 and all(p in docs for p in pieces[1:-1])  # every whole document, each ended by EOS
  state = it.get_state()
  again = train_batches(ds, 4)
  again.set_state(state)
  assert np.array_equal(next(again)["targets"], next(it)["targets"])  # resumable from (index, offset)
  evals = ds.eval_batches(2, 4)
  assert len(evals) == 2 and tok.decode(np.concatenate([evals[0]["inputs"][0], evals[0]["targets"][0, -1:]])) in (
      document(NUM_DOCS - 1))
  assert len(ds.eval_batches(100, 4)) < 100  # the validation stream ends: no padded rows


def test_document_packing_weighs_padding_by_segment_not_id(tokenizer_json, owt_dir):
  """With packing="documents", padding is id 0 = "!" in GPT-2: the weights come from the segment ids."""
  c = owt_config(tokenizer_json, owt_dir, ["data.seq_len=64", "data.packing=documents"])
  ds = build_dataset(c.data, c.seed)
  b = next(train_batches(ds, 4))
  seg, eot = b["segment_ids"], ds.tokenizer.eos_id
  assert np.array_equal(b["weights"], (seg > 0).astype(np.float32)) and (seg == 0).any()
  assert (b["targets"][seg > 0] == 0).any()  # "!" ends half of the documents: it is a scored target
  starts = (b["positions"] == 0) & (seg > 0)
  assert np.all(b["inputs"][starts] == eot)  # <|endoftext|> is BOS too
  for row in range(4):
    for s in np.unique(seg[row][seg[row] > 0]):
      assert b["targets"][row][seg[row] == s][-1] == eot
  with pytest.raises(ValueError, match="data.packing must be one of"):
    build_dataset(owt_config(tokenizer_json, owt_dir, ["data.packing=rows"]).data, 0)


def test_smoke_run_trains(tokenizer_json, owt_dir, tmp_path):
  """The config's smoke variant, on the stand-in data with the tiny vocabulary: the loss is finite and falls."""
  from jaxformer.train.loop import train

  smoke = list(load_config("gpt2_124m_openwebtext").reproduce.smoke)
  c = owt_config(tokenizer_json, owt_dir, [*smoke, "model.vocab_size=0", "data.seq_len=32", "model.max_len=32",
                                           "train.steps=12", "train.log_every=1", "train.eval_every=12",
                                           "optim.warmup_steps=0", "optim.lr=3e-3", "train.tensorboard=false",
                                           "checkpoint.every=0"])
  results = train(c, tmp_path, progress=False)
  losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("split") == "train"]
  assert all(map(math.isfinite, losses)) and np.mean(losses[-3:]) < losses[0] - 0.5
  vocab = GPT2Tokenizer.load(str(tokenizer_json)).vocab_size
  assert math.isfinite(results["eval"]["nll"]) and results["eval"]["nll"] < math.log(vocab)  # better than uniform
  assert isinstance(results["sample"], str)
  assert load_tokenizer(tmp_path / "tokenizer.json").vocab_size == vocab  # the run's tokenizer, for generation
  with c.unlocked():
    c.model.pad_id = 0
  with pytest.raises(ValueError, match="set model.pad_id=None"):  # GPT-2's id 0 is "!", never padding
    train(c, tmp_path / "padded", progress=False)
