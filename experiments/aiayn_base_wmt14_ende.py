"""Attention Is All You Need (Vaswani et al. 2017), the base model on WMT 2014 English -> German.

Published: newstest2014 BLEU 27.3 (Table 2, base; tokenized BLEU with compound splitting; sacreBLEU on
detokenized output, what `jaxformer eval` prints, is typically ~1 lower); newstest2013 dev PPL 4.92,
BLEU 25.8 (Table 3, base row). The paper trained 100k steps in 12 hours on 8 P100 GPUs.

Prepare the data once (downloads ~1.4 GB and converts to array_record; needs network):
  jaxformer prepare wmt14_translate/de-en --data-dir ~/tensorflow_datasets
Train and evaluate (one GPU; bfloat16 compute):
  jaxformer train --config experiments/aiayn_base_wmt14_ende.py --workdir runs/aiayn_base --config.model.dtype=bfloat16
  jaxformer eval  --config experiments/aiayn_base_wmt14_ende.py --workdir runs/aiayn_base --split test
The paper's batch (~25k source + ~25k target tokens) on fewer devices: keep data.tokens_per_batch and
split it with --config.train.grad_accum=K --config.data.batch_multiple=K. German -> English:
--config.data.source_lang=de --config.data.target_lang=en.

The recipe, as in the paper (section 5, Table 3):
  model     N=6, d_model=512, d_ff=2048, h=8, post-LN, sinusoidal positions, shared embeddings x sqrt(d)
  data      shared BPE vocabulary of ~37000 pieces (SentencePiece, trained on 10M characters of both
            languages, cached in the workdir); sentence pairs batched by length: ~25000 tokens per side
  training  Adam(0.9, 0.98, 1e-9), lr = d^-0.5 min(step^-0.5, step 4000^-1.5), dropout 0.1 (sub-layer
            outputs and embedding sums, as the paper; no attention dropout), label smoothing 0.1, 100k steps
  averaging the last 5 checkpoints written at 10-minute intervals (here: every 1500 steps)
  decoding  beam 4, length penalty alpha 0.6 (HF's len^alpha, not GNMT's ((5+len)/6)^alpha), output
            length <= input + 50, stopping early
Smoke variant (mocked or tiny data): --config.train.steps=20 --config.data.tokens_per_batch=2000
"""
import ml_collections
from _common import aiayn_optim, base_config
from ml_collections import config_dict

from jaxformer.nn.config import TransformerConfig

PAPER = {"newstest2014_bleu": 27.3, "newstest2013_bleu": 25.8, "newstest2013_ppl": 4.92}


def get_config():
  model = TransformerConfig.aiayn_base(vocab_size=0, max_len=512)
  c = base_config(model, "encoder_decoder")
  c.name = "aiayn_base_wmt14_ende"
  c.paper = ml_collections.ConfigDict(PAPER)
  c.data.name = "wmt14_translate/de-en"
  c.data.source_lang = "en"
  c.data.target_lang = "de"
  c.data.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.vocab_size = 37000
  c.data.spm_max_chars = 10_000_000
  c.data.max_len = 256
  c.data.batching = "bucket"
  c.data.tokens_per_batch = 25_000
  c.data.batch_multiple = 8
  c.data.eval_split = "validation"  # newstest2013 (split "test" is newstest2014)
  c.train.steps = 100_000
  c.train.log_every = 100
  c.train.eval_every = 5000
  c.train.eval_batches = 0
  c.train.eval_batch_size = 128
  c.train.average_last = 5
  c.train.average_every = 1500
  aiayn_optim(c, warmup_steps=4000)
  return c
