"""Decoding: greedy, sampling and beam search (HF `generate` semantics) over a KV cache."""
from jaxformer.decode.generate import GenerateOutput, GenerationConfig, generate, left_pad
from jaxformer.decode.sliding import generate_sliding, sample_logits

__all__ = ["GenerateOutput", "GenerationConfig", "generate", "generate_sliding", "left_pad", "sample_logits"]
