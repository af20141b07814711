"""Input-pipeline throughput: how many batches per second the host can build, against what a step needs.

  .venv/bin/python benchmarks/data.py [--workdir /tmp/jaxformer-data-bench]

On the toy translation corpus (generated once into the workdir, 200k pairs, SentencePiece 2000
pieces): raw reads from the array_record files, reads + tokenization, then packed and length-bucketed
batches, on one core (pinned) in the main thread, as the training loop runs them. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import time

import ml_collections
import numpy as np


def _rate(fn, seconds: float = 5.0) -> tuple[float, int]:
  """Calls of fn per second over about `seconds`; returns (rate, calls)."""
  fn()  # warm-up
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn()
    n += 1
  return n / (time.perf_counter() - start), n


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", default="/tmp/jaxformer-data-bench")
  args = parser.parse_args()
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

  from jaxformer.data import build_dataset, examples, train_batches

  cfg = ml_collections.ConfigDict(dict(name="toy_translation", train_size=200_000, eval_size=1000, extra_words=3000,
                                       vocab_size=2000, max_len=64, batching="pack", tokens_per_batch=2048))
  ds = build_dataset(cfg, 0, args.workdir)
  raw = examples(ds.train_source, seed=0)
  tok = examples(ds.train_source, ds.encode, seed=0)
  counter = {"i": 0}

  def read(ds_, n):
    def fn():
      if n == 1:
        ds_[counter["i"]]
      else:
        ds_.getitems(range(counter["i"], counter["i"] + n))
      counter["i"] += n
    return fn

  rows = []
  for n in (1, 256):
    rate, _ = _rate(read(raw, n))
    rows.append((f"read {n} pair(s) per call (array_record, shuffled)", f"{rate * n:,.0f} pairs/s", ""))
    rate, _ = _rate(read(tok, n))
    rows.append((f"read + SentencePiece-encode {n} pair(s) per call", f"{rate * n:,.0f} pairs/s",
                 "what the batchers do" if n > 1 else ""))
  for batching, bs in (("pack", 32), ("pack", 128), ("bucket", 0)):
    ds.data.batching = batching
    it = train_batches(ds, bs)
    shapes, tokens = [], []

    def step():
      b = next(it)
      shapes.append(b["inputs"].shape)
      tokens.append(int(np.sum(b["targets"] > 0)))

    rate, n = _rate(step)
    fill = np.sum(tokens) / np.sum([r * c for r, c in shapes])
    what = f"{bs} rows x 64" if batching == "pack" else "~2048 tokens/side, 11 buckets"
    rows.append((f"{batching} batches ({what})", f"{rate:,.1f} batches/s",
                 f"{rate * np.mean(tokens):,.0f} target tokens/s; {fill:.0%} of target slots real"))
  print("| stage | throughput | notes |\n|---|---|---|")
  for r in rows:
    print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
  main()
