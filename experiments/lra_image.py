"""Long Range Arena, Image (Tay et al. 2021, section 2.4): CIFAR-10 as a sequence of 1024 8-bit gray pixels (32x32,
read row by row, no 2-D structure given to the model); 10-way classification with a bidirectional encoder.

  jaxformer prepare cifar10                          # once (downloads; TFDS)
  jaxformer train --config experiments/lra_image.py --workdir runs/lra_image
  jaxformer train --config experiments/lra_image.py --config.model.attention.kind=lsh --workdir runs/lra_image_lsh
  jaxformer eval  --config experiments/lra_image.py --workdir runs/lra_image --split test

Any `model.attention.kind` runs with the same config (see experiments/lra_listops.py).
Data: TFDS cifar10, LRA's split: train[:90%] (45k) for training, train[90%:] (5k) for validation, test (10k) with
`jaxformer eval --split test`. RGB -> gray as LRA's tf.image.rgb_to_grayscale; pixel value p is token p + 1, so
black pixels are real tokens (the release feeds raw values with 0 as padding, masking black pixels; see
jaxformer/data/lra.py).
Model and recipe: the release's lra_benchmarks/image/configs/cifar10/base_cifar10_config.py: 1 layer, width 32,
1 head, MLP 64, dropout 0.3, learned positions, batch 256, 200 epochs (35000 steps), Adam(0.9, 0.98, 1e-9), no
weight decay, lr 5e-4 with one epoch (175 steps) of linear warmup then cosine decay. Differences: experiments/_lra.py
(the release also has attention dropout 0.2 here).
Hardware/time: one GPU; a tiny model (~0.1 TFLOP per step), so the host pipeline bounds it: roughly 10-20 minutes
(estimated, not yet measured here).
Expected: test accuracy near the paper's Table 1 (config.reference; Transformer 42.44, Local 41.46, Sparse Trans.
44.24, Longformer 42.22, Linformer 38.56, Reformer 38.07, Sinkhorn 41.23, Synthesizer 41.61, BigBird 40.83, Linear
Trans. 42.34, Performer 42.77).
Smoke variant (seconds on CPU; needs cifar10 prepared, or tfds.testing.mock_data as tests/test_lra.py): the SMOKE
below, i.e. --config.model.num_layers=1 --config.model.d_model=32 --config.model.num_heads=2
  --config.model.mlp_dim=64 --config.train.steps=2 --config.train.batch_size=8 --config.train.eval_every=0
  --config.train.eval_batches=1 --config.train.eval_batch_size=8
"""
from _lra import SMOKE as _SMOKE
from _lra import cosine_optim, lra_config
from ml_collections import config_dict

SMOKE = _SMOKE


def get_config():
  c = lra_config("lra_image", "image", d_model=32, num_heads=1, mlp_dim=64, num_layers=1, max_len=1024,
                 dropout_rate=0.3, position="learned")
  c.data.name = "cifar10"
  c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.train.steps = 35_000  # 200 epochs of 45000 // 256 = 175 steps
  c.train.batch_size = 256
  c.train.eval_every = 1750  # every 10 epochs
  c.train.eval_batch_size = 256
  cosine_optim(c, lr=5e-4, warmup_steps=175)
  return c
