"""Decoding parity with Hugging Face transformers on tiny random GPT-2 / BLOOM / Llama checkpoints:
KV-cache logits, greedy tokens, and beam-search sequences and scores (HF `generate` as the oracle)."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.decode import generate
from jaxformer.hub import load_pretrained
from jaxformer.nn.cache import KVCache
from tests.hub import batch, hf_config, hf_logits, hf_model, max_diff, save, torch

FAMILIES = {"gpt2": ("gpt2", {}), "bloom_3_heads": ("bloom", dict(n_head=3)),
            "bloom_6_heads": ("bloom", dict(n_head=6)), "llama_gqa": ("llama", {})}
PAD = 95
NEW = 8


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
  kind, kw = FAMILIES[request.param]
  hf = hf_model(hf_config(kind, **kw), seed=4)  # a seed whose models do end hypotheses with EOS
  return hf, load_pretrained(save(hf, tmp_path_factory.mktemp(request.param)))


def test_cached_logits_match_hf(pair):
  """Prefill half of a left-padded batch, then feed the rest one token at a time."""
  hf, lm = pair
  tokens, mask = batch(seed=2)
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  cache = KVCache.empty(lm.config, tokens.shape[0], tokens.shape[1])
  apply = lambda lo, hi, cache: lm.model.apply(  # noqa: E731
      {"params": lm.params}, jnp.asarray(tokens[:, lo:hi]), positions=jnp.asarray(positions[:, lo:hi]),
      segment_ids=jnp.asarray(mask[:, lo:hi]), cache=cache)
  logits, cache = apply(0, 6, cache)
  steps = [logits]
  for t in range(6, tokens.shape[1]):
    logits, cache = apply(t, t + 1, cache)
    steps.append(logits)
  assert max_diff(jnp.concatenate(steps, 1), hf_logits(hf, tokens, mask), mask) < 1e-4


def hf_generate(hf, tokens, mask, **kw):
  with torch.no_grad():
    out = hf.generate(input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask), pad_token_id=PAD,
                      return_dict_in_generate=True, output_scores=True, **kw)
  scores = out.sequences_scores.numpy() if kw.get("num_beams", 1) > 1 else None
  return out.sequences.numpy(), scores


def prompts():
  tokens, mask = batch(seed=4, lengths=(6, 3), length=6)
  return np.where(mask == 1, tokens, PAD), mask


def assert_same_sequences(ours, theirs, fill):
  """HF crops its output to the longest row; ours always has max_length columns, `fill` beyond."""
  ours = np.asarray(ours)
  np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
  assert np.all(ours[:, theirs.shape[1]:] == fill)


@pytest.mark.parametrize("processors", [{}, dict(repetition_penalty=1.3, no_repeat_ngram_size=2)])
def test_greedy_is_token_identical_to_hf(pair, processors):
  hf, lm = pair
  tokens, mask = prompts()
  theirs, _ = hf_generate(hf, tokens, mask, do_sample=False, max_new_tokens=NEW, **processors)
  ours = generate(lm.model, lm.params, tokens, attention_mask=mask, max_new_tokens=NEW, pad_token_id=PAD,
                  **processors)
  assert_same_sequences(ours.sequences, theirs, PAD)


def hf_beams_with_eos(hf, tokens, mask, **options):
  """HF's beam search with an EOS id chosen so that some returned hypotheses do end with EOS:
  the first token HF writes without an EOS that, once made the EOS, ends a returned hypothesis."""
  free, _ = hf_generate(hf, tokens, mask, **options)
  for eos in dict.fromkeys(free[:, tokens.shape[1]:].ravel().tolist()):
    theirs, scores = hf_generate(hf, tokens, mask, eos_token_id=eos, **options)
    if np.any(theirs[:, tokens.shape[1]:] == eos):
      return eos, theirs, scores
  pytest.fail("no token of HF's output works as an EOS here")


@pytest.mark.parametrize("early_stopping,length_penalty",
                         [(True, 1.0), (True, 0.6), (False, 1.0), (False, 0.6), ("never", 1.0)])
def test_beam_search_matches_hf(pair, early_stopping, length_penalty):
  hf, lm = pair
  if early_stopping == "never" and lm.model_type != "gpt2":
    pytest.skip("early_stopping='never' is checked on one family (it changes only the stopping rule)")
  tokens, mask = prompts()
  options = dict(num_beams=5, num_return_sequences=2, max_new_tokens=NEW, early_stopping=early_stopping,
                 length_penalty=length_penalty)
  eos, theirs, their_scores = hf_beams_with_eos(hf, tokens, mask, **options)
  ours = generate(lm.model, lm.params, tokens, attention_mask=mask, pad_token_id=PAD, eos_token_id=eos, **options)
  assert_same_sequences(ours.sequences, theirs, PAD)
  np.testing.assert_allclose(np.asarray(ours.scores), their_scores, atol=1e-4)


def test_beam_search_with_processors_matches_hf(pair):
  hf, lm = pair
  if lm.model_type != "llama":
    pytest.skip("checked on one family")
  tokens, mask = prompts()
  options = dict(num_beams=4, num_return_sequences=3, max_new_tokens=NEW, no_repeat_ngram_size=2, min_new_tokens=3)
  eos, theirs, their_scores = hf_beams_with_eos(hf, tokens, mask, **options)
  ours = generate(lm.model, lm.params, tokens, attention_mask=mask, pad_token_id=PAD, eos_token_id=eos, **options)
  assert_same_sequences(ours.sequences, theirs, PAD)
  np.testing.assert_allclose(np.asarray(ours.scores), their_scores, atol=1e-4)
