"""jaxformer params -> export_pretrained -> HF AutoModelForCausalLM gives jaxformer's logits."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.hub import export_pretrained, load_pretrained
from jaxformer.models.transformer import DecoderOnly
from jaxformer.nn.config import TransformerConfig
from tests.hub import batch, hf_logits, max_diff, transformers

SMALL = dict(vocab_size=96, d_model=32, num_heads=4, mlp_dim=64, num_layers=2, dropout_rate=0.0, init_std=0.2)
CONFIGS = {
    "gpt2": TransformerConfig.gpt2(**SMALL, max_len=32),
    "bloom": TransformerConfig.bloom(**{**SMALL, "d_model": 48, "num_heads": 3, "mlp_dim": 192}),
    "llama": TransformerConfig.llama(**SMALL, num_kv_heads=2, max_len=128,
                                     rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                                   "original_max_position_embeddings": 64}),
    "qwen2": TransformerConfig.llama(**SMALL, num_kv_heads=1, max_len=128, qkv_bias=True, tie_embeddings=True),
}


def random_params(cfg, seed=0):
  """Random params in the tree `init` makes (no compilation): N(0, 0.2), norm scales N(1, 0.1)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: nn.unbox(DecoderOnly(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray((1.0 if path[-1].key == "scale" else 0.0) + 0.2 * rng.normal(size=x.shape),
                                  jnp.float32), shapes["params"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_round_trip(name, tmp_path):
  cfg = CONFIGS[name]
  params = random_params(cfg)
  out = export_pretrained(params, cfg, tmp_path / name, generation_config={"eos_token_id": 3, "bos_token_id": 2})
  assert out.name == name and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left

  model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  assert model.config.model_type == name
  tokens, mask = batch(seed=3)
  positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
  ours = DecoderOnly(cfg).apply({"params": params}, tokens, positions=positions, segment_ids=mask)
  diff = max_diff(ours, hf_logits(model, tokens, mask), mask)
  print(f"export {name}: max |logit diff| {diff:.2e}")
  assert diff < 1e-4

  lm = load_pretrained(out)  # and back: the same params
  assert lm.eos_token_id == 3 and lm.bos_token_id == 2
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), lm.params, params)


def test_export_refuses_what_hf_cannot_express(tmp_path):
  cfg = CONFIGS["gpt2"].replace(norm="rmsnorm")
  with pytest.raises(ValueError, match=r"norm='rmsnorm' \(needs 'layernorm'\)"):
    export_pretrained(random_params(CONFIGS["gpt2"]), cfg, tmp_path / "out", "gpt2")
  assert not (tmp_path / "out").exists()
  with pytest.raises(ValueError, match="model.attention.kind='local' cannot be exported"):
    export_pretrained(random_params(CONFIGS["gpt2"]), CONFIGS["gpt2"].replace(attention="local"), tmp_path / "out",
                      "gpt2")
  assert not (tmp_path / "out").exists()


def test_export_does_not_clobber(tmp_path):
  cfg = CONFIGS["gpt2"]
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError, match="overwrite=True"):
    export_pretrained(random_params(cfg), cfg, tmp_path / "out")
  export_pretrained(random_params(cfg), cfg, tmp_path / "out", overwrite=True)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
