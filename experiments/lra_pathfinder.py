"""Long Range Arena, Pathfinder (Tay et al. 2021, section 2.5): are the two dots of a 32x32 image joined by a dashed
path, among distractor paths? The image is a sequence of 1024 8-bit gray pixels; binary classification with a
bidirectional encoder.

  wget https://storage.googleapis.com/long-range-arena/lra_release.gz && tar xzf lra_release.gz   # once
  jaxformer train --config experiments/lra_pathfinder.py --config.data.data_dir=lra_release --workdir runs/lra_pf
  jaxformer train --config experiments/lra_pathfinder.py --config.data.data_dir=lra_release \
    --config.model.attention.kind=linformer --workdir runs/lra_pf_linformer
  jaxformer eval  --config experiments/lra_pathfinder.py --config.data.data_dir=lra_release --workdir runs/lra_pf \
    --split test

Any `model.attention.kind` runs with the same config (see experiments/lra_listops.py).
Data: the release's lra_release/pathfinder32/curv_contour_length_14 (the release's `pathfinder32_hard` task; also
data.difficulty=easy / intermediate), 200k PNGs with metadata, read directly (jaxformer/data/lra.py): 80 / 10 /
10 % train / validation / test in metadata order (160k training images, as the release's TRAIN_EXAMPLES). Pixel
value p is token p + 1 (black pixels are real tokens).
Model and recipe: the release's lra_benchmarks/image/configs/pathfinder32/transformer_base.py over
base_pathfinder32_config.py: 1 layer, width 128, 4 heads of 16 (qkv_dim 64), MLP 128, dropout 0.2, sinusoidal
positions, mean pooling, batch 512, 200 epochs (62400 steps), Adam(0.9, 0.98, 1e-9), no weight decay, lr 1e-3 with
one epoch (312 steps) of linear warmup then cosine decay. Differences: experiments/_lra.py (the release also has
attention dropout 0.1 here).
Hardware/time: one GPU; ~0.6 TFLOP per step, so decoding 512 PNGs per step on the host bounds it: roughly 30-60
minutes (estimated, not yet measured here).
Expected: test accuracy near the paper's Table 1 (config.reference; Transformer 71.40, Local 66.63, Sparse Trans.
71.71, Longformer 69.71, Linformer 76.34, Reformer 68.50, Sinkhorn 67.45, Synthesizer 69.45, BigBird 74.87, Linear
Trans. 75.30, Performer 77.05).
Smoke variant (seconds on CPU; tests/test_lra.py writes tiny release-format files): the SMOKE below, i.e.
  --config.model.num_layers=1 --config.model.d_model=32 --config.model.num_heads=2 --config.model.mlp_dim=64
  --config.train.steps=2 --config.train.batch_size=8 --config.train.eval_every=0 --config.train.eval_batches=1
  --config.train.eval_batch_size=8
"""
from _lra import SMOKE as _SMOKE
from _lra import cosine_optim, lra_config
from ml_collections import config_dict

SMOKE = _SMOKE


def get_config():
  c = lra_config("lra_pathfinder", "pathfinder", d_model=128, num_heads=4, head_dim=16, mlp_dim=128, num_layers=1,
                 max_len=1024, dropout_rate=0.2)
  c.data.name = "lra_pathfinder"
  c.data.data_dir = config_dict.placeholder(str)  # the extracted lra_release folder
  c.data.resolution = 32
  c.data.difficulty = "hard"  # curv_contour_length_14
  c.train.steps = 62_400  # 200 epochs of 160000 // 512 = 312 steps
  c.train.batch_size = 512
  c.train.eval_every = 3120  # every 10 epochs
  c.train.eval_batch_size = 512
  cosine_optim(c, lr=1e-3, warmup_steps=312)
  return c
