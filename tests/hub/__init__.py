"""Shared helpers for the jaxformer.hub tests: tiny randomly initialised HF models (never downloaded),
saved into pytest tmp dirs, and HF's own logits as the oracle."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

VOCAB = 96
T = 12
LENGTHS = (12, 7, 3)  # rows of a left-padded batch

ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    # head_dim 8 -> wavelengths 6.3, 63, 628, 6283: one high, one medium, two low-frequency bands
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}


def hf_config(kind: str, **kw):
  """A tiny HF config of one family: 2 layers, width 32-48, vocab 96."""
  if kind == "gpt2":
    base = dict(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=VOCAB, activation_function="gelu_new")
    return transformers.GPT2Config(**{**base, **kw})
  if kind == "bloom":
    base = dict(hidden_size=48, n_layer=2, n_head=3, vocab_size=VOCAB)
    return transformers.BloomConfig(**{**base, **kw})
  base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
              vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5)
  cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
         "qwen2": transformers.Qwen2Config}[kind]
  return cls(**{**base, **kw})


def hf_model(config, seed: int = 0):
  """An HF causal LM with every parameter (norms and biases too) perturbed, so each one matters."""
  torch.manual_seed(seed)
  config._attn_implementation = "eager"
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def save(model, directory, **kw):
  model.save_pretrained(directory, **kw)
  return directory


def batch(seed: int = 0, lengths=LENGTHS, length: int = T):
  """Random tokens [B, T] and a left-padding attention mask (1 real, 0 pad)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, size=(len(lengths), length))
  mask = (np.arange(length)[None] >= length - np.asarray(lengths)[:, None]).astype(np.int64)
  return tokens, mask


def hf_logits(model, tokens, mask):
  """HF logits with generate's padding convention (position_ids = cumsum(mask) - 1, 1 at padding)."""
  ids, mask = torch.as_tensor(tokens), torch.as_tensor(mask)
  kw = {}
  if model.config.model_type != "bloom":  # BLOOM derives its ALiBi positions from the mask itself
    kw["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=mask, **kw).logits.float().numpy()


def max_diff(ours, theirs, mask) -> float:
  """max |ours - theirs| over the real (unpadded) positions."""
  return float(np.abs(np.asarray(ours) - theirs)[np.asarray(mask) == 1].max())
