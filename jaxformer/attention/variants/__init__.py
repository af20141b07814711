"""Efficient-attention variants for experiments: each a pure function beside the exact kernel API.

  linear_attention        Katharopoulos et al. 2020 (elu+1 features; causal as chunked prefix sums)
  performer_attention     Choromanski et al. 2021, FAVOR+ (positive orthogonal random features)
  block_sparse_attention  Zaheer et al. 2020, BigBird (global + window + random blocks; `bigbird_layout`)
  lsh_attention           Kitaev et al. 2020, Reformer (LSH buckets, sorted chunks; `lsh_rotations`)
  sigmoid_attention       Ramapuram et al. 2024 (sigmoid instead of softmax, b = -log n)

Models select them with `model.attention.kind` (jaxformer/nn/variants.py), together with the kinds that are
exact softmax attention under another mask or parametrisation (local, sinks, differential) and those that need
parameters (Linformer, Synthesizer).
"""
from jaxformer.attention.variants.block_sparse import bigbird_layout, block_sparse_attention
from jaxformer.attention.variants.linear import linear_attention
from jaxformer.attention.variants.lsh import lsh_attention, lsh_rotations
from jaxformer.attention.variants.performer import performer_attention, positive_features, random_features
from jaxformer.attention.variants.sigmoid import sigmoid_attention

__all__ = ["bigbird_layout", "block_sparse_attention", "linear_attention", "lsh_attention", "lsh_rotations",
           "performer_attention", "positive_features", "random_features", "sigmoid_attention"]
