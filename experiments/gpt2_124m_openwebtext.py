"""GPT-2 124M on OpenWebText, nanoGPT's reproduction (Karpathy, karpathy/nanoGPT, config/train_gpt2.py; the model:
Radford et al. 2019): 12 layers, 12 heads, width 768, context 1024, GPT-2's byte-level BPE, 600k iterations of
491,520 tokens (12 rows x 1024 x 5 accumulation steps x 8 GPUs; ~295B tokens, ~33 passes over OpenWebText's ~9B).
Published (nanoGPT README): validation loss ~2.85 after 600k iterations, about 4 days on one 8 x A100 40GB node.
For reference, OpenAI's released GPT-2 124M weights score 3.12 on this validation data (train 3.11): WebText is not
OpenWebText, and fine-tuned on it they come down to ~2.85 too.

  pip install -e '.[gpu]' datasets        # TFDS's huggingface: datasets go through HF `datasets`, on every host
  jaxformer prepare huggingface:skylion007__openwebtext/plain_text   # once, with network: 8,013,769 documents, ~55 GB
  jaxformer reproduce gpt2_124m_openwebtext                  # one 8-GPU node: data parallel over its 8 GPUs
  # a TPU pod slice (e.g. v4-64, 32 chips): the same command on every host, a workdir every host sees
  gcloud compute tpus tpu-vm ssh $TPU --worker=all --command "cd jaxformer && jaxformer reproduce \\
    gpt2_124m_openwebtext --config.distributed.initialize=true --config.train.grad_accum=1 --workdir /mnt/shared/gpt2"

The GPT-2 vocabulary comes from data.tokenizer_path: a Hugging Face Hub name ("gpt2", downloaded once into the HF
cache) or, offline, a local tokenizer.json (`tokenizers.Tokenizer.from_pretrained("gpt2").save("tokenizer.json")`
where there is network). TFDS looks a `huggingface:` dataset up on the Hub even to read a prepared copy, so every host
needs network at start; the Hub moved OpenWebText to Skylion007/openwebtext (formerly `huggingface:openwebtext/...`).
Each accumulation micro-batch (train.batch_size / train.grad_accum = 96 rows) must split over the data-parallel
devices: 12 rows per GPU on 8 GPUs as nanoGPT; on 32 TPU chips grad_accum=1 gives 15 rows per chip.

Model and recipe: nanoGPT's GPT (pre-LN, learned positions, exact GELU, tied output, init std 0.02, no biases in the
linear layers: nanoGPT's train.py sets bias=False and train_gpt2.py keeps it), dropout 0, bfloat16 compute with
float32 parameters (nanoGPT's autocast); AdamW(0.9, 0.95) lr 6e-4, 2000 warmup steps, cosine decay to 6e-5 at step
600k, weight decay 0.1 on matrices (embeddings included, as nanoGPT), clipping 1.0. The output layer has 50304 rows,
GPT-2's 50257 rounded up to a multiple of 64 as nanoGPT does for speed (ids past 50256 never occur in the data;
--config.model.vocab_size=0 gives exactly 50257). Data: every document followed by <|endoftext|> (50256), nanoGPT's
prepare.py, streamed into full rows of 1024 (data.packing="stream"): no padding, attention crosses document
boundaries as in nanoGPT. Validation: the last 0.05% of the documents (train[99.95%:], 4,007 of 8,013,769: the
dataset has only a train split), evaluated every 1000 steps on its first 25 x 96 rows = 2,457,600 tokens, the token
count of nanoGPT's `estimate_loss` (200 batches of 12 windows).

Differences from nanoGPT: its validation documents are a random 0.05% (train_test_split, seed 2357), these the last
0.05% in the order TFDS stores them, and it averages random windows (new ones at every evaluation) where this reads
the same consecutive rows each time; its training batches are random windows of one token array, drawn with
replacement, where this reads the documents shuffled anew each epoch, each token a target once per epoch; its
LayerNorms have no bias (here they do); its residual projections start at std 0.02 / sqrt(2 n_layer). The tokens
are the same: HF `tokenizers` with GPT-2's tokenizer.json where nanoGPT uses tiktoken, "<|endoftext|>" written
inside a document being plain text in both.
Hardware/time: one 8-GPU node, days (not run here); smoke variant (a tiny model, seconds of training): --smoke, which
still reads the prepared dataset and the tokenizer (the tests run it on a small stand-in written to a temp folder).
"""
import ml_collections
from _common import base_config
from ml_collections import config_dict

from jaxformer.nn.config import TransformerConfig

TOKENS_PER_STEP = 12 * 1024 * 5 * 8  # nanoGPT: batch_size x block_size x gradient_accumulation_steps (5 x 8 GPUs)


def get_config():
  model = TransformerConfig.gpt2(vocab_size=50304, dropout_rate=0.0, activation="gelu", qkv_bias=False,
                                 out_bias=False, mlp_bias=False, dtype="bfloat16")
  c = base_config(model, "decoder_only")
  c.name = "gpt2_124m_openwebtext"
  c.data.update(dict(name="huggingface:skylion007__openwebtext/plain_text", task="lm", text_key="text",
                     train_split="train[:99.95%]", eval_split="train[99.95%:]", tokenizer="gpt2",
                     tokenizer_path="gpt2", packing="stream", seq_len=1024))
  c.data.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.train.update(dict(steps=600_000, batch_size=TOKENS_PER_STEP // 1024, grad_accum=5, log_every=10,
                      eval_every=1000, eval_batches=25, eval_batch_size=96))
  c.optim.update(dict(name="adamw", lr=6e-4, schedule="cosine", warmup_steps=2000, min_lr_ratio=0.1, b1=0.9,
                      b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))
  c.checkpoint.update(dict(every=1000, keep=2))
  c.sample.update(dict(prompt="\n", num_tokens=200, temperature=0.8, top_k=200))
  c.reproduce = ml_collections.ConfigDict(dict(
      family="language modelling", paper="Karpathy, nanoGPT (GPT-2 124M)",
      source="README, reproducing GPT-2 (124M) on OpenWebText", metric="eval.nll",
      metric_name="val loss (nats/token)", published=2.85, target=2.90, goal="min",
      hardware="8 x A100 40GB (one node) or a TPU pod slice", runtime="about 4 days on 8 x A100 (nanoGPT)",
      smoke=("train.steps=5", "train.batch_size=8", "train.grad_accum=1", "train.eval_every=0",
             "train.eval_batches=2", "train.eval_batch_size=8", "model.num_layers=2", "model.d_model=128",
             "model.num_heads=4", "model.mlp_dim=512", "model.max_len=128", "data.seq_len=128",
             "sample.num_tokens=20"),
      quick=(), quick_target=2.90))
  return c
