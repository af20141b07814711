"""The CPU-scale attention comparison: every `model.attention.kind` on MQAR and ListOps with the same budget.

  jaxformer compare --out runs/compare --report docs/attention_comparison   # ~2 hours on 2 CPU cores (55 runs)
  jaxformer compare --smoke --out /tmp/smoke                                # every kind, a tiny budget
  jaxformer compare --kinds softmax,linear --studies mqar      # a subset

MQAR (experiments/mqar.py; Arora et al. 2023): recall accuracy against model width. Zoology's result, expected
here: exact softmax attention solves it at small width; linear attention and Performer, whose state is a fixed
d x d matrix, degrade; the Synthesizer (weights independent of content) and a short local window cannot recall
what lies outside their reach. ListOps (experiments/lra_listops.py at reduced length): accuracy against the
sequence length. Kind settings are sized to the tasks (a local window and blocks shorter than the sequence), so
that no kind silently degenerates into full attention.
"""

SIZES = {"local": ["model.attention.window=16"],
         "bigbird": ["model.attention.block_size=8"], "lsh": ["model.attention.chunk_size=16"],
         "performer": ["model.attention.num_features=64"]}


def get_studies(smoke: bool = False):
  mqar_budget = ["train.steps=40", "train.eval_every=40", "train.batch_size=16"] if smoke else ["train.steps=1500"]
  listops_budget = ["train.steps=40", "train.eval_every=40"] if smoke else ["train.steps=1000", "train.eval_every=500"]
  return [
      dict(name="mqar", config="mqar", title="MQAR (64 tokens, 8 pairs): recall accuracy vs width",
           sweep=("model.d_model", [32, 64] if smoke else [16, 32, 64]), metric="accuracy",
           overrides=mqar_budget, kind_overrides=SIZES),
      dict(name="listops", config="lra_listops", title="ListOps: accuracy vs maximum length",
           sweep=(("data.max_length", "data.max_len", "model.max_len"), [64] if smoke else [128, 256]),
           metric="accuracy",
           overrides=["model.num_layers=2", "model.d_model=64", "model.num_heads=2", "model.mlp_dim=128",
                      "data.min_length=32", "train.batch_size=32",
                      "model.dropout_rate=0.0", "optim.schedule=cosine", "optim.lr=1e-3", "optim.warmup_steps=100",
                      *listops_budget], kind_overrides=SIZES),
  ]
