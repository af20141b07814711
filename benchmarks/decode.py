"""Decoding speed: jaxformer `generate` (KV cache, one jitted loop) vs HF transformers `generate`.

  python benchmarks/decode.py [--threads 1] [--new-tokens 128] [--batches 1 8] [--beams 1 5]

The same GPT-2-small-sized weights (12 layers, width 768, 12 heads, vocab 50257, random,
written once to benchmarks/.cache/) run in both; prompt 16 tokens, no EOS, so every row
writes all new tokens. Both run pinned to the same CPU cores (the process's affinity is set to
the first --threads cores before JAX starts: XLA's thread flags alone do not stop it from using
every core) and torch.set_num_threads(--threads). jaxformer's first call compiles: its compile
time is reported apart from the steady-state time of a second call. tokens/s counts
generated tokens of the returned batch (batch x new tokens), the same for greedy and beam.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def parse():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--threads", type=int, default=1)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--prompt", type=int, default=16)
  p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  p.add_argument("--beams", type=int, nargs="+", default=[1, 5])
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--no-hf", action="store_true", help="jaxformer only")
  return p.parse_args()


def main():
  args = parse()
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))
  import jax
  import numpy as np
  import torch
  import transformers

  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from jaxformer.decode import generate
  from jaxformer.hub import load_pretrained

  torch.set_num_threads(args.threads)
  path = Path(__file__).parent / ".cache" / f"gpt2-random-{args.layers}l"
  if not (path / "config.json").is_file():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=args.layers, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
  hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
  lm = load_pretrained(path)
  print(f"GPT-2 {args.layers}x768 (random weights), prompt {args.prompt}, {args.new_tokens} new tokens, "
        f"{args.threads} thread(s); jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}\n")
  print("| batch | search | jaxformer tok/s | HF tok/s | speed-up | jaxformer compile s | same tokens |")
  print("|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for beams in args.beams:
    for batch in args.batches:
      prompt = rng.integers(0, 50257, size=(batch, args.prompt)).astype(np.int32)
      opts = dict(max_new_tokens=args.new_tokens, num_beams=beams, eos_token_id=None, pad_token_id=0)
      t0 = time.perf_counter()
      jax.block_until_ready(generate(lm.model, lm.params, prompt, **opts).sequences)
      first = time.perf_counter() - t0
      t0 = time.perf_counter()
      ours = np.asarray(jax.block_until_ready(generate(lm.model, lm.params, prompt, **opts).sequences))
      steady = time.perf_counter() - t0
      ours_tps = batch * args.new_tokens / steady
      row = f"| {batch} | {'greedy' if beams == 1 else f'beam {beams}'} | {ours_tps:.1f} |"
      if args.no_hf:
        print(f"{row} - | - | {first - steady:.1f} | - |", flush=True)
        continue
      with torch.no_grad():
        ids = torch.as_tensor(prompt, dtype=torch.long)
        kw = dict(max_new_tokens=args.new_tokens, num_beams=beams, do_sample=False, eos_token_id=None,
                  pad_token_id=0, attention_mask=torch.ones_like(ids))
        hf.generate(ids, **{**kw, "max_new_tokens": 4})  # warm-up
        t0 = time.perf_counter()
        theirs = hf.generate(ids, **kw).numpy()
        hf_s = time.perf_counter() - t0
      hf_tps = batch * args.new_tokens / hf_s
      same = ours.shape == theirs.shape and bool(np.all(ours == theirs))
      print(f"{row} {hf_tps:.1f} | {ours_tps / hf_tps:.2f}x | {first - steady:.1f} | {same} |", flush=True)


if __name__ == "__main__":
  main()
