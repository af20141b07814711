"""Evaluation: loss / perplexity / accuracy over batches, greedy exact match for synthetic seq2seq
tasks, and translation BLEU (beam search, detokenized output, sacreBLEU).

`evaluate_run(config, workdir, split)` is `jaxformer eval`: it loads a finished run and reports what
fits the task: BLEU (+ loss) for translation, perplexity for language models, accuracy for classifiers.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.decode import GenerationConfig, generate

log = logging.getLogger("jaxformer.eval")


def evaluate(eval_step, params, batches) -> dict[str, float]:
  """Token-weighted loss, perplexity and accuracy (classification: per example) over `batches`, and for
  token-level tasks with one sequence per row (not packed) `sequence_accuracy`: the fraction of rows whose every
  scored target is the model's argmax.
  When a row is a prompt followed by its scored answer, that equals greedy decoding's exact match (each
  answer token is then predicted from a correct prefix)."""
  sums = None
  for batch in batches:
    out = eval_step(params, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  if sums is None:
    raise ValueError("no evaluation batches: the evaluation split is empty")
  sums = jax.device_get(sums)
  w = max(float(sums["weight"]), 1.0)
  nll = float(sums["nll"]) / w
  out = {"nll": nll, "perplexity": math.exp(min(nll, 50.0)), "accuracy": float(sums["correct"]) / w}
  if "rows" in sums:  # LM / seq2seq: the fraction of rows with every scored token right; for a prompt -> answer
    out["sequence_accuracy"] = float(sums["rows_correct"]) / max(float(sums["rows"]), 1.0)  # row, greedy exact match
  return out


def exact_match(model, params, ds, batches) -> float:
  """Fraction of eval examples whose greedy decoding equals the target exactly (incl. EOS)."""
  hits = total = 0
  for batch in batches:
    config = GenerationConfig(max_length=ds.target_len + 1, decoder_start_token_id=ds.bos_id,
                              eos_token_id=ds.eos_id, pad_token_id=0)
    pred = generate(model, params, batch["inputs"], config).sequences[:, 1:]  # drop the start token
    hits += int(np.sum(np.all(np.asarray(pred) == batch["targets"], axis=1)))
    total += len(batch["targets"])
  return hits / max(total, 1)


def translate(model, params, tokenizer, sources: list[str], *, num_beams: int = 4, length_penalty: float = 0.6,
              max_extra_len: int = 50, max_input_len: int = 256, batch_size: int = 64) -> list[str]:
  """Beam-search translations of `sources` (the paper: beam 4, length penalty 0.6, output length at
  most input length + 50, applied per sentence after a search whose limit is the batch's padded
  width + 50), detokenized. Sources are sorted by length and padded to multiples of 16 so similar
  lengths share one compiled shape. The length penalty is HF's len^alpha (the paper's GNMT penalty
  ((5+len)/6)^alpha ranks hypotheses slightly differently)."""
  ids = [tokenizer.encode(s)[:max_input_len - 1] + [tokenizer.eos_id] for s in sources]
  order = np.argsort([len(x) for x in ids], kind="stable")
  out: list[str | None] = [None] * len(ids)
  for first in range(0, len(ids), batch_size):
    chunk = order[first:first + batch_size]
    width = -(-max(len(ids[i]) for i in chunk) // 16) * 16
    inputs = np.zeros((batch_size, width), np.int32)  # full batches: one shape per width
    inputs[:, 0] = tokenizer.eos_id  # filler rows are a lone EOS
    for row, i in enumerate(chunk):
      inputs[row, :len(ids[i])] = ids[i]
    config = GenerationConfig(max_length=width + max_extra_len + 1, num_beams=num_beams,
                              length_penalty=length_penalty, early_stopping=True,
                              decoder_start_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=0)
    seqs = np.asarray(generate(model, params, inputs, config).sequences)[:, 1:]
    for row, i in enumerate(chunk):
      toks = seqs[row].tolist()[:len(ids[i]) + max_extra_len]  # each sentence's own limit
      if tokenizer.eos_id in toks:
        toks = toks[:toks.index(tokenizer.eos_id)]
      out[i] = tokenizer.decode(toks)
  return out


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
  """Corpus BLEU of detokenized text with sacreBLEU's defaults (13a tokenization, mixed case):
  (score, signature)."""
  from sacrebleu.metrics import BLEU

  metric = BLEU()
  return metric.corpus_score(hypotheses, [references]).score, str(metric.get_signature())


def translation_bleu(model, params, ds, eval_cfg, split: str) -> dict:
  """BLEU of the model's beam-search translations of a split of a translation dataset."""
  start = time.time()
  sources, refs = ds.texts(split, eval_cfg.bleu_examples)
  hyps = translate(model, params, ds.tokenizer, sources, num_beams=eval_cfg.num_beams,
                   length_penalty=eval_cfg.length_penalty, max_extra_len=eval_cfg.max_extra_len,
                   max_input_len=ds.data.max_len, batch_size=eval_cfg.batch_size)
  score, signature = bleu(hyps, refs)
  log.info("BLEU %.2f on %d sentences of %s in %.0f s (%s)", score, len(refs), split, time.time() - start, signature)
  return {"bleu": score, "bleu_signature": signature, "bleu_sentences": len(refs), "bleu_split": split,
          "examples": [{"source": s, "reference": r, "output": h} for s, r, h in list(zip(sources, refs, hyps))[:5]]}


def evaluate_run(config, workdir, split: str | None = None) -> dict:
  """`jaxformer eval`: load the run in `workdir` and evaluate it on `split` (default: the config's
  evaluation split). Writes eval_<split>.json into the workdir and returns the same dict."""
  from jaxformer.data import build_dataset
  from jaxformer.train.checkpoint import load_run
  from jaxformer.train.step import make_eval_step

  workdir = Path(workdir)
  model, params, tokenizer = load_run(workdir)
  ds = build_dataset(config.data, config.seed, cache_dir=workdir, tokenizer=tokenizer)
  as_dict = lambda t: None if t is None else t.to_dict()  # None: a model that reads no tokens
  if as_dict(ds.tokenizer) != as_dict(tokenizer):
    raise ValueError(f"the run in {workdir} was trained with another tokenizer than the config's data gives; "
                     "evaluate with the config it was trained with")
  has_splits = hasattr(ds, "source")  # TFDS datasets; generated tasks and text corpora have one held-out set
  if split and not has_splits:
    raise ValueError(f"data.name={config.data.name!r} has no named splits (one held-out set); drop --split")
  split = split or (ds.data.eval_split if has_splits else "validation")
  model_kind = {"lm": "decoder_only", "seq2seq": "encoder_decoder", "classification": "encoder_classifier",
                "pair_classification": "dual_encoder_classifier", "regression": "in_context_regression"}[ds.kind]
  eval_step = jax.jit(make_eval_step(model, model_kind))
  tc = config.train
  batches = (ds.eval_batches(tc.eval_batches, tc.eval_batch_size, split=split) if has_splits
             else ds.eval_batches(tc.eval_batches, tc.eval_batch_size))
  results = {"split": split, "eval": evaluate(eval_step, params, batches)}
  if ds.kind == "seq2seq" and hasattr(ds, "texts"):
    results |= translation_bleu(model, params, ds, config.eval, split)
  elif ds.kind == "seq2seq":
    results["exact_match"] = exact_match(model, params, ds, batches)
  (workdir / f"eval_{split}.json").write_text(json.dumps(results, indent=1))
  return results
