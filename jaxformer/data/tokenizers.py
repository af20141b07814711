"""Tokenizers with one small interface: encode, decode, vocab_size, pad_id, save/load.

Id 0 is always padding, so models can mask it (`TransformerConfig.pad_id = 0`).
"""
from __future__ import annotations

import json
from pathlib import Path

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CharTokenizer:
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

  pad_id = 0

  def special_id(self, token: str) -> int:
    return self.specials.index(token)

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


class ByteTokenizer:
  """UTF-8 bytes, shifted past the special tokens (vocabulary 256 + specials)."""
  kind = "byte"
  pad_id = 0

  def __init__(self, specials: tuple[str, ...] = (PAD,)):
    self.specials = tuple(specials)

  @property
  def vocab_size(self) -> int:
    return 256 + len(self.specials)

  def special_id(self, token: str) -> int:
    return self.specials.index(token)

  def encode(self, text: str) -> list[int]:
    return [b + len(self.specials) for b in text.encode("utf-8")]

  def decode(self, ids) -> str:
    n = len(self.specials)
    return bytes(i - n for i in map(int, ids) if i >= n).decode("utf-8", errors="replace")

  def to_dict(self) -> dict:
    return {"kind": self.kind, "specials": list(self.specials)}


def tokenizer_from_dict(d: dict):
  if d["kind"] == "char":
    return CharTokenizer(d["chars"], tuple(d["specials"]), d.get("unknown"))
  if d["kind"] == "byte":
    return ByteTokenizer(tuple(d["specials"]))
  raise ValueError(f"unknown tokenizer kind {d['kind']!r}")


def save_tokenizer(tokenizer, path: str | Path) -> None:
  Path(path).write_text(json.dumps(tokenizer.to_dict()))


def load_tokenizer(path: str | Path):
  return tokenizer_from_dict(json.loads(Path(path).read_text()))
