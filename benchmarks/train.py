"""Training throughput: step time, tokens/s, model TFLOP/s and MFU of the jitted train step, as a markdown table.

How to run
  CPU (default, ~30 s a column, 1 pinned core): .venv/bin/python benchmarks/train.py [--attention auto,reference]
    a small GPT: 4 layers, d=256, 4 heads, T=256, batch 8, vocab 256, fp32.
  GPU:  python3 benchmarks/train.py --preset gpt2-124m --attention auto,pallas_gpu,blockwise
    GPT-2 small (12 layers, d=768, 12 heads, T=1024, vocab 50304), bf16 compute, fp32 params, batch 16.
  Checkpoint stall (off by default; add to either):  --checkpoint
    how long an async orbax save of the train state (params + Adam moments) blocks the loop; with
    --preset gpt2-124m that state is 124M params, 1.4 GiB.

One column per --attention backend ("auto" = the library's choice for this call; the row "attention
backend" names it). Each column: the model is built with that backend, the train step
(`make_train_step`, AdamW, `jax.jit(donate_argnums=0)`) is compiled (timed apart), run --warmup times,
then timed --steps times, each step alone (`jax.block_until_ready` on the new state), on random token
batches already on the device. Model FLOPs: `jaxformer.train.flops` (6·N_mm + attention, causal pairs
only); MFU = model FLOP/s / the device's dense peak (`flops.peak_flops`; on CPU the best of 5 fp32
2048³ matmuls on the same pinned cores, measured here). The PaLM row counts attention over all T² pairs,
the convention of nanoGPT's and PaLM's MFU figures.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {  # model fields + run defaults
    "small": dict(num_layers=4, d_model=256, num_heads=4, mlp_dim=1024, vocab_size=256, seq_len=256, batch_size=8,
                  dtype="float32", steps=15, threads=1),
    "gpt2-124m": dict(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, vocab_size=50304, seq_len=1024,
                      batch_size=16, dtype="bfloat16", steps=30, threads=None),
}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", choices=sorted(PRESETS), default="small")
  p.add_argument("--attention", default="auto",
                 help="comma-separated backends, one column each: auto (library's choice), blockwise, reference, "
                      "cudnn, pallas_gpu, pallas_tpu")
  p.add_argument("--batch-size", type=int)
  p.add_argument("--seq-len", type=int)
  p.add_argument("--layers", type=int)
  p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (params stay float32)")
  p.add_argument("--dropout", type=float, default=0.0)
  p.add_argument("--steps", type=int, help="timed steps (default: small 15, gpt2-124m 30)")
  p.add_argument("--warmup", type=int, default=2, help="steps run after compiling, before timing")
  p.add_argument("--threads", type=int, help="pin the process to this many cores (default: small 1, else all)")
  p.add_argument("--peak-tflops", type=float, help="the device's peak, when flops.peak_flops does not know it")
  p.add_argument("--checkpoint", action="store_true", help="also measure the async checkpoint save stall")
  p.add_argument("--checkpoint-dir", help="where to write it (default: a temporary directory, removed after)")
  return p.parse_args(argv)


def model_config(args, preset: dict):
  from jaxformer.nn.config import TransformerConfig

  seq_len = args.seq_len or preset["seq_len"]
  return TransformerConfig.gpt2(
      num_layers=args.layers or preset["num_layers"], d_model=preset["d_model"], num_heads=preset["num_heads"],
      mlp_dim=preset["mlp_dim"], vocab_size=preset["vocab_size"], max_len=seq_len, dropout_rate=args.dropout,
      dtype=args.dtype or preset["dtype"])


def optim_config():
  """experiments/_common.py base_config().optim's fields (a namespace: make_optimizer reads attributes; the GPU
  image has no ml_collections)."""
  return types.SimpleNamespace(name="adamw", lr=6e-4, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1,
                               b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0, label_smoothing=0.0)


def train_modules():
  """(flops, optim, step) of jaxformer.train. The package's __init__ also imports the training loop and with it the
  data stack (grain, array_record, tensorflow_datasets), which the GPU image lacks and this benchmark never uses:
  when that import fails, the three modules are loaded under a bare `jaxformer.train` package instead."""
  try:
    from jaxformer.train import flops, optim, step
  except ImportError as e:
    print(f"note: `import jaxformer.train` failed ({e}); loading flops, optim and step without the package's "
          "__init__", file=sys.stderr)
    for name in [n for n in sys.modules if n == "jaxformer.train" or n.startswith("jaxformer.train.")]:
      del sys.modules[name]
    package = types.ModuleType("jaxformer.train")
    package.__path__ = [str(ROOT / "jaxformer" / "train")]
    sys.modules["jaxformer.train"] = package
    flops, optim, step = (importlib.import_module(f"jaxformer.train.{name}") for name in ("flops", "optim", "step"))
    importlib.import_module("jaxformer.train.checkpoint")  # for --checkpoint
  return flops, optim, step


def chosen_backend(cfg, batch: int, seq_len: int, implementation):
  """The backend `jaxformer.attention` picks for the model's self-attention calls (raises if it cannot)."""
  import jax

  from jaxformer.attention import api

  request = api.Request(
      platform=jax.default_backend(), dtype=cfg.dtype, batch=batch, q_len=seq_len, kv_len=seq_len,
      num_heads=cfg.num_heads, num_kv_heads=cfg.kv_heads, head_dim=cfg.dim_per_head, value_head_dim=cfg.dim_per_head,
      causal=True, segments=cfg.pad_id is not None, bias=cfg.position == "alibi",
      dropout=cfg.attention_dropout_rate > 0)
  if implementation is not None and implementation in api._BACKENDS:
    reason = api._unsupported(api._BACKENDS[implementation], request)
    if reason:
      raise Unsupported(reason)
  return api._choose(request, implementation).name


