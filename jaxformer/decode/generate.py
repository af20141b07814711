"""`generate`: greedy, sampling and beam search over a KV cache, in one jitted loop.

    out = generate(model, params, prompt, GenerationConfig(max_new_tokens=50, num_beams=5,
                   early_stopping=True, eos_token_id=2), attention_mask=mask)
    out.sequences  # [B * num_return_sequences, max_length]   out.scores  # beam scores

The options and their meaning are Hugging Face `generate`'s (the names are the same);
deliberate differences are listed on `GenerationConfig`. Prompts of different lengths
are left-padded (`left_pad` makes such a batch), so every row writes the same cache
slot at every step. The prompt is run once (prefill); then each step feeds one token
per row through the same attention API, and a `lax.while_loop` stops as soon as
every row is done, all inside one `jax.jit`.

Both model kinds decode through two small functions: `start` (prefill: the last
logits and the filled cache) and `step` (one token per row -> next logits).
Positions continue each row's own count, so left padding does not shift them.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.decode.processors import process
from jaxformer.models.transformer import padding_inputs
from jaxformer.nn.cache import KVCache

log = logging.getLogger("jaxformer.decode")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Decoding options, named and defaulted as in HF transformers' GenerationConfig.

  Lengths: `max_length` counts the (padded) prompt, or for encoder-decoders the decoder
  start token; `max_new_tokens` (if set) wins, as in HF. `early_stopping`: True / False /
  "never". `eos_token_id`: an id or a sequence of ids.

  Deliberate differences from HF: `top_k` defaults to None (HF: 50) so sampling means
  sampling from the full distribution unless asked; random numbers come from a JAX key,
  so samples are reproducible per seed but not equal to PyTorch's; outputs always have
  `max_length` columns (HF crops to the longest row) with `pad_token_id` after the end.
  """
  max_length: int = 20
  max_new_tokens: int | None = None
  min_new_tokens: int = 0
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = False
  num_return_sequences: int = 1
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None
  decoder_start_token_id: int | None = None  # encoder-decoders: the first decoder token (BOS)

  def __post_init__(self):
    if isinstance(self.eos_token_id, (list, np.ndarray)):
      object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
    if self.early_stopping not in (True, False, "never"):
      raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
    if self.num_beams < 1 or self.num_return_sequences < 1:
      raise ValueError("num_beams and num_return_sequences must be >= 1")
    if self.num_return_sequences > self.num_beams and not self.do_sample:
      raise ValueError(f"num_return_sequences={self.num_return_sequences} needs num_beams >= it "
                       f"(got {self.num_beams}) or do_sample=True")
    if self.do_sample and self.num_beams > 1:
      raise ValueError("beam sampling (do_sample with num_beams > 1) is not supported; use one of them")
    if self.temperature <= 0 and self.do_sample:
      raise ValueError("temperature must be > 0 when sampling; use do_sample=False for greedy decoding")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def eos_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    return (self.eos_token_id,) if isinstance(self.eos_token_id, int) else tuple(self.eos_token_id)

  @property
  def fill_id(self) -> int:
    """What HF writes after a sequence ends: pad_token_id, falling back to the first EOS id."""
    if self.pad_token_id is not None:
      return self.pad_token_id
    return self.eos_ids[0] if self.eos_ids else 0

  def total_length(self, prompt_len: int) -> int:
    return prompt_len + self.max_new_tokens if self.max_new_tokens is not None else self.max_length

  def replace(self, **kw) -> GenerationConfig:
    return dataclasses.replace(self, **kw)


