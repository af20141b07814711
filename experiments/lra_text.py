"""Long Range Arena, Text (Tay et al. 2021, section 2.2): IMDb movie-review sentiment read as UTF-8 bytes, 4K
bytes per review (longer ones cut, shorter ones padded); binary classification with a bidirectional encoder.

  jaxformer prepare imdb_reviews                     # once (downloads; TFDS)
  jaxformer train --config experiments/lra_text.py --workdir runs/lra_text
  jaxformer train --config experiments/lra_text.py --config.model.attention.kind=linear --workdir runs/lra_text_lin
  jaxformer eval  --config experiments/lra_text.py --workdir runs/lra_text --split test

Any `model.attention.kind` runs with the same config (see experiments/lra_listops.py).
Data: TFDS imdb_reviews, 25k training reviews (shuffled each epoch); the evaluation split is the 25k test reviews,
as LRA (IMDb has no validation split). Byte vocabulary: 256 bytes + padding.
Model and recipe: the release's lra_benchmarks/text_classification/configs/base_tc_config.py: 4 layers, width 256,
4 heads, MLP 1024, dropout 0.1, batch 32, 20000 steps, Adam(0.9, 0.98, 1e-9) with weight decay 0.1, lr 0.05 with
linear warmup (8000 steps) and rsqrt decay; length 4000 bytes, the paper's 4K (the release's config defaults to
max_length 1000, set at run time). Differences: experiments/_lra.py.
Hardware/time: one GPU; ~9 TFLOP per step, 20k steps: ~30-90 minutes on an A100 / H100 (estimated from the FLOPs,
not yet measured here), plus 20 evaluations of the 25k test reviews.
Expected: test accuracy near the paper's Table 1 (config.reference; Transformer 64.27, Local 52.98, Sparse Trans.
63.58, Longformer 62.85, Linformer 53.94, Reformer 56.10, Sinkhorn 61.20, Synthesizer 61.68, BigBird 64.02, Linear
Trans. 65.90, Performer 65.40).
Smoke variant (seconds on CPU; needs imdb_reviews prepared, or tfds.testing.mock_data as tests/test_lra.py): the
SMOKE below, i.e. --config.model.num_layers=1 --config.model.d_model=32 --config.model.num_heads=2
  --config.model.mlp_dim=64 --config.model.max_len=128 --config.data.max_len=128 --config.train.steps=2
  --config.train.batch_size=8 --config.train.eval_every=0 --config.train.eval_batches=1
  --config.train.eval_batch_size=8 --config.optim.lr=0.01
"""
from _lra import SMOKE as _SMOKE
from _lra import lra_config, rsqrt_optim
from ml_collections import config_dict

SMOKE = _SMOKE + ("optim.lr=0.01", "model.max_len=128", "data.max_len=128")


def get_config():
  c = lra_config("lra_text", "text", d_model=256, num_heads=4, mlp_dim=1024, num_layers=4, max_len=4000,
                 dropout_rate=0.1)
  c.data.name = "imdb_reviews"
  c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.data.max_len = 4000
  c.train.steps = 20_000
  c.train.batch_size = 32
  c.train.eval_every = 1000
  rsqrt_optim(c, base_lr=0.05, warmup_steps=8000, weight_decay=0.1)
  return c