class Unsupported(Exception):
  pass


def measured_cpu_peak(n: int = 2048, repeats: int = 5) -> float:
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(matmul(a, a))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def build(cfg, batch_size: int, seq_len: int, steps: int):
  """Model, train state, the compiled step (and its compile time) and a few random batches on the device."""
  import jax
  import numpy as np

  from jaxformer.models import build_model

  _, optim, step_lib = train_modules()
  model = build_model("decoder_only", cfg)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(4):
    tokens = rng.integers(0, cfg.vocab_size, size=(batch_size, seq_len + 1), dtype=np.int32)
    batches.append(jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}))
  tx, schedule = optim.make_optimizer(optim_config(), cfg.d_model, steps)
  params, _ = step_lib.init_params(model, "decoder_only", batches[0], seed=0)
  state = step_lib.create_train_state(params, tx, seed=0)
  t0 = time.perf_counter()
  step = jax.jit(step_lib.make_train_step(model, "decoder_only", tx, schedule), donate_argnums=0).lower(
      state, batches[0]).compile()
  return state, step, batches, time.perf_counter() - t0


def run_steps(state, step, batches, n: int):
  """n steps, each timed alone; returns (state, seconds per step)."""
  import jax

  times = []
  for i in range(n):
    t0 = time.perf_counter()
    state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  return state, times


def percentile(xs, q: float) -> float:
  import numpy as np

  return float(np.percentile(np.asarray(xs), q))


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint save stall. The one function that calls orbax directly: swap it for the project's checkpoint class.


def checkpoint_stall(state, step, batches, directory: str, normal_s: float, max_steps: int = 500) -> dict:
  """Saves `state` asynchronously with the training loop's own `Checkpoints` (orbax CheckpointManager)
  three times: while training on (the first save also pays one-time setup), then waiting at once with
  the loop idle (the writer alone), then while training on again. Per save: how long `save()` blocked
  the loop, when the files were complete (while training, known to within one step: the loop asks after
  each step), and the steps that ran meanwhile. Checks that the restored checkpoint equals the state
  that was saved (the steps after `save()` donate that state's buffers)."""
  import jax
  import numpy as np

  from jaxformer.train.checkpoint import Checkpoints, abstract_like

  saves = []
  ckpts = Checkpoints(directory, keep=1)
  for train_on in (True, False, True):
    saved_step = int(state.step)
    expected = jax.device_get(state)  # host copy of what is being saved, for the check below
    abstract = abstract_like(state, jax.tree.map(lambda x: x.sharding, state))
    t0 = time.perf_counter()
    ckpts.save(saved_step, state, {"batches": {"step": saved_step}})
    blocked = time.perf_counter() - t0
    during = []
    while train_on and ckpts.manager.is_saving_in_progress() and len(during) < max_steps:
      state, times = run_steps(state, step, batches, 1)
      during += times
    t1 = time.perf_counter()
    ckpts.wait()
    finished, waited = time.perf_counter() - t0, time.perf_counter() - t1
    restored = ckpts.restore(abstract, step=saved_step)[0]
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(restored)))
    size = sum(f.stat().st_size for f in Path(directory, str(saved_step)).rglob("*") if f.is_file())
    lost = blocked + waited + sum(during) - len(during) * normal_s if train_on else None
    saves.append(dict(train_on=train_on, blocked=blocked, finished=finished, waited=waited, during=during,
                      lost=lost, same=same, bytes=size))
    del expected, restored
    state, _ = run_steps(state, step, batches, 2)
  ckpts.close()
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  return dict(saves=saves, state_bytes=state_bytes, normal_s=normal_s, state=state)


