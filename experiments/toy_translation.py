"""Attention Is All You Need, the paper's recipe at toy scale: English -> a rule-based toy language.

  jaxformer train --config experiments/toy_translation.py --workdir runs/toy_translation
  jaxformer eval  --config experiments/toy_translation.py --workdir runs/toy_translation --split test

Data: 200k generated sentence pairs (`jaxformer.data.toy_translation`: word reordering, gender and
case agreement, verb-final subordinate clauses, an invented lexicon of the 221 base words plus 3000
coined ones drawn with Zipfian frequencies, so many words are rare as in real text), written once as
a TFDS dataset in the workdir and read back with `tfds.data_source` as WMT is; a shared SentencePiece
BPE vocabulary of 2000 pieces trained on both sides; packed batches of 32 rows x 64 tokens per side.
Model and recipe as the paper's base model, smaller: post-LN encoder-decoder, sinusoidal positions,
shared embeddings, 3+3 layers, width 128, 4 heads, d_ff 512, dropout 0.1, label smoothing 0.1,
Adam(0.9, 0.98, 1e-9) with the inverse-square-root schedule (warmup 400), the last 5 snapshots
(every 50 steps) averaged, beam search 4 with length penalty 0.6 on the 1000 validation sentences.
Hardware/time: 2 CPU cores, <= 10 minutes in all (data + training + BLEU).
Expected: sacreBLEU ~ (see README "Toy translation"); a test pins a shortened run.
Smoke variant: --config.train.steps=50 --config.data.train_size=5000 --config.eval.bleu_examples=64
"""
from _common import aiayn_optim, base_config

from jaxformer.nn.config import TransformerConfig


def get_config():
  model = TransformerConfig.aiayn_base(vocab_size=0, d_model=128, num_heads=4, mlp_dim=512, num_layers=3,
                                       dropout_rate=0.1, max_len=128)
  c = base_config(model, "encoder_decoder")
  c.name = "toy_translation"
  c.data.name = "toy_translation"
  c.data.train_size = 200_000
  c.data.eval_size = 1000
  c.data.extra_words = 3000
  c.data.vocab_size = 2000
  c.data.max_len = 64
  c.data.batching = "pack"
  c.train.steps = 1600
  c.train.batch_size = 32
  c.train.log_every = 100
  c.train.eval_every = 400
  c.train.eval_batches = 0  # the whole validation split
  c.train.eval_batch_size = 64
  c.train.average_last = 5
  c.train.average_every = 50
  aiayn_optim(c, warmup_steps=400)
  return c
