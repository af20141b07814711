"""H3's associative recall (Fu et al. 2023, "Hungry Hungry Hippos", Table 1 / section 3.1; the safari synthetics).

  jaxformer reproduce h3_associative_recall            # 1-3 min on 2 CPU cores
  jaxformer reproduce h3_associative_recall --quick    # the shortened run CI checks (>= 0.9)

Key-value pairs, then "=>" and a key: predict its value (`jaxformer.data.AssociativeRecall`, safari's
`generate_assoc_recall`: vocabulary 20, 40 context tokens, keys drawn with replacement, one random map per row).
As safari, training scores every next token (a repeated key's value is a recall too); evaluation scores only the
answer. Published: attention solves it (H3 Table 1: 100% for attention). Target here: >= 97% accuracy on 4096
held-out rows.
Model: 2-layer decoder, width 32 (2 heads of 16), MLP 128, learned positions, pre-LN, GELU, no dropout, fan-in
initialisation (with GPT-2's std 0.02 this width sits on its loss plateau for thousands of steps).
Recipe: AdamW(0.9, 0.98) lr 2e-3, 200 warmup steps, cosine decay, weight decay 0.1, batch 64, 4000 steps of fresh
rows. Safari's transformer baseline: 1 head, dropout 0.1 on embeddings and attention, 5000 fixed training rows for
400 epochs of batch 32 at lr 5e-4. The accuracy jumps from ~0.3 to ~0.96 between steps 1000 and 2000 (induction
heads forming).
Hardware/time: 2 CPU cores, 1-3 minutes. Smoke variant: --smoke (seconds); quick: 3000 steps, >= 0.9.
"""
import ml_collections
from _common import base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig(vocab_size=0, d_model=32, num_heads=2, mlp_dim=128, num_layers=2, max_len=42,
                            position="learned", norm="layernorm", pre_norm=True, activation="gelu", dropout_rate=0.0,
                            pad_id=0)  # fan-in init: GPT-2's std 0.02 leaves a width-32 model on a long plateau
  c = base_config(model, "decoder_only")
  c.name = "h3_associative_recall"
  c.data.name = "associative_recall"
  c.data.vocab_size = 20
  c.data.input_seq_len = 40
  c.data.train_all_tokens = True  # safari's loss: every next token (evaluation: the answer only)
  c.train.update(dict(steps=4000, batch_size=64, log_every=100, eval_every=500, eval_batches=16,
                      eval_batch_size=256, tensorboard=False))
  c.optim.update(dict(name="adamw", lr=2e-3, schedule="cosine", warmup_steps=200, b1=0.9, b2=0.98,
                      weight_decay=0.1, clip_norm=1.0))
  c.checkpoint.every = 0
  del c.sample
  c.reproduce = ml_collections.ConfigDict(dict(
      family="synthetic tasks", paper="Fu et al. 2023, H3", source="Table 1, associative recall (attention)",
      metric="eval.accuracy", metric_name="test accuracy", published=1.0, target=0.97, goal="max",
      hardware="2 CPU cores", runtime="1-3 minutes",
      smoke=("train.steps=20", "train.eval_every=0", "train.eval_batches=1"),
      quick=("train.steps=3000",), quick_target=0.9))
  return c