@flax.struct.dataclass
class GenerateOutput:
  sequences: jnp.ndarray  # int32 [B * num_return_sequences, max_length], prompt included
  scores: jnp.ndarray | None = None  # beam search: the length-penalised log-probability of each sequence


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None):
  """Token lists of different lengths -> (tokens [B, P], attention_mask [B, P]), padded on the left."""
  length = max(len(p) for p in prompts) if length is None else length
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for row, prompt in enumerate(prompts):
    if not 0 < len(prompt) <= length:
      raise ValueError(f"prompt {row} has {len(prompt)} tokens; expected 1..{length}")
    tokens[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = 1
  return tokens, mask


# --- the two model kinds, as start (prefill) and step functions ---------------------------------
@flax.struct.dataclass
class Start:
  logits: jnp.ndarray  # [B, V] float32: the next-token logits after the prompt
  cache: KVCache
  tokens: jnp.ndarray  # [B, L] the output buffer, prompt filled in
  cur_len: int  # filled columns (the padded prompt length)
  position: jnp.ndarray  # [B] int32: the position of the next token of each row
  prompt_start: jnp.ndarray  # [B] int32: first real (non-padding) column


def check_positions(cfg, length: int, what: str) -> None:
  """Learned position tables end at cfg.max_len (a lookup past the end would give NaN, not an error)."""
  if cfg.position == "learned" and length > cfg.max_len:
    raise ValueError(f"{what}={length} exceeds the model's {cfg.max_len} learned positions")


def _is_encoder_decoder(model) -> bool:
  return hasattr(model, "encode")


def _start_decoder_only(model, params, prompt, mask, total: int) -> Start:
  B, P = prompt.shape
  positions, mask = padding_inputs(mask)
  cache = KVCache.empty(model.cfg, B, total)
  logits, cache = model.apply({"params": params}, prompt, positions=positions, segment_ids=mask, cache=cache)
  tokens = jnp.zeros((B, total), jnp.int32).at[:, :P].set(prompt)
  return Start(logits[:, -1], cache, tokens, P, positions[:, -1] + 1, jnp.argmax(mask, axis=1).astype(jnp.int32))


def _start_encoder_decoder(model, params, inputs, mask, total: int, start_id: int) -> Start:
  B = inputs.shape[0]
  encoded = model.apply({"params": params}, inputs, segment_ids=mask, method=model.encode)
  first = jnp.full((B, 1), start_id, jnp.int32)
  cache = KVCache.empty(model.cfg, B, total)
  logits, cache = model.apply({"params": params}, encoded, inputs, first, encoder_segment_ids=mask,
                              segment_ids=jnp.ones_like(first), cache=cache, method=model.decode)
  tokens = jnp.zeros((B, total), jnp.int32).at[:, 0].set(start_id)
  return Start(logits[:, -1], cache, tokens, 1, jnp.ones((B,), jnp.int32), jnp.zeros((B,), jnp.int32))


def step_logits(model, params, cache: KVCache, token, position):
  """One decoding step: token [R] at position [R] -> (logits [R, V], cache)."""
  kw = dict(positions=position[:, None], segment_ids=jnp.ones_like(token)[:, None], cache=cache)
  if _is_encoder_decoder(model):
    logits, cache = model.apply({"params": params}, None, None, token[:, None], method=model.decode, **kw)
  else:
    logits, cache = model.apply({"params": params}, token[:, None], **kw)
  return logits[:, -1], cache


def _start(model, params, prompt, mask, config: GenerationConfig) -> Start:
  if _is_encoder_decoder(model):
    if config.decoder_start_token_id is None:
      raise ValueError("encoder-decoder generation needs GenerationConfig.decoder_start_token_id (the BOS id)")
    total = config.total_length(1)
    return _start_encoder_decoder(model, params, prompt, mask, total, config.decoder_start_token_id)
  return _start_decoder_only(model, params, prompt, mask, config.total_length(prompt.shape[1]))


# --- greedy and sampling -----------------------------------------------------------------------
def _sample_loop(model, params, s: Start, config: GenerationConfig, rng) -> GenerateOutput:
  """HF's `_sample`: process the scores, pick argmax or a sample, stop each row at EOS."""
  total = s.tokens.shape[1]
  eos = jnp.asarray(config.eos_ids or (-1,), jnp.int32)

  def cond(carry):
    t, _, _, _, unfinished, _ = carry
    return (t < total) & jnp.any(unfinished)

  def body(carry):
    t, tokens, cache, logits, unfinished, position = carry
    scores = process(config, logits, tokens, t, s.prompt_start, s.cur_len, sampling=config.do_sample)
    if config.do_sample:
      token = jax.random.categorical(jax.random.fold_in(rng, t), scores, axis=-1)
    else:
      token = jnp.argmax(scores, axis=-1)
    token = jnp.where(unfinished, token, config.fill_id).astype(jnp.int32)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], t, axis=1)
    unfinished = unfinished & ~jnp.isin(token, eos)
    logits, cache = step_logits(model, params, cache, token, position)
    return t + 1, tokens, cache, logits, unfinished, position + 1

  # Columns never reached (every row finished early) hold the fill id, as HF's padding would.
  tokens = s.tokens.at[:, s.cur_len:].set(config.fill_id)
  carry = (jnp.asarray(s.cur_len, jnp.int32), tokens, s.cache, s.logits,
           jnp.ones(tokens.shape[0], bool), s.position)
  _, tokens, *_ = jax.lax.while_loop(cond, body, carry)
  return GenerateOutput(tokens)


