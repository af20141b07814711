"""The main job: a character-level GPT on Python's standard-library sources.

Runs offline anywhere Python is installed (the corpus is the interpreter's own
stdlib, ~2M characters, 90/10 train/val split).

  jaxformer train --config experiments/char_lm.py --workdir runs/char_lm

Model: GPT-2-style decoder (pre-LN, learned positions, GELU), 4 layers, 4 heads,
width 128, context 128 (~0.8M parameters). 1500 steps of batch 32.
Hardware/time: 2 CPU cores, ~3 minutes. Expected: validation loss ~1.4 nats/char
(from ~4.6 at initialisation) and a sample that looks like Python.
Smoke variant: --config.train.steps=50 --config.train.eval_every=0.
"""
from _common import base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig.gpt2(vocab_size=0, d_model=128, num_heads=4, mlp_dim=512, num_layers=4,
                                 max_len=128, dropout_rate=0.0, pad_id=0)
  c = base_config(model, "decoder_only")
  c.name = "char_lm"
  c.data.name = "stdlib_chars"
  c.data.seq_len = 128
  c.data.max_chars = 2_000_000
  c.train.steps = 1200
  c.train.batch_size = 16
  c.train.eval_every = 400
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 100
  return c
