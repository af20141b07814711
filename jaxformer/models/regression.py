"""`InContextRegressor`: the model of Garg et al. 2022 ("What Can Transformers Learn In-Context?", section 2;
`TransformerModel` in dtsip/in-context-learning): a linear read-in of each prompt vector, a GPT-2 style causal
decoder over the 2n vectors x_1, y_1, ..., x_n, y_n, and a linear read-out at every x position, so the
prediction of y_i sees x_1, y_1, ..., y_{i-1} and x_i. The data layout is `jaxformer.data.regression`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxformer.models.transformer import default_positions
from jaxformer.nn.blocks import Stack
from jaxformer.nn.config import TransformerConfig
from jaxformer.nn.layers import constrain, param_init
from jaxformer.nn.positions import LearnedPositions, sinusoidal


class InContextRegressor(nn.Module):
  """Prompt vectors [B, 2n, d] -> predictions of y_1 .. y_n [B, n] (float32), read at the x positions."""
  cfg: TransformerConfig

  def setup(self):
    cfg = self.cfg
    dense = dict(dtype=cfg.compute_dtype, param_dtype=jnp.dtype(cfg.param_dtype))
    self.read_in = nn.Dense(cfg.d_model, kernel_init=param_init(cfg, (None, "embed")),
                            bias_init=param_init(cfg, ("embed",), "zeros"), **dense)
    if cfg.position == "learned":
      self.positions = LearnedPositions(cfg.max_len, cfg.d_model, cfg.init_std or 0.02, cfg.param_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.decoder = Stack(cfg, cfg.num_layers, causal=True)
    self.read_out = nn.Dense(1, kernel_init=param_init(cfg, ("embed", None)),
                             bias_init=param_init(cfg, (None,), "zeros"), **dense)

  def __call__(self, inputs, *, positions=None, segment_ids=None, deterministic: bool = True):
    cfg = self.cfg
    if inputs.ndim != 3 or inputs.shape[1] % 2:
      raise ValueError(f"InContextRegressor expects prompts [batch, 2 * points, dim] (x, y interleaved), got shape "
                       f"{inputs.shape}; see jaxformer.data.regression")
    if cfg.position in ("learned", "sinusoidal") and inputs.shape[1] > cfg.max_len:
      raise ValueError(f"prompts of {inputs.shape[1]} vectors need model.max_len >= {inputs.shape[1]} "
                       f"(got {cfg.max_len})")
    positions = default_positions(inputs[..., 0], positions)  # [B, 2n]
    x = self.read_in(inputs.astype(cfg.compute_dtype))  # [B, 2n, D]
    if cfg.position == "learned":
      x = x + self.positions(positions).astype(x.dtype)
    elif cfg.position == "sinusoidal":
      x = x + sinusoidal(positions, cfg.d_model).astype(x.dtype)
    x = constrain(self.dropout(x, deterministic=deterministic), ("batch", "length", "embed"))
    x = self.decoder(x, positions=positions, segment_ids=segment_ids, deterministic=deterministic)
    return self.read_out(x[:, 0::2])[..., 0].astype(jnp.float32)  # [B, n]: the x positions
