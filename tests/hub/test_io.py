"""Checkpoint formats: sharded safetensors, pytorch_model.bin, base-model names without prefix, bf16."""
import jax
import numpy as np
import pytest

from jaxformer.hub import Checkpoint, export_pretrained, load_pretrained
from tests.hub import batch, hf_config, hf_logits, hf_model, max_diff, save, torch, transformers


def check_parity(lm, model, tol=1e-4):
  tokens, mask = batch(seed=4)
  assert max_diff(lm.logits(tokens, mask), hf_logits(model, tokens, mask), mask) < tol


def test_sharded_safetensors(tmp_path):
  model = hf_model(hf_config("llama"))
  save(model, tmp_path, max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("*.safetensors"))) > 1
  check_parity(load_pretrained(tmp_path), model)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pytorch_model_bin(tmp_path, dtype):
  """An older checkpoint: a torch pickle (transformers 5 no longer writes one, so torch.save it)."""
  model = hf_model(hf_config("bloom")).to(getattr(torch, dtype))
  model.config.save_pretrained(tmp_path)
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  assert not list(tmp_path.glob("*.safetensors"))
  check_parity(load_pretrained(tmp_path), model.float())


def test_base_model_checkpoint_without_prefix(tmp_path):
  """A GPT2Model checkpoint names its tensors `h.0...` instead of `transformer.h.0...`."""
  model = hf_model(hf_config("gpt2"))
  model.transformer.save_pretrained(tmp_path)
  assert "h.0.attn.c_attn.weight" in Checkpoint(tmp_path).keys()
  check_parity(load_pretrained(tmp_path), model)


def test_bfloat16_checkpoint(tmp_path):
  model = hf_model(hf_config("llama")).to(torch.bfloat16)
  save(model, tmp_path)
  lm = load_pretrained(tmp_path)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(lm.params))  # upcast exactly
  np.testing.assert_array_equal(lm.params["embedder"]["tokens"]["embedding"],
                                model.model.embed_tokens.weight.detach().float().numpy())
  lm16 = load_pretrained(tmp_path, param_dtype="bfloat16")
  assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(lm16.params))
  out = export_pretrained(lm16.params, lm16.config, tmp_path / "bf16")  # exported as bf16, bit for bit
  np.testing.assert_array_equal(load_pretrained(out).params["head"]["DenseGeneral_0"]["kernel"],
                                lm.params["head"]["DenseGeneral_0"]["kernel"])
  assert load_pretrained(out).hf_config["dtype"] == "bfloat16"
  # the oracle: the bf16 checkpoint loaded by HF in fp32 (model.float() would keep a bf16-rounded RoPE inv_freq)
  check_parity(lm, transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                                    attn_implementation="eager").eval())


def test_generation_defaults(tmp_path):
  model = hf_model(hf_config("llama", bos_token_id=1, eos_token_id=2))
  model.generation_config = transformers.GenerationConfig(bos_token_id=1, eos_token_id=[2, 5], pad_token_id=0)
  lm = load_pretrained(save(model, tmp_path))
  assert (lm.bos_token_id, lm.eos_token_id, lm.pad_token_id) == (1, [2, 5], 0)
  assert lm.hf_config["model_type"] == "llama" and lm.path == tmp_path
