"""nanoGPT's character-level Shakespeare, the CPU "baby" setting (Karpathy, karpathy/nanoGPT README, "I only have
a macbook"): 4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, no dropout. Published: validation
loss 1.88 ("gets us a loss of only 1.88"), about 3 minutes on a laptop CPU.

  jaxformer prepare tiny_shakespeare                     # once, with network (TFDS; needs TensorFlow to prepare)
  jaxformer reproduce nanogpt_shakespeare_char_baby
  # offline, from a local copy of the same text (nanoGPT's input.txt), split 90/10 exactly as nanoGPT:
  jaxformer reproduce nanogpt_shakespeare_char_baby --config.data.path=../shared/data/tinyshakespeare.txt

Model and recipe: experiments/nanogpt_shakespeare_char.py (nanoGPT's, with its differences listed there), shrunk
as the README's command line: the validation loss is the mean over 20 random batches of 12 windows (nanoGPT's
`estimate_loss` with eval_iters=20, so about +-0.01 of noise), the cosine decay ends at iteration 2000.
Hardware/time: 2 CPU cores, ~2-3 minutes. Smoke variant: --smoke.
"""
from nanogpt_shakespeare_char import get_config as full_config


def get_config():
  c = full_config()
  c.name = "nanogpt_shakespeare_char_baby"
  c.model.update(dict(d_model=128, num_heads=4, mlp_dim=512, num_layers=4, max_len=64, dropout_rate=0.0))
  c.data.seq_len = 64
  c.train.update(dict(steps=2000, batch_size=12, eval_batches=20, eval_batch_size=12))
  c.checkpoint.every = 0
  c.sample.num_tokens = 300
  c.reproduce.update(dict(
      source="README, shakespeare_char on a CPU", published=1.88, target=1.93, hardware="2 CPU cores",
      runtime="about 3 minutes",
      smoke=("train.steps=20", "train.eval_every=0", "train.eval_batches=2", "sample.num_tokens=20"),
      quick=("train.steps=500",), quick_target=2.4))
  return c
