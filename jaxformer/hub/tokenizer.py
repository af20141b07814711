"""A checkpoint's `tokenizer.json` (HF `tokenizers`) behind jaxformer's tokenizer interface:
encode, decode, vocab_size, pad_id, plus bos_id / eos_id.

Special-token ids come from tokenizer_config.json (the token strings), then
generation_config.json, then config.json.
"""
from __future__ import annotations

import logging
from pathlib import Path

from jaxformer.hub.io import read_json

log = logging.getLogger("jaxformer.hub")


class HFTokenizer:
  """Wraps a `tokenizers.Tokenizer`; `encode` adds the special tokens its post-processor adds (e.g. Llama's
  BOS) unless `add_special_tokens=False`, as HF's `tokenizer(text)` does; `decode` drops them."""
  kind = "hf"

  def __init__(self, tokenizer, *, bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None):
    self.tokenizer = tokenizer
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

  @classmethod
  def from_dir(cls, directory: str | Path) -> HFTokenizer | None:
    """The tokenizer of a checkpoint directory, or None (with a logged warning) if it has no tokenizer.json."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
      log.warning("no tokenizer.json in %s, so the tokenizer is None (jaxformer.hub reads only the `tokenizers` "
                  "format; convert a sentencepiece tokenizer.model with transformers' AutoTokenizer.save_pretrained)",
                  directory)
      return None
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    sources = [read_json(directory / "generation_config.json"), read_json(directory / "config.json")]
    token_config = read_json(directory / "tokenizer_config.json")

    def special(kind: str) -> int | None:
      token = token_config.get(f"{kind}_token")
      token = token.get("content") if isinstance(token, dict) else token
      if token is not None and tokenizer.token_to_id(token) is not None:
        return tokenizer.token_to_id(token)
      ids = next((s[f"{kind}_token_id"] for s in sources if s.get(f"{kind}_token_id") is not None), None)
      return ids[0] if isinstance(ids, list) else ids

    return cls(tokenizer, bos_id=special("bos"), eos_id=special("eos"), pad_id=special("pad"))

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def save(self, directory: str | Path):
    """Write tokenizer.json into `directory`."""
    self.tokenizer.save(str(Path(directory) / "tokenizer.json"))