def checkpoint_table(r: dict) -> list[str]:
  ms = lambda s: "–" if s is None else f"{s * 1e3:.1f} ms"  # noqa: E731
  saves = r["saves"]
  titles = ["save 1, training on (+ one-time setup)", "save 2, then wait (loop idle)", "save 3, training on"]
  lines = ["| | " + " | ".join(titles[:len(saves)]) + " |", "|---|" + "---|" * len(saves)]
  rows = {
      "`Checkpoints.save()` returned after (loop blocked)": [ms(s["blocked"]) for s in saves],
      "files complete after (from the save call)": [ms(s["finished"]) for s in saves],
      "steps run while writing": [str(len(s["during"])) if s["train_on"] else "–" for s in saves],
      "step time while writing, median / max": [
          f"{ms(statistics.median(s['during']))} / {ms(max(s['during']))}" if s["during"] else "–" for s in saves],
      "step time without a save, median": [ms(r["normal_s"])] * len(saves),
      "`wait_until_finished()` blocked": [ms(s["waited"]) for s in saves],
      "loop time lost (blocked + slower steps)": [ms(s["lost"]) for s in saves],
      "checkpoint on disk": [f"{s['bytes'] / 2**30:.2f} GiB" for s in saves],
      "restored == saved state": [str(s["same"]) for s in saves],
  }
  for name, cells in rows.items():
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


# ---------------------------------------------------------------------------------------------------------------------


