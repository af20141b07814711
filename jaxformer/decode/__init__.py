"""Decoding: sampling for language models, greedy search for encoder-decoders."""
from jaxformer.decode.sampling import generate, greedy_seq2seq, sample_logits

__all__ = ["generate", "greedy_seq2seq", "sample_logits"]
