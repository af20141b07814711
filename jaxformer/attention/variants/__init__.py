"""Efficient-attention variants for experiments (issue 7): each a pure function beside the exact kernel API.

  linear_attention      Katharopoulos et al. 2020 (elu+1 features; causal as chunked prefix sums)
  performer_attention   Choromanski et al. 2021, FAVOR+ (positive orthogonal random features)
"""
from jaxformer.attention.variants.linear import linear_attention
from jaxformer.attention.variants.performer import performer_attention, positive_features, random_features

__all__ = ["linear_attention", "performer_attention", "positive_features", "random_features"]
