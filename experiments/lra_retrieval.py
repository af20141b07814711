"""Long Range Arena, Retrieval (Tay et al. 2021, section 2.3): does one paper of the ACL Anthology Network (AAN)
cite the other? Two documents of up to 4000 bytes each, encoded separately by one encoder (a dual encoder: no
attention across the pair), their pooled encodings u, v combined as [u, v, u*v, u-v] and classified by an MLP
(`model_kind="dual_encoder_classifier"`, jaxformer/models/transformer.py); binary classification.

  wget https://storage.googleapis.com/long-range-arena/lra_release.gz && tar xzf lra_release.gz   # once
  jaxformer train --config experiments/lra_retrieval.py --config.data.data_dir=lra_release --workdir runs/lra_ret
  jaxformer train --config experiments/lra_retrieval.py --config.data.data_dir=lra_release \
    --config.model.attention.kind=bigbird --workdir runs/lra_ret_bigbird
  jaxformer eval  --config experiments/lra_retrieval.py --config.data.data_dir=lra_release --workdir runs/lra_ret \
    --split test

Any `model.attention.kind` runs with the same config (see experiments/lra_listops.py).
Data: the release's lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv (label, id1, id2, text1, text2), read
directly (jaxformer/data/lra.py); bytes, each document cut to 4000.
Model and recipe: the release's lra_benchmarks/matching/configs/base_match_config.py: 4 layers, width 128, 4 heads,
MLP 512, dropout 0.1, batch 32, 5000 steps, Adam(0.9, 0.98, 1e-9) with weight decay 0.1, lr 0.05 with linear warmup
(8000 steps: longer than the run, as released) and rsqrt decay. The pair head is the paper's [u, v, u*v, u-v]
(the release's train.py leaves `interaction` unset, which concatenates only [u, v]); its MLP is the release's
(Dense(512), ReLU, Dense(256), ReLU, Dense(2)). Other differences: experiments/_lra.py.
Hardware/time: one GPU; ~7.5 TFLOP per step (both documents), 5000 steps: ~10-30 minutes on an A100 / H100
(estimated from the FLOPs, not yet measured here), plus evaluations of the validation pairs.
Expected: test accuracy near the paper's Table 1 (config.reference; Transformer 57.46, Local 53.39, Sparse Trans.
59.59, Longformer 56.89, Linformer 52.27, Reformer 53.40, Sinkhorn 53.83, Synthesizer 54.67, BigBird 59.29, Linear
Trans. 53.09, Performer 53.82).
Smoke variant (seconds on CPU; tests/test_lra.py writes tiny release-format files): the SMOKE below, i.e.
  --config.model.num_layers=1 --config.model.d_model=32 --config.model.num_heads=2 --config.model.mlp_dim=64
  --config.model.max_len=64 --config.data.max_len=64 --config.train.steps=2 --config.train.batch_size=8
  --config.train.eval_every=0 --config.train.eval_batches=1 --config.train.eval_batch_size=8
  --config.optim.lr=0.01
"""
from _lra import SMOKE as _SMOKE
from _lra import lra_config, rsqrt_optim
from ml_collections import config_dict

SMOKE = _SMOKE + ("optim.lr=0.01", "model.max_len=64", "data.max_len=64")


def get_config():
  c = lra_config("lra_retrieval", "retrieval", d_model=128, num_heads=4, mlp_dim=512, num_layers=4, max_len=4000,
                 dropout_rate=0.1, model_kind="dual_encoder_classifier")
  c.data.name = "lra_retrieval"
  c.data.data_dir = config_dict.placeholder(str)  # the extracted lra_release folder
  c.data.max_len = 4000  # bytes per document
  c.train.steps = 5000
  c.train.batch_size = 32
  c.train.eval_every = 500
  rsqrt_optim(c, base_lr=0.05, warmup_steps=8000, weight_decay=0.1)
  return c
