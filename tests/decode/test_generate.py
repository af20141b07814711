"""`generate` on jaxformer's own models: greedy against a cache-free oracle, sampling
invariants, EOS handling, and encoder-decoder beam search against exhaustive search."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.decode import GenerationConfig, generate, left_pad
from jaxformer.models import DecoderOnly, EncoderDecoder
from tests.decode.test_cache import STYLES, tiny

PROMPTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]


@pytest.fixture(scope="module", params=["gpt2", "bloom3", "llama"])
def lm(request):
  cfg = tiny(**STYLES[request.param])
  model = DecoderOnly(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  # Sharpen the output layer so greedy choices are not near-ties.
  params = jax.tree.map(lambda x: x * 3.0, params)
  return model, params


def greedy_by_recomputation(model, params, prompts, new_tokens):
  """The oracle: re-run the whole sequence each step, no cache, argmax of the last logits."""
  tokens, mask = left_pad(prompts)
  for _ in range(new_tokens):
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    logits = model.apply({"params": params}, jnp.asarray(tokens), positions=jnp.asarray(positions),
                         segment_ids=jnp.asarray(mask))[:, -1]
    tokens = np.concatenate([tokens, np.asarray(jnp.argmax(logits, -1))[:, None]], 1)
    mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int32)], 1)
  return tokens


def test_greedy_matches_recomputation_with_left_padding(lm):
  model, params = lm
  tokens, mask = left_pad(PROMPTS)
  out = generate(model, params, tokens, attention_mask=mask, max_new_tokens=6).sequences
  np.testing.assert_array_equal(np.asarray(out), greedy_by_recomputation(model, params, PROMPTS, 6))


def test_top_k_1_sampling_is_greedy_and_seeds_reproduce(lm):
  model, params = lm
  tokens, mask = left_pad(PROMPTS)
  greedy = generate(model, params, tokens, attention_mask=mask, max_new_tokens=6).sequences
  top1 = generate(model, params, tokens, attention_mask=mask, max_new_tokens=6, do_sample=True, top_k=1,
                  rng=jax.random.key(5)).sequences
  np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))
  sample = lambda seed, **kw: np.asarray(generate(  # noqa: E731
      model, params, tokens, attention_mask=mask, max_new_tokens=12, do_sample=True, temperature=1.5,
      rng=jax.random.key(seed), **kw).sequences)
  np.testing.assert_array_equal(sample(1), sample(1))
  assert not np.array_equal(sample(1), sample(2))
  for row in sample(3, top_p=0.5, repetition_penalty=1.5, no_repeat_ngram_size=2)[:, 5:]:
    bigrams = list(zip(row[:-1], row[1:]))
    assert len(bigrams) == len(set(bigrams))  # no repeated bigram in the generated part


def test_eos_stops_each_row_independently(lm):
  model, params = lm
  tokens, mask = left_pad(PROMPTS)
  free = np.asarray(generate(model, params, tokens, attention_mask=mask, max_new_tokens=10).sequences)[:, 5:]
  eos = int(free[0, 2])  # a token row 0 writes third; the other rows stop at their own first EOS, if any
  out = np.asarray(generate(model, params, tokens, attention_mask=mask, max_new_tokens=10, eos_token_id=eos,
                            pad_token_id=1).sequences)[:, 5:]
  for row in range(len(PROMPTS)):
    hits = np.flatnonzero(free[row] == eos)
    end = hits[0] + 1 if len(hits) else 10
    np.testing.assert_array_equal(out[row, :end], free[row, :end])
    assert np.all(out[row, end:] == 1)
  assert np.flatnonzero(free[0] == eos)[0] <= 2


def test_bad_requests_are_refused(lm):
  model, params = lm
  with pytest.raises(ValueError, match="left-padded"):
    generate(model, params, [[3, 4, 0]], attention_mask=[[1, 1, 0]], max_new_tokens=2)
  with pytest.raises(ValueError, match="rng"):
    generate(model, params, [[3, 4]], max_new_tokens=2, do_sample=True)
  with pytest.raises(ValueError, match="no room"):
    generate(model, params, [[3, 4, 5]], max_length=3)
  with pytest.raises(ValueError, match="num_return_sequences"):
    GenerationConfig(num_beams=2, num_return_sequences=3)


def test_running_out_of_learned_positions_is_an_error():
  """A lookup past a learned position table would give NaN logits, silently: refuse it instead."""
  cfg = tiny(position="learned", max_len=8, pad_id=0)
  for model in (DecoderOnly(cfg), EncoderDecoder(cfg)):
    args = (jnp.ones((1, 4), jnp.int32),) * (2 if isinstance(model, EncoderDecoder) else 1)
    params = model.init(jax.random.key(0), *args)["params"]
    with pytest.raises(ValueError, match="learned positions"):
      generate(model, params, [[3, 4, 5]], max_new_tokens=8, decoder_start_token_id=1)
  with pytest.raises(ValueError, match="learned positions"):
    generate(EncoderDecoder(cfg), params, [[3] * 9], max_new_tokens=2, decoder_start_token_id=1)
  from jaxformer.decode import generate_sliding
  lm = DecoderOnly(cfg)
  lm_params = lm.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
  with pytest.raises(ValueError, match="learned positions"):
    generate_sliding(lm, lm_params, jnp.ones((1, 3), jnp.int32), jax.random.key(0), max_new_tokens=6)
  assert generate_sliding(lm, lm_params, jnp.ones((1, 3), jnp.int32), jax.random.key(0), max_new_tokens=6,
                          context=8).shape == (1, 9)


# --- encoder-decoder beam search against exhaustive search -------------------------------------
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def seq2seq():
  cfg = tiny(position="sinusoidal", pre_norm=False, pad_id=0, vocab_size=5)
  model = EncoderDecoder(cfg)
  inputs = jnp.asarray([[3, 4, 3, 0], [4, 4, 3, 3]])
  params = model.init(jax.random.key(1), inputs, inputs)["params"]  # best: (EOS) or (4, 4, EOS) by penalty
  return model, params, inputs


def exhaustive_best(model, params, source, steps: int, length_penalty: float):
  """Score every hypothesis (ended by EOS, or `steps` tokens long) with HF's rule
  sum(log p) / length ** length_penalty and return the best (tokens, score)."""
  best = (None, -np.inf)
  for n in range(1, steps + 1):
    hyps = [ys for ys in itertools.product(range(5), repeat=n)
            if EOS not in ys[:-1] and (n == steps or ys[-1] == EOS)]
    dec = jnp.asarray([(BOS,) + ys[:-1] for ys in hyps])
    src = jnp.broadcast_to(source, (len(hyps),) + source.shape)
    logits = jax.jit(model.apply)({"params": params}, src, dec, decoder_segment_ids=jnp.ones_like(dec))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    for i, ys in enumerate(hyps):
      score = float(sum(logp[i, t, y] for t, y in enumerate(ys))) / n ** length_penalty
      if score > best[1]:
        best = (ys, score)
  return best


@pytest.mark.parametrize("length_penalty", [0.6, 1.0, 2.0])
def test_encoder_decoder_beam_search_finds_the_exhaustive_best(seq2seq, length_penalty):
  model, params, inputs = seq2seq
  # 20 beams keep every prefix of 3 tokens over a vocabulary of 5, so beam search is exact here.
  out = generate(model, params, inputs, max_new_tokens=3, num_beams=20, early_stopping="never",
                 length_penalty=length_penalty, decoder_start_token_id=BOS, eos_token_id=EOS, pad_token_id=0)
  for row in range(inputs.shape[0]):
    ys, score = exhaustive_best(model, params, inputs[row], 3, length_penalty)
    got = [int(t) for t in out.sequences[row, 1:]]
    # After the end HF's beam search writes `pad_token_id or eos_token_id`: EOS here, as the pad id is 0.
    assert got[:len(ys)] == list(ys) and all(t == EOS for t in got[len(ys):])
    assert float(out.scores[row]) == pytest.approx(score, abs=1e-5)