def main(argv) -> None:
  started = time.perf_counter()
  args = parse_args(argv)
  preset = PRESETS[args.preset]
  threads = args.threads or preset["threads"]
  if threads:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))  # before JAX sizes its thread pools
  sys.path.insert(0, str(ROOT))
  import jax

  flops = train_modules()[0]

  command = "python benchmarks/train.py " + " ".join(argv)
  cfg = model_config(args, preset)
  B, T = args.batch_size or preset["batch_size"], args.seq_len or preset["seq_len"]
  steps = args.steps or preset["steps"]
  device = jax.devices()[0]
  platform = jax.default_backend()
  tokens = B * T
  per_token = flops.model_flops_per_token(cfg, "decoder_only", T, causal=True)
  per_token_palm = flops.model_flops_per_token(cfg, "decoder_only", T, causal=False)
  if args.peak_tflops:
    peak, peak_note = args.peak_tflops * 1e12, "--peak-tflops"
  elif (peak := flops.peak_flops(device, cfg.dtype)) is not None:
    peak_note = f"datasheet dense {cfg.dtype}"
  elif platform == "cpu":
    peak, peak_note = measured_cpu_peak(), "measured: best fp32 2048³ matmul on the pinned cores, before and after"
  else:
    peak, peak_note = None, "unknown (pass --peak-tflops)"

  backends = [name.strip() for name in args.attention.split(",") if name.strip()]
  columns, ckpt, ckpt_error, n_params = [], None, None, None
  for name in backends:
    impl = None if name == "auto" else name
    col = {"title": f"auto ({platform})" if impl is None else name}
    try:
      col["backend"] = chosen_backend(cfg, B, T, impl)
      state, step, batches, col["compile_s"] = build(cfg.replace(attention_impl=impl), B, T, steps)
      n_params = sum(x.size for x in jax.tree.leaves(state.params))
      state, _ = run_steps(state, step, batches, args.warmup)
      state, col["times"] = run_steps(state, step, batches, steps)
      if args.checkpoint and ckpt is None and ckpt_error is None:  # the first column that runs
        directory = args.checkpoint_dir or tempfile.mkdtemp(prefix="jaxformer-ckpt-")
        try:
          ckpt = checkpoint_stall(state, step, batches, directory, statistics.median(col["times"]))
          state, ckpt["title"] = ckpt.pop("state"), col["title"]
        except Exception as e:  # keep this column's throughput
          ckpt_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
        finally:
          shutil.rmtree(directory, ignore_errors=True)
      del state, step, batches
    except Unsupported as e:
      col["error"] = f"unsupported: {e}"
    except Exception as e:  # e.g. out of memory: ends this column only
      col["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
    columns.append(col)
    if "error" in col:
      done = col["error"]
    else:
      median = statistics.median(col["times"])
      done = (f"{median * 1e3:.1f} ms/step, {tokens / median:,.0f} tokens/s"
              + ("" if peak is None else f", MFU {per_token * tokens / median / peak:.1%}"))
    print(f"{col['title']}: {done}", file=sys.stderr, flush=True)  # progress; the tables go to stdout at the end

  if peak_note.startswith("measured"):  # again, after: keep the better (another process may have shared the core)
    peak = max(peak, measured_cpu_peak())
  n_mm = flops.matmul_params(cfg, "decoder_only")
  where = f"{platform}: {device.device_kind}" + (f", {threads} pinned core(s)" if threads else "")
  print(f"# Train step, decoder-only GPT ({cfg.num_layers} layers, d={cfg.d_model}, {cfg.num_heads} heads, "
        f"T={T}, batch {B}, vocab {cfg.vocab_size}, {cfg.dtype} compute), {where}, jax {jax.__version__}\n")
  print(f"`{command}`\n")
  print(f"Parameters {'?' if n_params is None else f'{n_params:,}'} (matmul N_mm {n_mm:,}); model FLOPs per token "
        f"{per_token / 1e6:.1f} M (PaLM count {per_token_palm / 1e6:.1f} M); peak "
        f"{'–' if peak is None else f'{peak / 1e12:.3g} TFLOP/s'} ({peak_note}); {args.warmup} warm-up + "
        f"{steps} timed steps.\n")
  rows = {"attention backend": [], "compile": [], "step time, median": [], "step time, p90": [], "tokens/s": [],
          "model TFLOP/s": [], "MFU": [], "MFU, PaLM count (all T² pairs)": []}
  for col in columns:
    if "error" in col:
      for key in rows:
        rows[key].append(col.get("backend", "–") if key == "attention backend" else "–")
      rows["compile"][-1] = col["error"]
      continue
    median = statistics.median(col["times"])
    model_flops_s = per_token * tokens / median
    rows["attention backend"].append(col["backend"])
    rows["compile"].append(f"{col['compile_s']:.1f} s")
    rows["step time, median"].append(f"{median * 1e3:.1f} ms")
    rows["step time, p90"].append(f"{percentile(col['times'], 90) * 1e3:.1f} ms")
    rows["tokens/s"].append(f"{tokens / median:,.0f}")
    rows["model TFLOP/s"].append(f"{model_flops_s / 1e12:.3g}")
    rows["MFU"].append("–" if peak is None else f"{model_flops_s / peak:.1%}")
    rows["MFU, PaLM count (all T² pairs)"].append(
        "–" if peak is None else f"{per_token_palm * tokens / median / peak:.1%}")
  print("| | " + " | ".join(col["title"] for col in columns) + " |")
  print("|---|" + "---|" * len(columns))
  for name, cells in rows.items():
    print(f"| {name} | " + " | ".join(cells) + " |")
  if args.checkpoint:
    size = f"{ckpt['state_bytes'] / 2**30:.2f} GiB" if ckpt else "?"
    print(f"\n## Checkpoint save stall ({(ckpt or {}).get('title', '?')} column's train state: params + AdamW moments, "
          f"{size} in memory; orbax CheckpointManager, async)\n")
    print("\n".join(checkpoint_table(ckpt)) if ckpt else f"not measured: {ckpt_error or columns[0].get('error')}")
  print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
  main(sys.argv[1:])
