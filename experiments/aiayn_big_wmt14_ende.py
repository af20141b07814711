"""Attention Is All You Need (Vaswani et al. 2017), the big model on WMT 2014 English -> German.

Published: newstest2014 BLEU 28.4 (Table 2, big); newstest2013 dev PPL 4.33, BLEU 26.4 (Table 3, big
row). The paper trained 300k steps in 3.5 days on 8 P100 GPUs and averaged the last 20 checkpoints.

  jaxformer prepare wmt14_translate/de-en
  jaxformer train --config experiments/aiayn_big_wmt14_ende.py --workdir runs/aiayn_big --config.model.dtype=bfloat16
  jaxformer eval  --config experiments/aiayn_big_wmt14_ende.py --workdir runs/aiayn_big --split test

Everything else as `aiayn_base_wmt14_ende.py` (data, optimizer, schedule, decoding), with
d_model=1024, d_ff=4096, h=16, dropout 0.3 (EN-DE), 300k steps, the last 20 checkpoints averaged
(10-minute intervals in the paper; here every 600 steps).
"""
import ml_collections
from aiayn_base_wmt14_ende import get_config as base_config

from jaxformer.config import model_config_dict
from jaxformer.nn.config import TransformerConfig

PAPER = {"newstest2014_bleu": 28.4, "newstest2013_bleu": 26.4, "newstest2013_ppl": 4.33}


def get_config():
  c = base_config()
  c.name = "aiayn_big_wmt14_ende"
  c.paper = ml_collections.ConfigDict(PAPER)
  c.model = model_config_dict(TransformerConfig.aiayn_big(vocab_size=0, max_len=512))
  c.train.steps = 300_000
  c.train.average_last = 20
  c.train.average_every = 600
  return c
