"""nanoGPT's character-level Shakespeare (Karpathy, karpathy/nanoGPT, config/train_shakespeare_char.py): 6 layers,
6 heads, width 384, context 256, batch 64, dropout 0.2, 5000 iterations. Published: best validation loss 1.4697,
about 3 minutes on one A100.

  jaxformer prepare tiny_shakespeare                     # once, with network (TFDS; needs TensorFlow to prepare)
  jaxformer reproduce nanogpt_shakespeare_char           # one GPU
  jaxformer reproduce nanogpt_shakespeare_char --config.data.path=PATH/TO/input.txt   # offline, nanoGPT's split

Model: nanoGPT's GPT (pre-LN, learned positions, exact GELU, tied output, no biases in the linear layers, init
std 0.02); AdamW(0.9, 0.99) lr 1e-3, 100 warmup steps, cosine decay to 1e-4 over the run, weight decay 0.1 on
matrices, clipping 1.0. Validation loss: the mean over eval_iters random batches of the validation text (nanoGPT's
`estimate_loss`). Differences: nanoGPT's LayerNorms have no bias (here they do); its residual projections start
at std 0.02 / sqrt(2 n_layer); the vocabulary has a padding id (66 ids, not 65); nanoGPT reports the best of its
evaluations, this the last. TFDS's tiny_shakespeare validation split is half of nanoGPT's 10% (the other half is
its test split); with data.path the split is nanoGPT's (one character off).
The CPU "baby" setting of the same README is experiments/nanogpt_shakespeare_char_baby.py.
Hardware/time: one GPU, minutes; about 2 hours on 2 CPU cores (not run here). Smoke variant: --smoke.
"""
import ml_collections
from _common import base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig.gpt2(vocab_size=0, d_model=384, num_heads=6, mlp_dim=1536, num_layers=6, max_len=256,
                                 dropout_rate=0.2, pad_id=0, activation="gelu", qkv_bias=False, out_bias=False,
                                 mlp_bias=False)
  c = base_config(model, "decoder_only")
  c.name = "nanogpt_shakespeare_char"
  c.data.name = "tiny_shakespeare"
  c.data.seq_len = 256
  c.data.path = ""
  c.train.update(dict(steps=5000, batch_size=64, log_every=100, eval_every=250, eval_batches=200,
                      eval_batch_size=64))
  c.optim.update(dict(name="adamw", lr=1e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1, b1=0.9,
                      b2=0.99, weight_decay=0.1, clip_norm=1.0))
  c.checkpoint.every = 1000
  c.sample.update(dict(prompt="\n", num_tokens=500, temperature=0.8))
  c.reproduce = ml_collections.ConfigDict(dict(
      family="language modelling", paper="Karpathy, nanoGPT", source="README, shakespeare_char (one A100)",
      metric="eval.nll", metric_name="val loss (nats/char)", published=1.4697, target=1.50, goal="min",
      hardware="one GPU", runtime="minutes on a GPU",
      smoke=("train.steps=5", "train.eval_every=0", "train.eval_batches=2", "train.batch_size=8",
             "sample.num_tokens=20"),
      quick=("train.steps=1000",), quick_target=1.7))
  return c
