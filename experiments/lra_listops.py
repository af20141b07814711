"""Long Range Arena, ListOps (Tay et al. 2021, section 2.1): the value (0-9) of a nested MIN / MAX / MED / SUM_MOD
expression of up to 2000 tokens, read as one sequence by a bidirectional encoder; 10-way classification.

  jaxformer train --config experiments/lra_listops.py --workdir runs/lra_listops
  jaxformer train --config experiments/lra_listops.py --config.model.attention.kind=performer --workdir runs/p

Any `model.attention.kind` runs with the same config (softmax, local, sinks, differential, sigmoid, linear,
performer, linformer, bigbird, lsh, synthesizer); its settings are `model.attention.*` (jaxformer/nn/config.py).
Data: generated in-process by LRA's grammar (`jaxformer.data.listops`: depth <= 10, <= 10 arguments, 500 < length
< 2000 tokens), drawn afresh per (seed, step); the LRA release is a fixed 96k / 2k / 2k set drawn once by the same
generator (lra_release/listops-1000/basic_{train,val,test}.tsv), so the held-out accuracy here is on 2048 generated
expressions, not on the release's test file. Closing brackets are tokens, as in the fixed LRA pipeline (its first
version dropped every bracket: LRA issue #14).
Model and recipe: the release's lra_benchmarks/listops/configs/base_listops_config.py: 6 layers, width 512, 8 heads,
MLP 2048, dropout 0.1, max length 2000, batch 32, 5000 steps, Adam(0.9, 0.98, 1e-9) with weight decay 0.1, lr 0.05
with linear warmup (1000 steps) and rsqrt decay; see experiments/_lra.py for the few differences (pooling, head,
no attention dropout).
Hardware/time: one GPU; ~12 TFLOP per step (6·N·T plus attention, softmax), so ~10-30 minutes on an A100 / H100
(estimated from the FLOPs, not yet measured here; bf16: --config.model.dtype=bfloat16). Full size does not fit
a CPU (NOTES.md).
Expected: held-out accuracy near the paper's Table 1 (config.reference; Transformer 36.37, Local 15.82, Sparse
Trans. 17.07, Longformer 35.63, Linformer 35.70, Reformer 37.27, Sinkhorn 33.67, Synthesizer 36.99, BigBird 36.05,
Linear Trans. 16.13, Performer 18.01).
Smoke variant (seconds on CPU), the overrides in SMOKE:
  jaxformer train --config lra_listops --config.model.num_layers=1 --config.model.d_model=32 \
    --config.model.num_heads=2 --config.model.mlp_dim=64 --config.model.max_len=128 --config.train.steps=2 \
    --config.train.batch_size=8 --config.train.eval_every=0 --config.train.eval_batches=1 \
    --config.train.eval_batch_size=8 --config.data.max_len=128 --config.data.min_length=20 \
    --config.data.max_length=128 --config.data.max_depth=4 --config.data.max_args=4 --config.optim.lr=0.01
"""
from _lra import SMOKE as _SMOKE
from _lra import lra_config, rsqrt_optim

SMOKE = _SMOKE + ("optim.lr=0.01", "model.max_len=128", "data.max_len=128", "data.min_length=20",
                  "data.max_length=128", "data.max_depth=4", "data.max_args=4")


def get_config():
  c = lra_config("lra_listops", "listops", d_model=512, num_heads=8, mlp_dim=2048, num_layers=6, max_len=2000,
                 dropout_rate=0.1)
  c.data.name = "listops"
  c.data.max_len = 2000  # tokens per row (LRA: max_length 2000: nothing is cut)
  c.data.min_length = 500
  c.data.max_length = 2000
  c.data.max_depth = 10
  c.data.max_args = 10
  c.train.steps = 5000
  c.train.batch_size = 32
  c.train.eval_every = 500
  c.train.eval_batches = 32  # 32 x 64 = 2048 generated held-out expressions (LRA's test set: 2000)
  rsqrt_optim(c, base_lr=0.05, warmup_steps=1000, weight_decay=0.1)
  return c
