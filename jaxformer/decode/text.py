"""Text in, text out: `generate_text` for a Hugging Face checkpoint or a jaxformer run directory.

This is what `jaxformer generate` calls. A directory with `model.json` is a run saved by
`jaxformer train` (decoder-only or encoder-decoder, the project's tokenizer); anything else
goes to `jaxformer.hub.load_pretrained` (a local HF directory, or a Hub name to download).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np

from jaxformer.decode.generate import GenerationConfig, generate, left_pad

log = logging.getLogger("jaxformer.decode")
_FIELDS = {f.name for f in dataclasses.fields(GenerationConfig)}


@dataclasses.dataclass
class Loaded:
  model: object
  params: dict
  encode: object  # str -> list[int]
  decode: object  # list[int] -> str
  defaults: dict  # GenerationConfig fields the checkpoint sets (eos, pad, bos ...)
  pad_id: int


def load_for_generation(checkpoint: str | Path, dtype: str = "float32") -> Loaded:
  path = Path(checkpoint)
  if (path / "model.json").is_file():
    from jaxformer.train.checkpoint import load_run

    model, params, tok = load_run(path)
    defaults = {"pad_token_id": tok.pad_id}
    if tok.eos_id is not None:
      defaults["eos_token_id"] = tok.eos_id
    if tok.bos_id is not None:
      defaults["decoder_start_token_id"] = tok.bos_id
    strip = set(defaults.values())
    return Loaded(model, params, tok.encode, lambda ids: tok.decode([i for i in ids if i not in strip]),
                  defaults, tok.pad_id)
  from jaxformer.hub import load_pretrained

  lm = load_pretrained(checkpoint, dtype=dtype)
  if lm.tokenizer is None:
    raise ValueError(f"{lm.path} has no tokenizer.json, so text prompts cannot be encoded; "
                     "save the tokenizer with transformers' AutoTokenizer.save_pretrained into that directory")
  # HF's defaults where the checkpoint sets none (HF samples with top_k=50 unless told otherwise)
  defaults = {"top_k": 50, **{k: v for k, v in lm.generation_config.items() if k in _FIELDS and v is not None}}
  if isinstance(defaults.get("eos_token_id"), list):
    defaults["eos_token_id"] = tuple(defaults["eos_token_id"])
  pad = defaults.get("pad_token_id", lm.tokenizer.pad_id)
  pad = pad if pad is not None else (lm.eos_token_id if isinstance(lm.eos_token_id, int) else 0)
  return Loaded(lm.model, lm.params, lm.tokenizer.encode, lm.tokenizer.decode, defaults, pad)


def generate_text(loaded: Loaded, prompts: list[str], options: dict, seed: int = 0):
  """-> one list per prompt of (text, score or None), num_return_sequences long.

  `options` (GenerationConfig fields the user set) override the checkpoint's defaults; a
  checkpoint's do_sample is dropped, with a warning, when the user asks for beam search.
  """
  defaults = dict(loaded.defaults)
  if options.get("num_beams", 1) > 1 and "do_sample" not in options and defaults.pop("do_sample", False):
    log.warning("the checkpoint's generation_config samples (do_sample=True); beam search here is not "
                "sampled, so do_sample is off (pass --do-sample with --num-beams 1 to sample)")
  config = GenerationConfig(**{**defaults, **options})
  encoded = [loaded.encode(p) for p in prompts]
  if any(not ids for ids in encoded):
    raise ValueError("a prompt encodes to no tokens; give some text")
  is_seq2seq = hasattr(loaded.model, "encode")
  if is_seq2seq:  # the encoder was trained on right-padded sources
    tokens, mask = (x[:, ::-1] for x in left_pad([ids[::-1] for ids in encoded], loaded.pad_id))
  else:
    tokens, mask = left_pad(encoded, loaded.pad_id)
  out = generate(loaded.model, loaded.params, tokens, config, attention_mask=mask, rng=jax.random.key(seed))
  start, n = (1 if is_seq2seq else tokens.shape[1]), config.num_return_sequences
  results = [[] for _ in prompts]
  for row, seq in enumerate(np.asarray(out.sequences)):
    ids = [int(i) for i in seq[start:]]
    for eos in config.eos_ids:  # cut at the first EOS
      ids = ids[:ids.index(eos)] if eos in ids else ids
    text = loaded.decode(ids if is_seq2seq else encoded[row // n] + ids)
    results[row // n].append((text, None if out.scores is None else float(out.scores[row])))
  return results
