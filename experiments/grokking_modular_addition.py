"""Grokking on modular addition (Power et al. 2022), in the setting of Nanda et al. 2023, "Progress measures for
grokking via mechanistic interpretability" (section 3, Figure 1): a one-layer transformer trained full-batch on 30%
of the pairs (a, b) mod 113 first memorises them (train accuracy 100%, test at chance), then, long after,
generalises: test accuracy jumps to 100% (around 10k epochs in the paper's Figure 1).

  jaxformer reproduce grokking_modular_addition          # ~1 hour on 2 CPU cores (slow; not in CI)

Data: `jaxformer.data.ModularArithmetic` ("a b =" -> (a + b) mod 113, scored at "="), 3830 training pairs, the
other 8939 for test. Model as Nanda et al.: 1 layer, 4 heads of 32, width 128, ReLU MLP of 512, no LayerNorm,
learned positions, untied unembedding, init std 0.8/sqrt(d_model) (HookedTransformer's default). Recipe: full-batch
AdamW(0.9, 0.98), lr 1e-3 (10 warmup steps, then constant), weight decay 1.0 (here on matrices only; the paper:
every parameter), no clipping. The output layer has p + 2 logits here (a padding id and "="), Nanda's p + 1. Published: test accuracy 100% (Figure 1). `analyze` reports the first step at which
train accuracy and then test accuracy reach 99%; the gap between them is the grokking.
Measured here so far: train accuracy 99% by step 300, test accuracy still 0.07 at step 8000 and rising slowly,
so the budget is 30k full-batch steps (the paper trains 40k epochs; the schedule is constant, so a run stopped
early and resumed with more steps is the same run).
Hardware/time: 2 CPU cores, ~0.12 s per step: about 1 hour. Smoke variant: --smoke.
"""
import ml_collections
from _common import base_config

from jaxformer.nn.config import TransformerConfig
from jaxformer.train.metrics import read_metrics


def get_config():
  model = TransformerConfig(vocab_size=0, d_model=128, num_heads=4, mlp_dim=512, num_layers=1, max_len=3,
                            position="learned", norm="none", pre_norm=True, activation="relu", qkv_bias=True,
                            out_bias=True, mlp_bias=True, tie_embeddings=False, dropout_rate=0.0, pad_id=None,
                            init_std=0.8 / 128 ** 0.5)
  c = base_config(model, "decoder_only")
  c.name = "grokking_modular_addition"
  c.data.name = "modular_arithmetic"
  c.data.p = 113
  c.data.operation = "add"
  c.data.train_fraction = 0.3
  c.train.update(dict(steps=30000, batch_size=3830, log_every=100, eval_every=200, eval_batches=0,
                      eval_batch_size=8939, tensorboard=False))
  c.optim.update(dict(name="adamw", lr=1e-3, schedule="constant", warmup_steps=10, b1=0.9, b2=0.98,
                      weight_decay=1.0, clip_norm=0.0))
  c.checkpoint.every = 2000
  del c.sample
  c.reproduce = ml_collections.ConfigDict(dict(
      family="synthetic tasks", paper="Nanda et al. 2023, grokking", source="Figure 1 (p = 113, 30% train)",
      metric="eval.accuracy", metric_name="test accuracy", published=1.0, target=0.99, goal="max",
      hardware="2 CPU cores", runtime="about 1 hour",
      smoke=("train.steps=20", "train.eval_every=10"), quick=(), quick_target=0.99))  # no shorter run groks
  return c


def first_step(records, split: str, threshold: float):
  return next((r["step"] for r in records if r["split"] == split and r["accuracy"] >= threshold), None)


def analyze(config, workdir, results) -> dict:
  """The steps at which train, then test, accuracy first reach 99%: grokking is test lagging far behind."""
  records = read_metrics(workdir)
  train, test = first_step(records, "train", 0.99), first_step(records, "eval", 0.99)
  return {"train_99_step": train, "test_99_step": test}
