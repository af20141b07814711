"""Flax linen building blocks. Imports `jaxformer.attention`, never `train/`."""
from jaxformer.nn.attention import MultiHeadAttention
from jaxformer.nn.blocks import Block, Stack
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.layers import MLP, Embed, Norm
from jaxformer.nn.positions import LearnedPositions, alibi_bias, alibi_slopes, rope, sinusoidal

__all__ = ["TransformerConfig", "MultiHeadAttention", "Block", "Stack", "MLP", "Embed", "Norm",
           "LearnedPositions", "alibi_bias", "alibi_slopes", "rope", "sinusoidal"]
