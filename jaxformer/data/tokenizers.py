"""Tokenizers with one small interface: encode, decode, vocab_size, pad_id / bos_id / eos_id
(None when the tokenizer has no such token), to_dict, and save/load through `tokenizer_from_dict`.

Id 0 is padding, so models can mask it (`TransformerConfig.pad_id = 0`), in every tokenizer but GPT-2's, whose
id 0 is a real token ("!") and which has no padding (see `GPT2Tokenizer`).

  CharTokenizer          one id per character of a fixed alphabet
  WordTokenizer          one id per whitespace-separated word of a fixed list (symbolic tasks)
  ByteTokenizer          UTF-8 bytes (Long Range Arena's byte-level text tasks)
  SentencePieceTokenizer subwords (BPE or unigram) trained on the dataset; see `sentencepiece_tokenizer`
  GPT2Tokenizer          GPT-2's byte-level BPE (50257 ids), read from a tokenizer.json or the Hugging Face Hub
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import jax

from jaxformer.hub.io import _looks_like_path
from jaxformer.hub.tokenizer import HFTokenizer
from jaxformer.parallel.distributed import sync

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
EOT = "<|endoftext|>"  # GPT-2's one special token
log = logging.getLogger("jaxformer.data")


class _Specials:
  """pad/bos/eos ids from a tuple of special tokens that starts with <pad>."""
  pad_id = 0

  def special_id(self, token: str) -> int:
    return self.specials.index(token)

  @property
  def bos_id(self) -> int | None:
    return self.specials.index(BOS) if BOS in self.specials else None

  @property
  def eos_id(self) -> int | None:
    return self.specials.index(EOS) if EOS in self.specials else None


class CharTokenizer(_Specials):
  """One id per character of a fixed alphabet, after the special tokens.

  Characters outside the alphabet raise (pass `unknown="?"` to map them to a
  character that is in it instead).
  """
  kind = "char"

  def __init__(self, chars: str, specials: tuple[str, ...] = (PAD,), unknown: str | None = None):
    if not specials or specials[0] != PAD:
      raise ValueError("the first special token must be <pad> (id 0)")
    self.chars = "".join(sorted(set(chars)))
    self.specials = tuple(specials)
    self.unknown = unknown
    self._ids = {c: i + len(specials) for i, c in enumerate(self.chars)}

  @classmethod
  def from_text(cls, text: str, **kw) -> CharTokenizer:
    return cls("".join(sorted(set(text))), **kw)

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + len(self.chars)

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[c] for c in text]
    except KeyError as e:
      if self.unknown is None:
        raise ValueError(f"character {e.args[0]!r} is not in the tokenizer's alphabet") from None
      return [self._ids.get(c, self._ids[self.unknown]) for c in text]

  def decode(self, ids) -> str:
    n = len(self.specials)
    return "".join(self.chars[i - n] for i in map(int, ids) if i >= n)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "chars": self.chars, "specials": list(self.specials), "unknown": self.unknown}


class ByteTokenizer(_Specials):
  """UTF-8 bytes, shifted past the special tokens (vocabulary 256 + specials)."""
  kind = "byte"

  def __init__(self, specials: tuple[str, ...] = (PAD,)):
    if not specials or specials[0] != PAD:
      raise ValueError("the first special token must be <pad> (id 0)")
    self.specials = tuple(specials)

  @property
  def vocab_size(self) -> int:
    return 256 + len(self.specials)

  def encode(self, text: str) -> list[int]:
    return [b + len(self.specials) for b in text.encode("utf-8")]

  def decode(self, ids) -> str:
    n = len(self.specials)
    return bytes(i - n for i in map(int, ids) if i >= n).decode("utf-8", errors="replace")

  def to_dict(self) -> dict:
    return {"kind": self.kind, "specials": list(self.specials)}


class WordTokenizer(_Specials):
  """Whitespace-separated words from a fixed list; id 0 is padding, words follow the specials in list order.

  Words in `ignore` are dropped by `encode` (ListOps' parentheses, which the LRA pipeline removes).
  """
  kind = "word"

  def __init__(self, words, specials: tuple[str, ...] = (PAD,), ignore: tuple[str, ...] = ()):
    if not specials or specials[0] != PAD:
      raise ValueError("the first special token must be <pad> (id 0)")
    self.words, self.specials, self.ignore = tuple(words), tuple(specials), tuple(ignore)
    self._ids = {w: i + len(self.specials) for i, w in enumerate(self.words)}
    if len(self._ids) != len(self.words):
      raise ValueError("WordTokenizer words must be distinct")

  @property
  def vocab_size(self) -> int:
    return len(self.specials) + len(self.words)

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[w] for w in text.split() if w not in self.ignore]
    except KeyError as e:
      raise ValueError(f"word {e.args[0]!r} is not in the tokenizer's vocabulary") from None

  def decode(self, ids) -> str:
    n = len(self.specials)
    return " ".join(self.words[i - n] for i in map(int, ids) if i >= n)

  def to_dict(self) -> dict:
    return {"kind": self.kind, "words": list(self.words), "specials": list(self.specials),
            "ignore": list(self.ignore)}


class SentencePieceTokenizer:
  """A SentencePiece model with ids pad=0, unk=1, bos=2, eos=3 (as `train_sentencepiece` makes them).

  `decode` drops pad/bos/eos and any id past the vocabulary (a model's output layer may be
  padded), and returns detokenized text: what BLEU is computed on.
  """
  kind = "sentencepiece"
  pad_id, bos_id, eos_id = 0, 2, 3

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm

    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    if (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()) != (self.pad_id, self.bos_id, self.eos_id):
      raise ValueError("this SentencePiece model does not use pad=0, bos=2, eos=3; train it with "
                       "jaxformer.data.tokenizers.train_sentencepiece")

  @classmethod
  def load(cls, path: str | Path) -> SentencePieceTokenizer:
    return cls(Path(path).read_bytes())

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids) -> str:
    n = self.vocab_size
    return self.sp.decode([i for i in map(int, ids) if i not in (0, 2, 3) and 0 <= i < n])

  def to_dict(self) -> dict:
    return {"kind": self.kind, "model": base64.b64encode(self.model_proto).decode("ascii")}


class GPT2Tokenizer(HFTokenizer):
  """GPT-2's byte-level BPE (Radford et al. 2019): 50257 ids, the last, 50256, being `<|endoftext|>`.

  `<|endoftext|>` is EOS, BOS and document separator at once, as in nanoGPT's data/openwebtext/prepare.py (which
  appends it after every document). GPT-2 has no padding token and its id 0 is "!", so LM rows built with it must
  not be padded with 0 (PackedLMData: `data.packing="stream"`, nanoGPT's rows, or segment-id weights) and the
  model's pad_id must be None; `pad_id` here is `<|endoftext|>` only for callers that need some id to left-pad
  prompts with (generation masks it), as transformers does for GPT-2. The text "<|endoftext|>" inside a document is
  encoded as ordinary text, as tiktoken's `encode_ordinary` in nanoGPT: only the appended EOS is id 50256.
  """
  kind = "gpt2"

  def __init__(self, tokenizer):
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
      raise ValueError(f"this tokenizer.json has no {EOT} token; data.tokenizer='gpt2' needs GPT-2's vocabulary "
                       "(data.tokenizer_path='gpt2') or another byte-level BPE that has it")
    tokenizer.encode_special_tokens = True  # not saved in tokenizer.json: set on every load
    super().__init__(tokenizer, bos_id=eot, eos_id=eot, pad_id=eot)

  @classmethod
  def load(cls, path: str = "gpt2") -> GPT2Tokenizer:
    """From a local tokenizer.json (the file, or a directory holding it), else from the Hugging Face Hub repo of that
    name ("gpt2": OpenAI's; downloaded once into the HF cache, needs network)."""
    from tokenizers import Tokenizer

    local = Path(path).expanduser()
    file = local / "tokenizer.json" if local.is_dir() else local
    if file.is_file():
      return cls(Tokenizer.from_file(str(file)))
    if local.exists() or _looks_like_path(path):
      raise FileNotFoundError(f"data.tokenizer_path={path!r}: no tokenizer.json there; pass a tokenizer.json file, a "
                              "directory holding one, or a Hugging Face Hub name such as 'gpt2' (downloads)")
    log.info("loading the tokenizer %r from the Hugging Face Hub", path)
    try:
      return cls(Tokenizer.from_pretrained(path))
    except Exception as e:  # tokenizers raises plain Exceptions for network and missing-repo errors
      raise OSError(f"data.tokenizer_path={path!r} is no local file or directory, and loading it from the Hugging "
                    f"Face Hub failed ({e}); offline, save it where there is network with `tokenizers.Tokenizer."
                    f"from_pretrained({path!r}).save('tokenizer.json')` and pass that file") from e

  def to_dict(self) -> dict:
    return {"kind": self.kind, "tokenizer": self.tokenizer.to_str()}


def train_sentencepiece(texts, vocab_size: int, *, model_type: str = "bpe", max_chars: int = 10_000_000,
                        character_coverage: float = 1.0) -> SentencePieceTokenizer:
  """Train SentencePiece on an iterable of strings (the first `max_chars` characters of it).

  Translation trains one model on source and target text together: a shared vocabulary, as the
  byte-pair encoding of Attention Is All You Need.
  """
  import sentencepiece as spm

  def limited():
    total = 0
    for text in texts:
      total += len(text)
      yield text
      if total >= max_chars:
        return

  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=limited(), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        input_sentence_size=10_000_000, shuffle_input_sentence=True, minloglevel=2, num_threads=os.cpu_count() or 1)
  except RuntimeError as e:
    if "Vocabulary size too high" in str(e):
      raise ValueError(f"the corpus is too small for a vocabulary of {vocab_size} pieces ({str(e).split('. ')[-1]}); "
                       "lower data.vocab_size") from None
    raise
  return SentencePieceTokenizer(buf.getvalue())


def sentencepiece_tokenizer(texts, vocab_size: int, cache_dir: str | Path | None, key: str,
                            **train_kw) -> SentencePieceTokenizer:
  """`train_sentencepiece`, cached as `cache_dir/spm-<hash>.model`: a later run with the same corpus
  `key` and settings reuses the file instead of training again. `texts` is a callable returning the
  text iterable, called only when training is needed."""
  digest = hashlib.sha256(json.dumps([key, vocab_size, sorted(train_kw.items())]).encode()).hexdigest()[:12]
  path = Path(cache_dir) / f"spm-{digest}.model" if cache_dir else None
  shared = path is not None and jax.process_count() > 1  # several hosts, one workdir: process 0 trains
  if shared and jax.process_index() != 0:
    sync(f"jaxformer_spm_{digest}")
    return SentencePieceTokenizer.load(path)
  if path is not None and path.is_file():
    log.info("reusing the SentencePiece vocabulary %s", path)
    tok = SentencePieceTokenizer.load(path)
  else:
    log.info("training a SentencePiece vocabulary of %d pieces (%s)", vocab_size, key)
    tok = train_sentencepiece(texts(), vocab_size, **train_kw)
    if path is not None:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(".tmp")
      tmp.write_bytes(tok.model_proto)
      tmp.replace(path)  # never a half-written model at the cached name
      log.info("saved the SentencePiece vocabulary to %s", path)
  if shared:
    sync(f"jaxformer_spm_{digest}")
  return tok


def tokenizer_from_dict(d: dict):
  if d["kind"] == "char":
    return CharTokenizer(d["chars"], tuple(d["specials"]), d.get("unknown"))
  if d["kind"] == "byte":
    return ByteTokenizer(tuple(d["specials"]))
  if d["kind"] == "word":
    return WordTokenizer(tuple(d["words"]), tuple(d["specials"]), tuple(d.get("ignore", ())))
  if d["kind"] == "sentencepiece":
    return SentencePieceTokenizer(base64.b64decode(d["model"]))
  if d["kind"] == "gpt2":
    from tokenizers import Tokenizer
    return GPT2Tokenizer(Tokenizer.from_str(d["tokenizer"]))
  raise ValueError(f"unknown tokenizer kind {d['kind']!r}")


def save_tokenizer(tokenizer, path: str | Path) -> None:
  Path(path).write_text(json.dumps(tokenizer.to_dict()))


def load_tokenizer(path: str | Path):
  return tokenizer_from_dict(json.loads(Path(path).read_text()))
