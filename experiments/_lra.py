"""Shared by the Long Range Arena configs (experiments/lra_*.py): the paper's Table 1, the release's model and
optimizer recipe, and the overrides of the smoke variants.

Tay et al. 2021, "Long Range Arena: A Benchmark for Efficient Transformers" (ICLR). The model sizes, steps, batch
sizes and optimizer settings are the release's base configs (google-research/long-range-arena,
lra_benchmarks/<task>/configs/base_*_config.py and the transformer_base.py that extends it).
"""
import ml_collections
from _common import base_config

from jaxformer.nn.config import TransformerConfig

# Table 1 of the paper: test accuracy (%) per task, rows in the paper's order.
ROWS = ("transformer", "local", "sparse_trans", "longformer", "linformer", "reformer", "sinkhorn", "synthesizer",
        "bigbird", "linear_trans", "performer")
TABLE1 = {
    "listops": (36.37, 15.82, 17.07, 35.63, 35.70, 37.27, 33.67, 36.99, 36.05, 16.13, 18.01),
    "text": (64.27, 52.98, 63.58, 62.85, 53.94, 56.10, 61.20, 61.68, 64.02, 65.90, 65.40),
    "retrieval": (57.46, 53.39, 59.59, 56.89, 52.27, 53.40, 53.83, 54.67, 59.29, 53.09, 53.82),
    "image": (42.44, 41.46, 44.24, 42.22, 38.56, 38.07, 41.23, 41.61, 40.83, 42.34, 42.77),
    "pathfinder": (71.40, 66.63, 71.71, 69.71, 76.34, 68.50, 67.45, 69.45, 74.87, 75.30, 77.05),
}
# model.attention.kind -> the Table 1 row of the same mechanism. sinks, differential and sigmoid postdate LRA;
# Sparse Transformer, Longformer and Sinkhorn have no kind here.
KIND_ROWS = {"softmax": "transformer", "local": "local", "linformer": "linformer", "lsh": "reformer",
             "synthesizer": "synthesizer", "bigbird": "bigbird", "linear": "linear_trans", "performer": "performer"}

# Smoke variant (seconds on CPU): a one-layer width-32 model, 2 steps of 8 rows, one small evaluation; each
# config adds its data overrides (shorter sequences) in its own SMOKE.
SMOKE = ("model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.mlp_dim=64", "train.steps=2",
         "train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.eval_batches=1",
         "train.eval_batch_size=8", "train.tensorboard=false", "optim.warmup_steps=1", "checkpoint.async_save=false")


def lra_config(name: str, task: str, *, d_model: int, num_heads: int, mlp_dim: int, num_layers: int, max_len: int,
               dropout_rate: float, head_dim: int | None = None, position: str = "sinusoidal",
               model_kind: str = "encoder_classifier") -> ml_collections.ConfigDict:
  """The release's encoder (lra_benchmarks/models/transformer/transformer.py): pre-LN blocks, GELU (tanh) MLP, no
  q/k/v/output biases, LayerNorm eps 1e-6, sinusoidal positions unless `position` says otherwise.

  Differences, all to let every model.attention.kind run with the same config: no attention dropout (the
  release: 0.1, Image 0.2; here only the softmax kinds could take it, and it would force the slow reference
  kernel); pooling is the mean over the real tokens (the release: a learned CLS token for ListOps, Text and
  Image, the first token for Retrieval, the mean for Pathfinder) and the single-encoder head is linear (the
  release: Dense(mlp_dim), ReLU, Dense); model.max_len = the task length (Linformer and Synthesizer need it)."""
  model = TransformerConfig(vocab_size=0, d_model=d_model, num_heads=num_heads, head_dim=head_dim, mlp_dim=mlp_dim,
                            num_layers=num_layers, max_len=max_len, position=position, norm="layernorm",
                            norm_eps=1e-6, pre_norm=True, activation="gelu_tanh", qkv_bias=False, out_bias=False,
                            dropout_rate=dropout_rate, attention_dropout_rate=0.0, pad_id=0, pooling="mean")
  c = base_config(model, model_kind)
  c.name = name
  c.reference = ml_collections.ConfigDict(dict(zip(ROWS, TABLE1[task])))  # Table 1, test accuracy (%)
  c.train.log_every = 100
  c.train.eval_batches = 0  # the whole evaluation split
  c.train.eval_batch_size = 64
  return c


def rsqrt_optim(c: ml_collections.ConfigDict, base_lr: float, warmup_steps: int, weight_decay: float) -> None:
  """The release's ListOps / Text / Retrieval optimizer: Adam(0.9, 0.98, 1e-9) with decoupled weight decay, lr =
  base_lr · min(1, step / warmup) / sqrt(max(step, warmup)) ("constant * linear_warmup * rsqrt_decay"). Our
  "rsqrt" schedule is optim.lr · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), the same curve when
  optim.lr = base_lr · sqrt(d_model): change both together. (Weight decay skips biases and norm scales here; the
  release decays every parameter.)"""
  c.optim.update(dict(name="adamw", schedule="rsqrt", lr=base_lr * c.model.d_model ** 0.5, warmup_steps=warmup_steps,
                      b1=0.9, b2=0.98, eps=1e-9, weight_decay=weight_decay, clip_norm=0.0, label_smoothing=0.0))


def cosine_optim(c: ml_collections.ConfigDict, lr: float, warmup_steps: int) -> None:
  """The release's Image / Pathfinder optimizer: Adam(0.9, 0.98, 1e-9), no weight decay, no clipping, linear warmup
  to lr for one epoch, then cosine decay to 0 ("constant * linear_warmup * cosine_decay")."""
  c.optim.update(dict(name="adam", schedule="cosine", lr=lr, warmup_steps=warmup_steps, min_lr_ratio=0.0, b1=0.9,
                      b2=0.98, eps=1e-9, weight_decay=0.0, clip_norm=0.0, label_smoothing=0.0))
