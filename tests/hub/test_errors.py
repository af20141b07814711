"""Clear errors: missing files and tensors, wrong shapes, unexpected tensors, unsupported configs."""
import json
import logging

import pytest
from safetensors.torch import load_file, save_file

from jaxformer.hub import config_from_hf, load_pretrained
from tests.hub import hf_config, hf_model, save


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  return save(hf_model(hf_config("gpt2")), tmp_path_factory.mktemp("gpt2"))


def edited_copy(src, dst, edit):
  """A copy of checkpoint `src` whose state dict went through `edit`."""
  dst.mkdir()
  (dst / "config.json").write_text((src / "config.json").read_text())
  tensors = edit(load_file(src / "model.safetensors"))
  save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
  return dst


def test_missing_weights_file(gpt2_dir, tmp_path):
  (tmp_path / "config.json").write_text((gpt2_dir / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match=r"no weights in .*model\.safetensors"):
    load_pretrained(tmp_path)


def test_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_pretrained(tmp_path)


def test_path_that_does_not_exist():
  with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
    load_pretrained("./no/such/checkpoint")


def test_missing_shard(gpt2_dir, tmp_path):
  (tmp_path / "config.json").write_text((gpt2_dir / "config.json").read_text())
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "part-1.safetensors"}}))
  with pytest.raises(FileNotFoundError, match="part-1.safetensors"):
    load_pretrained(tmp_path)


def test_wrong_shape_names_the_tensor(gpt2_dir, tmp_path):
  def edit(sd):
    sd["transformer.h.1.mlp.c_fc.weight"] = sd["transformer.h.1.mlp.c_fc.weight"][:, :100]
    return sd
  with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight: expected \(32, 128\), found \(32, 100\)"):
    load_pretrained(edited_copy(gpt2_dir, tmp_path / "ckpt", edit))


def test_missing_tensor_names_it(gpt2_dir, tmp_path):
  def edit(sd):
    del sd["transformer.h.0.ln_2.bias"]
    return sd
  with pytest.raises(ValueError, match=r"lacks 1 tensor.*transformer\.h\.0\.ln_2\.bias"):
    load_pretrained(edited_copy(gpt2_dir, tmp_path / "ckpt", edit))


def test_unexpected_tensor_raises_or_warns(gpt2_dir, tmp_path, caplog):
  def edit(sd):
    sd["transformer.h.0.attn.q_norm.weight"] = sd["transformer.ln_f.weight"].clone()
    sd["transformer.h.0.attn.bias"] = sd["transformer.ln_f.weight"].clone()  # a known buffer: always ignored
    return sd
  ckpt = edited_copy(gpt2_dir, tmp_path / "ckpt", edit)
  with pytest.raises(ValueError, match=r"has 1 tensor.*h\.0\.attn\.q_norm\.weight; pass strict=False"):
    load_pretrained(ckpt)
  with caplog.at_level(logging.WARNING, logger="jaxformer.hub"):
    load_pretrained(ckpt, strict=False)
  assert "h.0.attn.q_norm.weight" in caplog.text and "attn.bias" not in caplog.text


@pytest.mark.parametrize("overrides, key", [
    (dict(model_type="gpt2", scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(model_type="gpt2", reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
    (dict(model_type="gpt2", scale_attn_weights=False), "scale_attn_weights"),
    (dict(model_type="gpt2", activation_function="quick_gelu"), "activation_function"),
    (dict(model_type="bloom", apply_residual_connection_post_layernorm=True),
     "apply_residual_connection_post_layernorm"),
    (dict(model_type="llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling"),
    (dict(model_type="llama", rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}), "rope_scaling"),
    (dict(model_type="llama", rope_scaling={"rope_type": "ntk-by-parts"}), "rope_scaling"),
    (dict(model_type="llama", hidden_act="relu"), "hidden_act"),
    (dict(model_type="mistral", sliding_window=16), "sliding_window"),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=16), "sliding_window"),
])
def test_unsupported_config_names_the_key(overrides, key):
  hf = {"vocab_size": 64, "n_embd": 32, "n_head": 4, "n_layer": 1, "n_positions": 16, "hidden_size": 32,
        "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 48, "max_position_embeddings": 64,
        **overrides}
  with pytest.raises(ValueError, match=key):
    config_from_hf(hf)


def test_unknown_model_type_lists_the_supported_ones():
  with pytest.raises(ValueError, match=r"'t5' is not supported.*'gpt2', 'bloom', 'llama'"):
    config_from_hf({"model_type": "t5", "vocab_size": 8})


def test_mistral_window_covering_the_context_is_fine():
  cfg = config_from_hf({"model_type": "mistral", "vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4,
                        "num_hidden_layers": 1, "intermediate_size": 48, "max_position_embeddings": 64,
                        "sliding_window": 64})
  assert cfg.position == "rope" and cfg.activation == "swiglu"


def test_hub_failure_says_what_to_do(monkeypatch):
  """The download itself is never run in tests: snapshot_download is replaced by one that fails offline."""
  import huggingface_hub

  def offline(*args, **kwargs):
    raise OSError("network unreachable")
  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  with pytest.raises(OSError, match=r"'some-org/some-model' is not a local directory.*offline.*huggingface-cli download"):
    load_pretrained("some-org/some-model")