@partial(jax.jit, static_argnames=("model", "config"))
def _generate(model, params, prompt, mask, rng, config: GenerationConfig) -> GenerateOutput:
  if config.num_return_sequences > 1 and config.num_beams == 1:  # independent samples per prompt
    prompt, mask = (jnp.repeat(x, config.num_return_sequences, axis=0) for x in (prompt, mask))
  s = _start(model, params, prompt, mask, config)
  if config.num_beams > 1:
    from jaxformer.decode.beam import beam_search
    return beam_search(model, params, s, config)
  return _sample_loop(model, params, s, config, rng)


def generate(model, params, prompt, config: GenerationConfig | None = None, *, attention_mask=None,
             rng=None, **options: Any) -> GenerateOutput:
  """Decode from a DecoderOnly (prompt = left-padded tokens [B, P]) or an EncoderDecoder
  (prompt = source tokens [B, S]). `options` override fields of `config`, e.g. num_beams=5.

  attention_mask [B, P]: 1 for real tokens, 0 for padding (default: all ones; for encoder-
  decoders, the model's pad_id decides). rng: a JAX key, needed when do_sample=True.
  """
  config = (config or GenerationConfig()).replace(**options)
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2:
    raise ValueError(f"prompt must be [batch, length] token ids, got shape {prompt.shape}")
  if attention_mask is None:
    pad_id = model.cfg.pad_id
    attention_mask = (prompt != pad_id) if _is_encoder_decoder(model) and pad_id is not None else jnp.ones_like(prompt)
  attention_mask = jnp.asarray(attention_mask, jnp.int32)
  if attention_mask.shape != prompt.shape:
    raise ValueError(f"attention_mask {attention_mask.shape} must match the prompt {prompt.shape}")
  if not _is_encoder_decoder(model):
    if np.any(np.asarray(attention_mask)[:, -1] == 0):
      raise ValueError("prompts must be left-padded (the last column real in every row); use "
                       "jaxformer.decode.left_pad to build the batch")
    total = config.total_length(prompt.shape[1])
    if total <= prompt.shape[1]:
      raise ValueError(f"max_length={total} leaves no room after a prompt of {prompt.shape[1]} tokens; "
                       "set max_new_tokens or a larger max_length")
    check_positions(model.cfg, total, "max_length")
  else:
    check_positions(model.cfg, prompt.shape[1], "the source length")
    check_positions(model.cfg, config.total_length(1), "max_length")
  if config.do_sample and rng is None:
    raise ValueError("do_sample=True needs rng (a JAX key), e.g. jax.random.key(0)")
  rng = jax.random.key(0) if rng is None else rng
  return _generate(model, params, prompt, attention_mask, rng, config)
