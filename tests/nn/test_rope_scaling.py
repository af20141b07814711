"""RoPE frequency scaling (linear, llama3, yarn) against HF transformers' ROPE_INIT_FUNCTIONS."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.nn.positions import rope, rope_frequencies

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    "yarn_betas": {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16, "beta_slow": 2, "truncate": False,
                   "original_max_position_embeddings": 2048},
    "yarn_mscale": {"rope_type": "yarn", "factor": 40.0, "mscale": 1.0, "mscale_all_dim": 0.707,
                    "original_max_position_embeddings": 4096},
    "yarn_attention_factor": {"rope_type": "yarn", "factor": 2.0, "attention_factor": 0.8,
                              "original_max_position_embeddings": 4096},
}


def hf_frequencies(scaling, head_dim, theta, max_len):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
  torch.set_num_threads(1)
  cfg = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                 max_position_embeddings=max_len, rope_parameters={**scaling, "rope_theta": theta})
  if scaling["rope_type"] == "default":
    inv_freq, attention_factor = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
  else:
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
  return inv_freq.numpy(), attention_factor


@pytest.mark.parametrize("name", sorted(SCALINGS))
@pytest.mark.parametrize("head_dim, theta", [(128, 500000.0), (16, 10000.0)])
def test_frequencies_match_hf(name, head_dim, theta):
  scaling = SCALINGS[name]
  want_freq, want_factor = hf_frequencies(scaling, head_dim, theta, max_len=32768)
  inv_freq, attention_factor = rope_frequencies(head_dim, theta, scaling)
  assert inv_freq.dtype == np.float32 and inv_freq.shape == (head_dim // 2,)
  np.testing.assert_allclose(inv_freq, want_freq, rtol=2e-6)
  assert attention_factor == pytest.approx(want_factor, rel=1e-6)


def test_default_matches_hf():
  want, _ = hf_frequencies({"rope_type": "default"}, 16, 10000.0, 64)
  np.testing.assert_allclose(rope_frequencies(16)[0], want, rtol=1e-6)
  assert rope_frequencies(16, scaling={"rope_type": "default"})[1] == 1.0


def test_linear_scaling_is_position_interpolation():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 2, 8)), jnp.float32)
  positions = jnp.arange(0, 20, 4)[None]
  scaled = rope(x, positions, scaling=(("factor", 4.0), ("rope_type", "linear")))
  np.testing.assert_allclose(scaled, rope(x, positions // 4), atol=1e-6)


def test_yarn_scales_cos_and_sin_by_the_attention_factor():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 1, 8)), jnp.float32)
  y = rope(x, jnp.arange(3)[None], scaling={"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.5,
                                             "original_max_position_embeddings": 64})
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), 1.5 * jnp.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("scaling, error, match", [
    ({"rope_type": "dynamic", "factor": 2.0}, NotImplementedError, "dynamic"),
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}, NotImplementedError, "longrope"),
    ({"rope_type": "spiral"}, ValueError, "spiral"),
    ({"rope_type": "llama3", "factor": 8.0}, ValueError, "low_freq_factor"),
])
def test_unsupported_scalings_say_what_is_supported(scaling, error, match):
  with pytest.raises(error, match=match):
    rope_frequencies(16, 10000.0, scaling)
