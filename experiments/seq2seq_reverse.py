"""Encoder-decoder Transformer (Vaswani et al. 2017, post-LN) learning to reverse digit strings.

  jaxformer train --config experiments/seq2seq_reverse.py --workdir runs/seq2seq_reverse

Sources: 4-12 random digits; target: the same digits reversed, then EOS.
Model: 2+2 layers, width 64, 4 heads, sinusoidal positions, shared embeddings,
label smoothing 0.1, Adam(0.9, 0.98, 1e-9) as in the paper; 2000 steps of batch 64.
Schedule: warmup + cosine decay. The paper's inverse-square-root schedule
(--config.optim.schedule=rsqrt --config.optim.lr=1.0) keeps the learning rate high
and plateaus at 97-98% exact match here: the last errors are on repeated digits,
which need the precise positional attention that only a decayed rate settles.
Hardware/time: 2 CPU cores, ~40 s. Expected: >= 99% exact match with greedy
decoding on 512 held-out examples (measured: 100%).
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
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.eval_every = 500
  c.train.eval_batch_size = 128
  c.optim.name = "adam"
  c.optim.schedule = "cosine"
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  c.optim.b2 = 0.98
  c.optim.eps = 1e-9
  c.optim.weight_decay = 0.0
  c.optim.label_smoothing = 0.1
  return c
