"""Hugging Face checkpoints in jaxformer's own `DecoderOnly`: load GPT-2, BLOOM, Llama, Mistral and
Qwen2 checkpoints (local directory or Hub repo id), and export params back to the HF format.

    from jaxformer.hub import load_pretrained
    lm = load_pretrained("path/to/checkpoint")  # config.json + model.safetensors (+ tokenizer.json)
    logits = lm.logits(tokens, attention_mask)   # or lm.model.apply({"params": lm.params}, tokens, ...)
"""
from jaxformer.hub.config import SUPPORTED, config_from_hf, config_to_hf, guess_model_type
from jaxformer.hub.convert import params_from_hf, params_to_hf
from jaxformer.hub.io import Checkpoint, resolve
from jaxformer.hub.pretrained import Pretrained, export_pretrained, load_pretrained, padding_inputs
from jaxformer.hub.tokenizer import HFTokenizer

__all__ = ["SUPPORTED", "Checkpoint", "HFTokenizer", "Pretrained", "config_from_hf", "config_to_hf",
           "export_pretrained", "guess_model_type", "load_pretrained", "padding_inputs", "params_from_hf",
           "params_to_hf", "resolve"]
