"""HF checkpoints loaded into jaxformer's DecoderOnly give HF's logits (fp32, within 1e-4),
unpadded and left-padded, for every supported family and RoPE scaling."""
import numpy as np
import pytest

from jaxformer.hub import load_pretrained
from jaxformer.models.transformer import DecoderOnly
from tests.hub import ROPE_SCALINGS, batch, hf_config, hf_logits, hf_model, max_diff, save

CASES = {
    "gpt2": ("gpt2", {}),
    "gpt2_untied_relu": ("gpt2", dict(tie_word_embeddings=False, activation_function="relu", n_inner=40)),
    "bloom_3_heads": ("bloom", dict(n_head=3)),
    "bloom_6_heads": ("bloom", dict(n_head=6)),  # non-power-of-two ALiBi slopes
    "llama_gqa": ("llama", {}),
    "llama_tied_bias": ("llama", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                                      num_key_value_heads=1)),
    "mistral": ("mistral", dict(sliding_window=None)),
    "qwen2": ("qwen2", dict(rope_parameters={"rope_type": "default", "rope_theta": 1000.0})),
    **{f"llama_rope_{name}": ("llama", dict(rope_parameters={**scaling, "rope_theta": 10000.0}))
       for name, scaling in ROPE_SCALINGS.items()},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_hf(case, tmp_path):
  kind, kw = CASES[case]
  model = hf_model(hf_config(kind, **kw))
  lm = load_pretrained(save(model, tmp_path / case))
  assert lm.model_type == kind and lm.config.dropout_rate == 0 and lm.config.pad_id is None

  tokens, mask = batch(seed=1)
  full = np.ones_like(mask)
  unpadded = max_diff(lm.logits(tokens, full), hf_logits(model, tokens, full), full)
  padded = max_diff(lm.logits(tokens, mask), hf_logits(model, tokens, mask), mask)
  print(f"{case}: max |logit diff| unpadded {unpadded:.2e}, left-padded {padded:.2e}")
  assert unpadded < 1e-4 and padded < 1e-4
  if case.startswith("llama_rope_"):  # the scaling is applied, and it matters at these positions
    assert dict(lm.config.rope_scaling)["rope_type"] == case.removeprefix("llama_rope_")
    unscaled = DecoderOnly(lm.config.replace(rope_scaling=None)).apply({"params": lm.params}, tokens)
    assert max_diff(unscaled, hf_logits(model, tokens, full), full) > 1e-2


def test_model_apply_with_explicit_positions(tmp_path):
  """The plain DecoderOnly call (no Pretrained.logits helper) with HF's padding convention."""
  model = hf_model(hf_config("llama"))
  lm = load_pretrained(save(model, tmp_path / "llama"))
  tokens, mask = batch(seed=2)
  positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
  ours = lm.model.apply({"params": lm.params}, tokens, positions=positions, segment_ids=mask)
  assert max_diff(ours, hf_logits(model, tokens, mask), mask) < 1e-4


def test_loaded_params_have_the_init_tree(tmp_path):
  import jax
  import jax.numpy as jnp

  from jaxformer.train.step import init_params
  lm = load_pretrained(save(hf_model(hf_config("gpt2")), tmp_path / "gpt2"))
  fresh, _ = init_params(lm.model, "decoder_only", {"inputs": jnp.zeros((1, 4), jnp.int32)}, 0)
  assert jax.tree.structure(lm.params) == jax.tree.structure(fresh)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), lm.params) == jax.tree.map(lambda a: (a.shape, a.dtype), fresh)


def test_bfloat16_compute(tmp_path):
  model = hf_model(hf_config("llama"))
  lm = load_pretrained(save(model, tmp_path / "llama"), dtype="bfloat16")
  assert lm.config.compute_dtype == np.dtype("bfloat16")
  assert all(x.dtype == np.float32 for x in __import__("jax").tree.leaves(lm.params))  # params stay fp32
  tokens, mask = batch()
  logits = lm.logits(tokens, mask)
  assert logits.dtype == np.float32
  assert max_diff(logits, hf_logits(model, tokens, mask), mask) < 0.1
