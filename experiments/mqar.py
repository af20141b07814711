"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology", section 3), CPU scale.

  jaxformer train --config experiments/mqar.py --config.model.attention.kind=linear

A context of `num_kv_pairs` key-value pairs, then each key queried once (zoology's power-law gaps); accuracy is
on the recalled values only. Zoology's finding, which this reproduces in miniature: exact softmax attention
solves MQAR at small width, while linear attention and Performer (fixed-size recurrent state) degrade as the
width shrinks relative to the number of pairs (Zoology Figure 2). `jaxformer compare` runs every attention kind
on it with the same budget (experiments/suites/compare_attention.py).

Model: 2 layers, 2 heads, width 64, RoPE, no MLP dropout; vocab 256, length 64, 8 pairs (zoology uses vocab
8192 and widths 64-512; the vocabulary is cut so the output layer does not dominate a CPU step).
Budget: 1500 steps of batch 64, AdamW lr 3e-3 with cosine decay. Hardware/time: 2 CPU cores, ~1-2 min.
Expected: softmax >= 99% recall accuracy (measured: docs/attention_comparison/results.md).
"""
from _common import base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig(vocab_size=256, d_model=64, num_heads=2, mlp_dim=128, num_layers=2, max_len=64,
                            position="rope", norm="layernorm", pre_norm=True, activation="gelu", dropout_rate=0.0,
                            pad_id=0)
  c = base_config(model, "decoder_only")
  c.name = "mqar"
  c.data.name = "mqar"
  c.data.vocab_size = 256
  c.data.input_seq_len = 64
  c.data.num_kv_pairs = 8
  c.train.steps = 1500
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.eval_batches = 4
  c.train.eval_batch_size = 128
  c.optim.lr = 3e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  del c.sample
  return c
