"""minGPT's sorting demo (Karpathy 2020, karpathy/minGPT demo.ipynb): a GPT learns to sort 6 digits of {0, 1, 2}.

  jaxformer reproduce mingpt_sort                 # ~40 s on 2 CPU cores
  jaxformer reproduce mingpt_sort --quick         # its first 600 iterations, judged in CI (100% too)
  jaxformer train --config experiments/mingpt_sort.py

Published: the notebook's final score is 5000/5000 (100%) exact matches on the test split after 2000 iterations.
Data: `jaxformer.data.MinGPTSort`: the row is the 6 digits then their sorted copy, only the sorted half scored;
a quarter of the 729 possible inputs are held out for test (minGPT: a hash of the input mod 4). minGPT's sampler
favours inputs with at most 3 distinct digits, which with 3 symbols is every input: the draws are uniform.
Metric: `sequence_accuracy` on every test input, which equals greedy decoding's exact match (see
`jaxformer.train.evaluate.evaluate`).
Model and recipe as minGPT's gpt-nano: 3 layers, 3 heads, width 48, learned positions, pre-LN blocks with GELU
(tanh), dropout 0.1, untied output; AdamW(0.9, 0.95), lr 5e-4 constant, weight decay 0.1, clipping 1.0, batch 64,
2000 iterations. Differences: weight decay also reaches the embeddings here (minGPT exempts them); the vocabulary
has a padding id (4 ids, minGPT 3); minGPT starts its residual projections at std 0.02 / sqrt(2 n_layer).
Hardware/time: 2 CPU cores, about a minute. Smoke variant: `jaxformer reproduce mingpt_sort --smoke`.
"""
import ml_collections
from _common import base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig.gpt2(vocab_size=0, d_model=48, num_heads=3, mlp_dim=192, num_layers=3, max_len=11,
                                 dropout_rate=0.1, pad_id=0, init_std=0.02, tie_embeddings=False)
  c = base_config(model, "decoder_only")
  c.name = "mingpt_sort"
  c.data.name = "mingpt_sort"
  c.data.length = 6
  c.data.num_digits = 3
  c.train.update(dict(steps=2000, batch_size=64, log_every=100, eval_every=500, eval_batches=0,
                      eval_batch_size=256, tensorboard=False))
  c.optim.update(dict(name="adamw", lr=5e-4, schedule="constant", warmup_steps=0, b1=0.9, b2=0.95,
                      weight_decay=0.1, clip_norm=1.0))
  c.checkpoint.every = 0
  c.checkpoint.async_save = False
  del c.sample
  c.reproduce = ml_collections.ConfigDict(dict(
      family="synthetic tasks", paper="Karpathy 2020, minGPT", source="demo.ipynb (sorting)",
      metric="eval.sequence_accuracy", metric_name="test exact match", published=1.0, target=1.0, goal="max",
      hardware="2 CPU cores", runtime="about 1 minute",
      smoke=("train.steps=20", "train.eval_every=0"),
      quick=("train.steps=600",), quick_target=1.0))  # CI: the same run stopped at 600 (constant lr)
  return c
