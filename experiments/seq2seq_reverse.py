"""Encoder-decoder Transformer (Vaswani et al. 2017, post-LN) learning to reverse digit strings.

  jaxformer train --config experiments/seq2seq_reverse.py --workdir runs/seq2seq_reverse

Sources: 4-12 random digits; target: the same digits reversed, then EOS.
Model: 2+2 layers, width 64, 4 heads, sinusoidal positions, shared embeddings,
Adam(0.9, 0.98, 1e-9) with the paper's inverse-square-root warmup.
Hardware/time: 2 CPU cores, ~2 minutes. Expected: >= 99% exact match with greedy
decoding on 512 held-out examples.
Other tasks: --config.data.name=sort or copy.
"""
from _common import base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig.aiayn_base(vocab_size=0, d_model=64, num_heads=4, mlp_dim=256, num_layers=2,
                                       dropout_rate=0.0, max_len=64)
  c = base_config(model, "encoder_decoder")
  c.name = "seq2seq_reverse"
  c.data.name = "reverse"
  c.data.min_len = 4
  c.data.max_len = 12
  c.data.num_symbols = 10
  c.train.steps = 1500
  c.train.batch_size = 64
  c.train.eval_every = 500
  c.train.eval_batch_size = 128
  c.optim.name = "adam"
  c.optim.schedule = "rsqrt"
  c.optim.lr = 2.0  # multiplier of d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)
  c.optim.warmup_steps = 200
  c.optim.b2 = 0.98
  c.optim.eps = 1e-9
  c.optim.weight_decay = 0.0
  c.optim.label_smoothing = 0.1
  return c
